"""Independent numpy computation of every probe metric from captured tensors (one big batch)."""

from __future__ import annotations

import numpy as np
import torch

from pe_probe.analysis import summary_frame


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial LayerNorm affine parameters, so gamma/beta statistics are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.3)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def layer_metrics(tok: np.ndarray, resid: np.ndarray, pe: np.ndarray | None, P: int) -> dict:
    """tok, resid: (n, T, D); pe: (T, D) or None."""
    out = {
        "tok_norm_mean": np.linalg.norm(tok, axis=-1).mean(),
        "resid_norm_mean": np.linalg.norm(resid, axis=-1).mean(),
    }
    if pe is None:
        return out
    rows = ~np.isnan(pe).any(axis=1)
    tok_map = tok.mean(axis=0)
    per_img = np.array([corr(t[rows], pe[rows]) for t in tok])
    t, p = tok[:, rows], pe[rows][None]
    cos = (t * p).sum(-1) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(p, axis=-1))
    sim = pe[P:] @ pe[P:].T
    nrm = np.linalg.norm(pe[P:], axis=1)
    sim = sim / np.outer(nrm, nrm)
    off = sim[~np.eye(len(sim), dtype=bool)]
    tm, pm = tok_map[rows], pe[rows]
    out.update({
        "tok_pe_corr": corr(tm, pm),
        "tok_pe_corr_position": corr(tm - tm.mean(axis=0, keepdims=True), pm - pm.mean(axis=0, keepdims=True)),
        "tok_pe_corr_channel": corr(tm.mean(axis=0), pm.mean(axis=0)),
        "tok_pe_corr_patch": corr(tok_map[P:], pe[P:]),
        "tok_pe_corr_img_mean": per_img.mean(), "tok_pe_corr_img_std": per_img.std(),
        "tok_pe_corr_img_min": per_img.min(), "tok_pe_corr_img_max": per_img.max(),
        "tok_pe_cos_mean": cos.mean(), "tok_pe_cos_std": cos.std(),
        "pe_norm_mean": np.linalg.norm(pe[rows], axis=-1).mean(),
        "pe_sim_offdiag_mean": off.mean(),
    })
    return out


def decomposition(x: np.ndarray) -> dict:
    """Explicit two-way parts of (n, N, D) patch tokens and their sums of squares (numpy, no running sums)."""
    mu = x.mean(axis=(0, 1))
    pos = x.mean(axis=0) - mu
    img = x.mean(axis=1) - mu
    resid = x - mu - pos[None] - img[:, None]
    ss = lambda a: float((a * a).sum())  # noqa: E731
    n, N, _ = x.shape
    return dict(mu=mu, pos=pos, img=img, resid=resid, total=ss(x - mu), ss_pos=n * ss(pos), ss_img=N * ss(img),
                ss_resid=ss(resid))


def position_metrics(cap: dict[str, torch.Tensor], model: torch.nn.Module, depth: int, P: int) -> dict:
    """{(layer, metric): value} of the variance decomposition and the logit decomposition, in numpy."""
    exp = {}
    T = cap["hook_last_ln_in"].shape[1]
    pe = np64(cap["hook_input_pe"])[0] if "hook_input_pe" in cap else None
    if pe is not None and pe.shape[0] < T:  # no_embed_class: no PE term on the prefix tokens
        pe = np.concatenate([np.zeros((T - pe.shape[0], pe.shape[1])), pe])
    names = [f"blocks.{l}.hook_resid_pre" for l in range(depth)] + ["hook_last_ln_in"]
    for l, name in zip(list(range(depth)) + [-1], names):
        d = decomposition(np64(cap[name])[:, P:])
        exp[(l, "pos_share")] = d["ss_pos"] / d["total"]
        exp[(l, "img_share")] = d["ss_img"] / d["total"]
        exp[(l, "resid_share")] = d["ss_resid"] / d["total"]
        if pe is not None:
            pc = pe[P:] - pe[P:].mean(axis=0)
            dot = float((d["pos"] * pc).sum())
            exp[(l, "pe_pos_share")] = dot ** 2 / (float((d["pos"] ** 2).sum()) * float((pc ** 2).sum()))
            exp[(l, "pe_pos_coef")] = dot / float((pc ** 2).sum())
    # the logit decomposition through the frozen Last LN: only with a PE in the stream or after the Last LN
    if pe is None and "hook_last_pe" not in cap:
        return exp
    x = np64(cap["hook_last_ln_in"])
    norm = model.norm
    g, b = np64(norm.weight), np64(norm.bias)
    sigma = np.sqrt(x.var(axis=-1, keepdims=True) + norm.eps)
    ln = lambda c: (c - c.mean(-1, keepdims=True)) / sigma * g  # noqa: E731
    pool = (lambda a: a[:, 0]) if model.global_pool == "token" else (lambda a: a[:, P:].mean(axis=1))
    comps = {"pe": pool(ln(np.broadcast_to(pe, x.shape))), "rest": pool(ln(x - pe))} if pe is not None else \
        {"rest": pool(ln(x))}
    comps["ln_beta"] = np.broadcast_to(b, (len(x), len(b)))
    if "hook_last_pe" in cap:
        comps["last_pe"] = pool(np.broadcast_to(np64(cap["hook_last_pe"]), x.shape))
    W, bias = np64(model.head.weight), np64(model.head.bias)
    logits = np64(model.head(cap["hook_pooled"]))
    pred = logits.argmax(-1)
    contrib = {k: (v * W[pred]).sum(-1) for k, v in comps.items()}
    denom = sum(np.abs(v).mean() for v in contrib.values())
    for k, v in contrib.items():
        exp[(-1, f"logit_{k}_mean")] = v.mean()
        exp[(-1, f"logit_{k}_share")] = np.abs(v).mean() / denom
    pe_parts = [k for k in ("pe", "last_pe") if k in contrib]
    if pe_parts:
        exp[(-1, "pe_logit_share")] = sum(np.abs(contrib[k]).mean() for k in pe_parts) / denom
    exp[(-1, "logit_total_mean")] = (logits[np.arange(len(x)), pred] - bias[pred]).mean()
    exp[(-1, "logit_sum_rmse")] = 0.0
    return exp


def expected_metrics(cap: dict[str, torch.Tensor], norm: torch.nn.Module, depth: int, P: int, pool: str,
                     model: torch.nn.Module | None = None) -> dict:
    """{(layer, metric): value} for every row summary_frame(report) must have (``model``: also the position
    metrics that probe() computes by default)."""
    exp = {} if model is None else position_metrics(cap, model, depth, P)
    for l in range(depth):
        pe = cap.get(f"blocks.{l}.hook_pe")
        m = layer_metrics(np64(cap[f"blocks.{l}.hook_tok"]), np64(cap[f"blocks.{l}.hook_resid_pre"]),
                          None if pe is None else np64(pe)[0], P)
        exp.update({(l, k): v for k, v in m.items()})
    x_l, ln_out = np64(cap["hook_last_ln_in"]), np64(cap["hook_last_ln_out"])
    last_pe = np64(cap["hook_last_pe"])[0] if "hook_last_pe" in cap else None
    exp.update({(-1, k): v for k, v in layer_metrics(ln_out, x_l, last_pe, P).items()})
    out = ln_out if last_pe is None else ln_out + last_pe[None]

    def pooled(x):
        return x[:, 0] if pool == "token" else x[:, P:].mean(axis=1)

    def cosines(a, b):
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    c = cosines(pooled(x_l), pooled(out))
    gamma, beta = np64(norm.weight), np64(norm.bias)
    exp.update({
        (-1, "last_ln_out_norm_mean"): np.linalg.norm(out, axis=-1).mean(),
        (-1, "last_ln_gamma_mean"): gamma.mean(),
        (-1, "last_ln_beta_mean"): beta.mean(),
        (-1, "last_ln_beta_var"): ((beta - beta.mean()) ** 2).mean(),
        (-1, "last_ln_cos_before_after"): c.mean(),
        (-1, "last_ln_cos_before_after_std"): c.std(),
        (-1, "last_ln_cos_before_after_ln"): cosines(pooled(x_l), pooled(ln_out)).mean(),
    })
    return exp


def frame_values(report) -> dict:
    f = summary_frame(report)
    return {(int(l), m): float(v) for l, m, v in zip(f.layer, f.metric, f.value)}


def assert_metrics_match(report, expected: dict, atol: float = 2e-5) -> None:
    got = frame_values(report)
    assert set(got) == set(expected), (set(got) ^ set(expected))
    for key, value in expected.items():
        assert np.isclose(got[key], value, rtol=1e-5, atol=atol), (key, got[key], value)


def all_forward_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
