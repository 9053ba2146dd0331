"""Synthetic probe reports (real :class:`~pe_probe.core.report.ProbeReport` containers filled with seeded random
arrays of the right shapes) and helpers that build RunResults like the ones ``pe_probe.train`` writes.
Torch-free."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from pe_probe.analysis.runs import RunResult
from pe_probe.core.pe import PRESETS as PE_PRESETS
from pe_probe.core.report import ProbeReport

#: The PE presets as the ``pe_config`` dicts of config.json.
PRESETS = {name: dataclasses.asdict(cfg) for name, cfg in PE_PRESETS.items()}

DEPTH, DIM, GRID, N_IMAGES = 4, 8, (3, 3), 4


def fake_report(run: str, pe: dict, depth: int = DEPTH, dim: int = DIM, grid=GRID, seed: int = 0,
                pe_mode: str = "pvg") -> ProbeReport:
    """A report with seeded random maps (PE maps anti-correlated with the token maps), Last-LN parameters,
    norm maps and moments; every array the analysis floor reads is present."""
    rng = np.random.default_rng(seed)
    prefix = 1 if pe["global_pool"] == "token" else 0
    receiving = [i for i in range(depth) if i > 0 or pe["layer0"]] if pe["layerwise"] else []
    meta = dict(run=run, model="pe_deit_tiny_patch16_224", pe_mode=pe_mode, global_pool=pe["global_pool"],
                num_prefix_tokens=prefix, grid=list(grid), depth=depth, embed_dim=dim, n_images=N_IMAGES,
                pe_derived=False, receiving_blocks=receiving, last_ln_pe=pe["last_ln_pe"])
    t = prefix + grid[0] * grid[1]
    arrays: dict[str, np.ndarray] = {}
    has_pe = {**{l: l in receiving for l in range(depth)}, -1: pe["last_ln_pe"] is not None}
    for layer in [*range(depth), -1]:
        tok = rng.normal(size=(t, dim))
        arrays[f"tok_map@{layer}"] = tok
        arrays[f"tok_norm@{layer}"] = rng.uniform(1, 2, t)
        arrays[f"resid_norm@{layer}"] = rng.uniform(2, 4, t)
        if has_pe[layer]:
            arrays[f"pe_map@{layer}"] = -0.5 * tok + rng.normal(size=(t, dim)) if layer >= 0 else rng.normal(size=(t, dim))
            arrays[f"pe_norm@{layer}"] = rng.uniform(1, 2, t)
            arrays[f"tok_pe_cos@{layer}"] = rng.uniform(-1, 1, t)
            m = rng.uniform(-0.5, 0.5)
            arrays[f"corr_img@{layer}"] = np.array([N_IMAGES, m, m * m + 0.01, m - 0.2, m + 0.2])
            arrays[f"cos_moments@{layer}"] = np.array([N_IMAGES * t, m, m * m + 0.02])
    arrays["out_norm@-1"] = rng.uniform(1, 2, t)
    cos = float(rng.uniform(0, 1))
    arrays["last_cos"] = np.array([N_IMAGES, cos, cos * cos + 0.01])
    arrays["last_cos_ln"] = np.array([N_IMAGES, cos / 2, cos * cos / 4 + 0.01])
    arrays["norm_before"] = rng.uniform(5, 10, (N_IMAGES, *grid))
    arrays["norm_after"] = rng.uniform(0, 3, (N_IMAGES, *grid))
    arrays["last_ln_gamma"] = rng.normal(1, 0.1, dim)
    arrays["last_ln_beta"] = rng.normal(0, 0.3, dim)
    arrays["pos_embed"] = rng.normal(size=(t, dim))
    arrays.update(fake_position_arrays(rng, pe, depth, grid))
    return ProbeReport(meta, arrays)


def fake_position_arrays(rng: np.random.Generator, pe: dict, depth: int, grid) -> dict[str, np.ndarray]:
    """The arrays of the position measurements (``pe_probe.probing.position``): decomposition, decoding with its
    controls and the logit decomposition, seeded and of the right shapes."""
    from pe_probe.core.report import LOGIT_COMPONENTS

    n_tok = grid[0] * grid[1]
    out: dict[str, np.ndarray] = {}
    for layer in [*range(depth), -1]:
        w = rng.dirichlet([2.0, 3.0, 5.0]) * 100.0
        out[f"pos_var@{layer}"] = np.array([N_IMAGES, n_tok, w.sum(), *w])
        if pe["input_add"]:
            out[f"pe_pos@{layer}"] = np.array([rng.uniform(0, 3), 4.0, 4.0])
        alphas = 10.0 ** np.arange(-3, 2)
        for tag, top in (("", 0.9), ("_perm", 0.0), ("_ablated", 0.3)):
            sel = top - 0.1 * (np.arange(5) - 2) ** 2 + rng.normal(0, 0.01, 5)
            out[f"decode_r2{tag}@{layer}"] = np.stack([alphas, sel, sel - 0.02])
        acc = rng.uniform(0.3, 1.0)
        out[f"decode_acc@{layer}"] = np.array([acc, 1 / n_tok, 1 / n_tok, 4 * n_tok, n_tok])
        out[f"decode_acc_ablated@{layer}"] = np.array([acc / 2, 1 / n_tok, 1 / n_tok, 4 * n_tok, n_tok])
    parts = np.full((len(LOGIT_COMPONENTS), 4), np.nan)
    have = {"pe": pe["input_add"], "rest": True, "ln_beta": True, "last_pe": pe["last_ln_pe"] is not None}
    for j, name in enumerate(LOGIT_COMPONENTS):
        parts[j, 0] = N_IMAGES if have[name] else 0
        if have[name]:
            m = rng.uniform(0.1, 2.0)
            parts[j, 1:] = [m, m, m * m + 0.1]
    out["logit_parts"] = parts
    total = float(np.nansum(parts[:, 1]))
    out["logit_total"] = np.array([N_IMAGES, total, total, total * total])
    out["logit_sum_rmse"] = np.array([1e-7])
    return out


def fake_history(pe: dict, seed: int, depth: int = DEPTH, epochs=(2, 4)) -> pd.DataFrame:
    """A ``probe_history.csv`` frame: every correlation metric at every PE block and a norm, per epoch."""
    rng = np.random.default_rng(seed + 1000)
    blocks = [i for i in range(depth) if i > 0 or pe["layer0"]] if pe["layerwise"] else []
    rows = [dict(epoch=e, layer=l, metric=m, value=float(rng.uniform(-1, 1)))
            for e in epochs for l in blocks for m in ("tok_pe_corr", "tok_pe_corr_position", "tok_pe_corr_channel")]
    rows += [dict(epoch=e, layer=l, metric="tok_norm_mean", value=float(rng.uniform(1, 2)))
             for e in epochs for l in [*range(depth), -1]]
    return pd.DataFrame(rows, columns=["epoch", "layer", "metric", "value"])


def pe_sites(pe: dict, depth: int = DEPTH) -> list[tuple[str, int]]:
    """The (hook, layer) PE sites of a model with PEConfig fields ``pe``, in forward order."""
    sites = [("hook_input_pe", -2)] if pe["input_add"] else []
    if pe["layerwise"]:
        sites += [(f"blocks.{i}.hook_pe", i) for i in range(depth) if i > 0 or pe["layer0"]]
    return sites + ([("hook_last_pe", -1)] if pe["last_ln_pe"] is not None else [])


def fake_ablation(pe: dict, seed: int, depth: int = DEPTH) -> pd.DataFrame:
    """An ``ablation.csv`` frame (every site, intervention and metric) with the attrs ``ablation.json`` holds."""
    rng = np.random.default_rng(seed + 2000)
    rows = [dict(site=h, pe_kind="absolute" if l == -2 else "layerwise", layer=l, intervention=k, metric=m, value=float(rng.uniform(0, 1)))
            for h, l in pe_sites(pe, depth) for k in ("zero", "mean", "shuffle") for m in ("top1", "agree", "kl")]
    frame = pd.DataFrame(rows, columns=["site", "pe_kind", "layer", "intervention", "metric", "value"])
    frame.attrs.update(depth=depth, n_images=N_IMAGES, effect="direct", intact_top1=0.9)
    return frame


def fake_attribution(pe: dict, seed: int, depth: int = DEPTH) -> pd.DataFrame:
    """An ``attribution.csv`` frame (every site and metric) with the attrs ``attribution.json`` holds."""
    rng = np.random.default_rng(seed + 3000)
    metrics = ("pe_attr", "tok_attr", "pe_abs", "tok_abs", "pe_share", "fdiff", "delta_abs_mean", "delta_abs_max",
               "rel_delta")
    rows = [dict(site=h, pe_kind="absolute" if l == -2 else "layerwise", layer=l, metric=m,
                 value=float(rng.uniform(0, 1) if m != "rel_delta" else 10 ** rng.uniform(-6, -2)))
            for h, l in pe_sites(pe, depth) for m in metrics]
    frame = pd.DataFrame(rows, columns=["site", "pe_kind", "layer", "metric", "value"])
    frame.attrs.update(depth=depth, n_images=N_IMAGES, baseline="mean", tokens="zero", target="predicted", n_steps=32)
    return frame


def fake_attention(seed: int, depth: int = DEPTH, heads: int = 2) -> pd.DataFrame:
    """Seeded attention statistics per block and head (``attention.csv``'s columns)."""
    rng = np.random.default_rng(seed)
    rows = [(f"blocks.{l}.attn", "none", l, h, m, float(rng.uniform(0, 1)))
            for l in range(depth) for h in range(heads) for m in ("attn_distance", "attn_entropy", "logit_pos_share")]
    return pd.DataFrame(rows, columns=["site", "pe_kind", "layer", "head", "metric", "value"])


def fake_shuffle(seed: int) -> pd.DataFrame:
    """Seeded patch-shuffle rows (``shuffle.csv``): agreement 1 at block 1, falling with the block size."""
    rng = np.random.default_rng(seed)
    rows = [(1, "agree", 1.0), (3, "agree", float(rng.uniform(0.3, 0.9)))]
    return pd.DataFrame(rows, columns=["block", "metric", "value"])


def fake_resolution(seed: int, depth: int = DEPTH, sizes=(9, 12, 15)) -> pd.DataFrame:
    """Seeded resolution-sweep rows (``resolution.csv``): top-1 and a per-layer correlation per input size."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        rows.append((size, "", "none", -3, "top1", float(rng.uniform(0.5, 1))))
        rows += [(size, f"blocks.{l}.hook_resid_pre", "none", l, "pos_share", float(rng.uniform(0, 1)))
                 for l in range(depth)]
    return pd.DataFrame(rows, columns=["img_size", "site", "pe_kind", "layer", "metric", "value"])


def make_run(name: str, preset: str = "default", *, report: bool = True, top1: float | None = 80.0,
             model: str = "pe_deit_tiny_patch16_224", dataset: str = "digits", seed: int = 0,
             train_seed: int = 0, history: bool = True, causal: bool = True, **changes) -> RunResult:
    """A RunResult with a config.json-shaped dict (``train_seed`` is its training seed, ``seed`` seeds the fake
    numbers) and, by default, a fake report, probe history, ablation, attribution, attention statistics, patch
    shuffle and resolution sweep; ``changes`` override
    PEConfig fields."""
    pe = {**PRESETS[preset], **changes}
    config = {
        "model": model,
        "model_kwargs": {"pe_mode": preset, "img_size": 12, "patch_size": 4, "embed_dim": DIM, "depth": DEPTH,
                         "num_heads": 2, "global_pool": pe["global_pool"]},
        "pe_config": pe,
        "num_classes": 10,
        "data": {"dataset": dataset, "img_size": 12, "in_chans": 1, "mean": [0.5], "std": [0.5]},
        "recipe": {"epochs": 1, "seed": train_seed},
        "pe_probe_version": "0.1.0",
    }
    summary = {"top1": top1, "top5": 99.0, "epochs": 1} if top1 is not None else None
    rep = fake_report(name, pe, seed=seed, pe_mode=preset) if report else None
    hist = fake_history(pe, seed) if history and pe["layerwise"] else None
    abl, att = (fake_ablation(pe, seed), fake_attribution(pe, seed)) if causal else (None, None)
    extra = dict(attention=fake_attention(seed), shuffle=fake_shuffle(seed), resolution=fake_resolution(seed)) \
        if causal else {}
    return RunResult(name=name, config=config, summary=summary, report=rep, history=hist, ablation=abl,
                     attribution=att, **extra)


def seeded_runs(seeds: int = 3) -> list[RunResult]:
    """The quick reproduction's eight configurations, each trained with ``seeds`` seeds (``<name>-seed<k>``)."""
    configs = [("default", "default", {}), ("gap", "default", dict(global_pool="avg")), ("lape", "lape", {}),
               ("lape_gap", "lape", dict(global_pool="avg")), ("pvg", "pvg", {}),
               ("pvg_token", "pvg", dict(global_pool="token")), ("mpvg", "mpvg", {}),
               ("gap_last_ln_pe", "default", dict(global_pool="avg", last_ln_pe=0))]
    runs = []
    for k in range(seeds):
        for i, (name, preset, changes) in enumerate(configs):
            runs.append(make_run(f"{name}-seed{k}", preset, seed=100 * k + i, train_seed=k, top1=70.0 + i + 0.5 * k,
                                 **changes))
    return runs


def paper_runs() -> list[RunResult]:
    """Every run the shipped specs can use (the quick reproduction plus the ablations), one seed each."""
    return [
        make_run("default", "default", top1=70.0, seed=1),
        make_run("gap", "default", global_pool="avg", top1=71.0, seed=2),
        make_run("lape", "lape", top1=72.0, seed=3),
        make_run("lape_gap", "lape", global_pool="avg", top1=70.5, seed=4),
        make_run("pvg", "pvg", top1=73.0, seed=5),
        make_run("pvg_token", "pvg", global_pool="token", top1=72.5, seed=6),
        make_run("mpvg", "mpvg", top1=74.0, seed=7),
        make_run("gap_last_ln_pe", "default", global_pool="avg", last_ln_pe=0, top1=70.8, seed=8),
        make_run("mpvg_pos2", "mpvg", last_ln_pe=2, top1=73.5, seed=9),
        make_run("mpvg_layer0", "mpvg", layer0=True, top1=73.2, seed=10),
    ]
