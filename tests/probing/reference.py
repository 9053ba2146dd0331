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


def expected_metrics(cap: dict[str, torch.Tensor], norm: torch.nn.Module, depth: int, P: int, pool: str) -> dict:
    """{(layer, metric): value} for every row summary_frame(report) must have."""
    exp = {}
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
