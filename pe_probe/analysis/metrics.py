"""Pure analyses of probe statistics: numbers in, tidy DataFrames (``layer, metric, value``) out.

numpy/pandas only. Every function takes a :class:`~pe_probe.core.report.ProbeReport` (only its
``meta`` and ``arrays`` are read). Layers are block indices 0..L-1, then -1 for the Last LN. Notation
(per layer l, images b = 1..n, tokens t = 0..T-1, the first P = ``num_prefix_tokens`` rows are prefix
tokens, channels d): ``tok[b]`` is ``LN_l(x_l)`` (layer -1: ``LN(x_L)``), ``pe`` the PE the layer receives
after its LayerNorm (layer -1: ``LN'_last(pos_k)``), ``x_l`` the residual stream entering block l
(layer -1: ``x_L``). Mean maps: ``Tok = mean_b tok[b]`` and ``PE = mean_b pe`` (T, D).

"PE rows" are the rows where the layer has a PE: all T rows (class-token row included) for pe_probe
models and for timm models whose ``pos_embed`` has a class slot (DeiT); only the patch rows for timm
models with ``no_embed_class`` (their derived PE is NaN in the prefix rows). See docs/probe.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.hook_points import LAST, LAST_LN_IN, RESID_PRE, block_hook, pe_site_hook

COLUMNS = ["layer", "metric", "value"]


# ---------------------------------------------------------------------- array helpers
def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally sized arrays, flattened, over the entries finite in both (a derived
    PE has NaN rows for prefix tokens without a PE row); NaN if either is constant or fewer than 2 remain."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equal sizes, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.all():
        a, b = a[keep], b[keep]
    if a.size < 2:
        return float("nan")
    ac, bc = a - a.mean(), b - b.mean()
    den = np.sqrt((ac * ac).sum() * (bc * bc).sum())
    return float((ac * bc).sum() / den) if den > 0 else float("nan")


def correlation_parts(tok: np.ndarray, pe: np.ndarray) -> tuple[float, float, float]:
    """``(r, r_position, r_channel)`` of two (rows x channels) mean maps over the same rows.

    - ``r``: ``pearson(tok, pe)`` over all rows x channels (the paper's number);
    - ``r_position``: Pearson correlation after subtracting each channel's mean over the rows from each map,
      ``pearson(tok - mean_rows(tok), pe - mean_rows(pe))``: what varies with position;
    - ``r_channel``: ``pearson(mean_rows(tok), mean_rows(pe))``, the correlation of the two per-channel mean
      vectors (D entries): the per-channel offsets shared by every row (LayerNorm biases, the average token).
    """
    tok = np.asarray(tok, dtype=np.float64)
    pe = np.asarray(pe, dtype=np.float64)
    t_mean, p_mean = tok.mean(axis=0), pe.mean(axis=0)
    return pearson(tok, pe), pearson(tok - t_mean, pe - p_mean), pearson(t_mean, p_mean)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """(n, n) cosine similarity between the rows of ``x`` (n, D)."""
    x = np.asarray(x, dtype=np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


def std_from_moments(mean: float, mean_sq: float) -> float:
    """Population standard deviation (ddof=0) from the mean and the mean of squares."""
    return float(np.sqrt(max(mean_sq - mean * mean, 0.0)))


def pe_rows(pe_map: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of a PE map that hold a PE (finite)."""
    return np.isfinite(pe_map).all(axis=1)


def _rows(items: list[tuple[int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(items, columns=COLUMNS).astype({"layer": "int64", "value": "float64"})


def _layers(report: Any) -> list[int]:
    """Blocks 0..L-1, then -1 where the report has Last-LN statistics (``meta["last_ln"]``, True before schema 2)."""
    return list(range(int(report.meta["depth"]))) + ([LAST] if report.meta.get("last_ln", True) else [])


def _has_pe(report: Any, layer: int) -> bool:
    return f"pe_map@{layer}" in report.arrays


# ---------------------------------------------------------------------- analyses
def tok_pe_correlation(report: Any) -> pd.DataFrame:
    """Token-PE Pearson correlations per layer that has a PE (paper Fig 2/4, Fig 8 for layer -1).

    - ``tok_pe_corr``: ``pearson(Tok[R], PE[R])`` over the PE rows R (class-token row included where it
      has a PE) x all D channels: the correlation of the mean maps the paper plots.
    - ``tok_pe_corr_position``: the same after subtracting each channel's mean over the rows R from each map
      (what varies with position); ``tok_pe_corr_channel``: the correlation of the two per-channel mean
      vectors over R (the offsets). See :func:`correlation_parts`.
    - ``tok_pe_corr_patch``: ``tok_pe_corr`` over the patch rows only (rows P..T-1).
    - ``tok_pe_corr_img_mean`` / ``_std`` / ``_min`` / ``_max``: distribution over images of the per-image
      correlation ``pearson(tok[b][R], pe[R])`` (std with ddof=0).
    """
    P = int(report.meta["num_prefix_tokens"])
    out = []
    for l in _layers(report):
        if not _has_pe(report, l):
            continue
        tok, pe = report.arrays[f"tok_map@{l}"], report.arrays[f"pe_map@{l}"]
        rows = pe_rows(pe)
        r, r_pos, r_chan = correlation_parts(tok[rows], pe[rows])
        out += [(l, "tok_pe_corr", r), (l, "tok_pe_corr_position", r_pos), (l, "tok_pe_corr_channel", r_chan)]
        out.append((l, "tok_pe_corr_patch", pearson(tok[P:], pe[P:])))
        count, mean, mean_sq, lo, hi = report.arrays[f"corr_img@{l}"]
        out += [(l, "tok_pe_corr_img_mean", mean), (l, "tok_pe_corr_img_std", std_from_moments(mean, mean_sq)),
                (l, "tok_pe_corr_img_min", lo), (l, "tok_pe_corr_img_max", hi)]
    return _rows(out)


def tok_pe_alignment(report: Any) -> pd.DataFrame:
    """Cosine alignment of each token with its own PE row, per layer that has a PE.

    ``c[b, t] = cos(tok[b, t], pe[t])`` for every image b and PE row t. ``tok_pe_cos_mean`` is the mean
    of c over all (b, t) pairs, ``tok_pe_cos_std`` its standard deviation over those pairs (ddof=0).
    """
    out = []
    for l in _layers(report):
        if not _has_pe(report, l):
            continue
        _, mean, mean_sq = report.arrays[f"cos_moments@{l}"]
        out += [(l, "tok_pe_cos_mean", mean), (l, "tok_pe_cos_std", std_from_moments(mean, mean_sq))]
    return _rows(out)


def norm_trends(report: Any) -> pd.DataFrame:
    """L2-norm trends per layer: means over images and tokens of per-token norms.

    - ``tok_norm_mean``: ``mean_{b,t} ||tok[b, t]||`` over all T tokens (prefix tokens included).
    - ``resid_norm_mean``: ``mean_{b,t} ||x_l[b, t]||`` (residual stream entering block l; layer -1: x_L).
    - ``pe_norm_mean``: ``mean_t ||pe[t]||`` over the PE rows (layers with a PE only).
    - layer -1 only, ``last_ln_out_norm_mean``: norms of the Last-LN output as pooled (``LN(x_L) + pe``
      where the model adds a PE there, else ``LN(x_L)``).
    """
    out = []
    for l in _layers(report):
        a = report.arrays
        out.append((l, "tok_norm_mean", float(a[f"tok_norm@{l}"].mean())))
        if _has_pe(report, l):
            rows = pe_rows(a[f"pe_map@{l}"])
            out.append((l, "pe_norm_mean", float(a[f"pe_norm@{l}"][rows].mean())))
        out.append((l, "resid_norm_mean", float(a[f"resid_norm@{l}"].mean())))
    if f"out_norm@{LAST}" in report.arrays:
        out.append((LAST, "last_ln_out_norm_mean", float(report.arrays[f"out_norm@{LAST}"].mean())))
    return _rows(out)


def pe_similarity_matrix(report: Any, layer: int) -> np.ndarray:
    """(N, N) cosine similarity between the patch rows of the layer's mean PE map (LaPE's figure)."""
    key = f"pe_map@{layer}"
    if key not in report.arrays:
        have = [l for l in _layers(report) if _has_pe(report, l)]
        raise ValueError(f"layer {layer} has no PE; layers with a PE: {have}")
    return cosine_matrix(report.arrays[key][int(report.meta["num_prefix_tokens"]):])


def pe_similarity_grid(report: Any, layer: int, token: int) -> np.ndarray:
    """Row ``token`` (a patch index 0..N-1) of :func:`pe_similarity_matrix`, reshaped to the (h, w) patch grid."""
    sim = pe_similarity_matrix(report, layer)
    if not 0 <= token < len(sim):
        raise ValueError(f"token={token} is not a patch index 0..{len(sim) - 1}")
    h, w = report.meta["grid"]
    return sim[token].reshape(h, w)


def pe_self_similarity(report: Any) -> pd.DataFrame:
    """``pe_sim_offdiag_mean``: mean off-diagonal entry of the patch-row PE cosine matrix, per layer with a PE."""
    out = []
    for l in _layers(report):
        if _has_pe(report, l):
            sim = pe_similarity_matrix(report, l)
            n = len(sim)
            off = (sim.sum() - np.trace(sim)) / (n * n - n) if n > 1 else float("nan")
            out.append((l, "pe_sim_offdiag_mean", float(off)))
    return _rows(out)


def last_ln_params(report: Any) -> pd.DataFrame:
    """The Last LN's affine parameters per channel: ``DataFrame[channel, gamma, beta]``."""
    g, b = report.arrays["last_ln_gamma"], report.arrays["last_ln_beta"]
    return pd.DataFrame({"channel": np.arange(len(g)), "gamma": g, "beta": b})


def last_ln_stats(report: Any) -> pd.DataFrame:
    """Last-LN statistics (paper Fig 6), all on layer -1.

    - ``last_ln_gamma_mean``, ``last_ln_beta_mean``: channel means of gamma and beta.
    - ``last_ln_beta_var``: ``np.var(beta)``, the population variance (ddof=0) over the D channels.
    - ``last_ln_cos_before_after``: mean over images of ``cos(pool(x_L[b]), pool(out[b]))``, where pool is
      the model's pooling (class token, or mean of the patch tokens for GAP) and ``out`` is the Last-LN
      output as pooled (``LN(x_L) + pe`` with a PE in the Last LN, else ``LN(x_L)``);
      ``last_ln_cos_before_after_std`` its std over images (ddof=0).
    - ``last_ln_cos_before_after_ln``: the same with ``out = LN(x_L)`` (the LayerNorm alone).
    """
    a = report.arrays
    if "last_cos" not in a:  # no norm on every token before pooling (fc_norm heads, no final norm)
        return _rows([])
    g, b = a["last_ln_gamma"], a["last_ln_beta"]
    _, mean, mean_sq = a["last_cos"]
    return _rows([
        (LAST, "last_ln_gamma_mean", float(g.mean())),
        (LAST, "last_ln_beta_mean", float(b.mean())),
        (LAST, "last_ln_beta_var", float(np.var(b))),
        (LAST, "last_ln_cos_before_after", mean),
        (LAST, "last_ln_cos_before_after_std", std_from_moments(mean, mean_sq)),
        (LAST, "last_ln_cos_before_after_ln", a["last_cos_ln"][1]),
    ])


ANALYSES = (tok_pe_correlation, tok_pe_alignment, norm_trends, pe_self_similarity, last_ln_stats)
META_COLUMNS = ("run", "model", "pe_mode", "global_pool")


def report_pe_kind(report: Any) -> str:
    """The PE kind of the report's model family (``meta["pe_kind"]``; reports without one: ``layerwise`` for
    pe_probe models read through their hook points, ``absolute`` for timm models)."""
    kind = report.meta.get("pe_kind")
    return str(kind) if kind else ("layerwise" if report.meta.get("adapter") == "pe" else "absolute")


def site_of(layer: int, metric: str, pe_kind: str) -> tuple[str, str]:
    """``(site, pe_kind)`` of a summary row: the layer's PE hook and the family's kind for a metric of the PE
    (``tok_pe_*``, ``pe_*``), else the layer's stream hook and ``none`` (token norms, Last-LN statistics)."""
    if metric.startswith(("tok_pe", "pe_")):
        return pe_site_hook(layer), pe_kind
    return (LAST_LN_IN if layer == LAST else block_hook(layer, RESID_PRE)), "none"


def summary_frame(report: Any) -> pd.DataFrame:
    """Every analysis in one long DataFrame: ``run, model, pe_mode, global_pool, site, pe_kind, layer, metric,
    value``, sorted by layer (blocks 0..L-1, then -1) and metric. This is the report's tidy table (``metrics.csv``).
    ``site`` / ``pe_kind``: :func:`site_of` (the PE hook and kind for PE metrics, the stream and ``none`` for the
    universal ones), so every model, one without a PE too, has the same columns."""
    frame = pd.concat([fn(report) for fn in ANALYSES], ignore_index=True)
    order = {l: i for i, l in enumerate(_layers(report))}
    frame = frame.sort_values(["layer", "metric"], key=lambda s: s.map(order) if s.name == "layer" else s,
                              kind="stable").reset_index(drop=True)
    kind = report_pe_kind(report)
    pairs = [site_of(int(l), str(m), kind) for l, m in zip(frame["layer"], frame["metric"])]
    frame.insert(0, "pe_kind", [p[1] for p in pairs])
    frame.insert(0, "site", [p[0] for p in pairs])
    for i, col in enumerate(META_COLUMNS):
        frame.insert(i, col, str(report.meta.get(col, "")))
    return frame


def save_report(report: Any, directory: str | os.PathLike) -> Path:
    """Save ``report`` (:meth:`~pe_probe.core.report.ProbeReport.save`) with its tidy table ``metrics.csv``
    (:func:`summary_frame`) beside the arrays; returns the directory."""
    return report.save(directory, frame=summary_frame(report))
