"""How much position each layer carries, from a report's arrays: tidy ``layer, metric, value`` rows
(``summary_frame`` adds their ``site`` / ``pe_kind``: :func:`position_site`).

numpy/pandas only (docs/probe.md, "Position per layer", defines every number). Layers are the residual
stream entering block l (0..L-1) and, as layer -1, the stream after the last block (``x_L``), patch tokens
only. A report probed without an option has none of its arrays, and these functions return no rows for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..core.hook_points import INPUT_PE, LAST, LAST_LN_IN, LAST_PE, RESID_PRE, block_hook
from ..core.report import LOGIT_COMPONENTS

COLUMNS = ["layer", "metric", "value"]
#: What :func:`position_variance` reports.
VARIANCE_METRICS = ("pos_share", "img_share", "resid_share", "pe_pos_share", "pe_pos_coef")
#: What :func:`position_decoding` reports.
DECODING_METRICS = ("pos_r2", "pos_r2_perm", "pos_r2_ablated", "pos_alpha", "pos_acc", "pos_acc_perm",
                    "pos_acc_ablated", "pos_acc_chance")


def _rows(items: list[tuple[int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(items, columns=COLUMNS).astype({"layer": "int64", "value": "float64"})


def _layers(report: Any) -> list[int]:
    return list(range(int(report.meta["depth"]))) + [LAST]


def position_variance(report: Any) -> pd.DataFrame:
    """Shares of the total sum of squares of the patch tokens (about each channel's grand mean), per layer.

    From ``pos_var@{l}`` = [n, N, SS_total, SS_pos, SS_img, SS_resid]: ``pos_share = SS_pos / SS_total``,
    ``img_share``, ``resid_share`` (they sum to 1). With an additive input PE, from ``pe_pos@{l}`` =
    [<P, Pe>, |P|^2, |Pe|^2] (P the position part, Pe the PE's patch rows centred over tokens):
    ``pe_pos_share = <P, Pe>^2 / (|P|^2 |Pe|^2)``, the share of the position part's sum of squares along the PE
    term (R^2 of P regressed on Pe through the origin), and ``pe_pos_coef = <P, Pe> / |Pe|^2``, its slope.
    """
    out = []
    for l in _layers(report):
        v = report.arrays.get(f"pos_var@{l}")
        if v is None:
            continue
        _, _, total, pos, img, resid = (float(x) for x in v)
        out += [(l, "pos_share", pos / total), (l, "img_share", img / total), (l, "resid_share", resid / total)]
        pe = report.arrays.get(f"pe_pos@{l}")
        if pe is not None:
            dot, pp, ee = (float(x) for x in pe)
            out += [(l, "pe_pos_share", dot * dot / (pp * ee) if pp > 0 and ee > 0 else float("nan")),
                    (l, "pe_pos_coef", dot / ee if ee > 0 else float("nan"))]
    return _rows(out)


def chosen_r2(grid: np.ndarray) -> tuple[float, float]:
    """``(score R^2, alpha)`` at the alpha with the best R^2 on the select set, from a (3, K) ``decode_r2`` array
    [alphas, select R^2, score R^2] (the first alpha on ties; NaN when no select R^2 is finite)."""
    grid = np.asarray(grid, dtype=np.float64)
    sel = np.where(np.isfinite(grid[1]), grid[1], -np.inf)
    if not np.isfinite(sel).any():
        return float("nan"), float("nan")
    k = int(np.argmax(sel))
    return float(grid[2, k]), float(grid[0, k])


def position_decoding(report: Any) -> pd.DataFrame:
    """Linear decodability of the patch position from the tokens, per layer (reports probed with ``decode``).

    ``pos_r2``: held-out R^2 (mean over row and column) of the ridge fit of (row, col), the regularisation
    ``pos_alpha`` chosen on the select images (:func:`chosen_r2`); ``pos_r2_perm`` the same with the labels
    permuted within each image (chance: about 0 or below), ``pos_r2_ablated`` on the model with every PE
    zeroed. ``pos_acc``: held-out accuracy of the logistic classifier of the patch index (``_perm``,
    ``_ablated`` likewise), ``pos_acc_chance = 1 / N``.
    """
    a, out = report.arrays, []
    for l in _layers(report):
        for key, metric in ((f"decode_r2@{l}", "pos_r2"), (f"decode_r2_perm@{l}", "pos_r2_perm"),
                            (f"decode_r2_ablated@{l}", "pos_r2_ablated")):
            if key in a:
                r2, alpha = chosen_r2(a[key])
                out.append((l, metric, r2))
                if metric == "pos_r2":
                    out.append((l, "pos_alpha", alpha))
        if f"decode_acc@{l}" in a:
            acc, acc_perm, chance = (float(x) for x in a[f"decode_acc@{l}"][:3])
            out += [(l, "pos_acc", acc), (l, "pos_acc_perm", acc_perm), (l, "pos_acc_chance", chance)]
        if f"decode_acc_ablated@{l}" in a:
            out.append((l, "pos_acc_ablated", float(a[f"decode_acc_ablated@{l}"][0])))
    return _rows(out)


def logit_decomposition(report: Any) -> pd.DataFrame:
    """The direct contributions to the predicted logit through the frozen Last LN (layer -1 rows).

    From ``logit_parts`` (per component of :data:`~pe_probe.core.report.LOGIT_COMPONENTS` [count, mean, mean |.|,
    mean of squares]): ``logit_{c}_mean`` (signed, logit units) and ``logit_{c}_share = mean|c| / sum_c' mean|c'|``
    for each component the model has; ``pe_logit_share``: the shares of the PE components (``pe``, ``last_pe``)
    added; ``logit_total_mean``: the predicted logit minus the head bias, which the parts add up to
    (``logit_sum_rmse``: the root mean square of the difference).
    """
    a = report.arrays
    if "logit_parts" not in a:
        return _rows([])
    parts = np.asarray(a["logit_parts"], dtype=np.float64)
    have = [j for j in range(len(LOGIT_COMPONENTS)) if parts[j, 0] > 0]
    denom = sum(parts[j, 2] for j in have)
    out = []
    for j in have:
        name = LOGIT_COMPONENTS[j]
        out += [(LAST, f"logit_{name}_mean", parts[j, 1]),
                (LAST, f"logit_{name}_share", parts[j, 2] / denom if denom > 0 else float("nan"))]
    pe = [j for j in have if LOGIT_COMPONENTS[j] in ("pe", "last_pe")]
    if pe:
        out.append((LAST, "pe_logit_share", sum(parts[j, 2] for j in pe) / denom if denom > 0 else float("nan")))
    out += [(LAST, "logit_total_mean", float(a["logit_total"][1])),
            (LAST, "logit_sum_rmse", float(np.asarray(a["logit_sum_rmse"]).ravel()[0]))]
    return _rows(out)


def is_position_metric(metric: str) -> bool:
    """Whether ``metric`` is one of this module's rows (decomposition, decoding, logit decomposition)."""
    return metric in VARIANCE_METRICS or metric in DECODING_METRICS or metric.startswith("logit_") \
        or metric == "pe_logit_share"


def position_site(report: Any, layer: int, metric: str) -> tuple[str, str]:
    """``(site, pe_kind)`` of a position row (the ``site`` / ``pe_kind`` columns of ``summary_frame``).

    Rows about the additive PE term (``pe_pos_share``, ``pe_pos_coef``, ``logit_pe_*``, ``pe_logit_share``) name
    that term's site (``meta["position"]["pe_term"]``, the family's input site) and its kind; ``logit_last_pe_*``
    the Last-LN PE; the PE-ablated controls (``*_ablated``) the stream they were read at and the family's kind
    (every site of the family was turned off); every other row the stream it was read at
    (``blocks.{l}.hook_resid_pre``, ``hook_last_ln_in`` for layer -1) and ``none``.
    """
    meta = report.meta
    sites = meta.get("pe_sites") or {}
    kind_of = lambda name: str((sites.get(name) or {}).get("kind") or meta.get("pe_kind") or "none")  # noqa: E731
    stream = LAST_LN_IN if layer == LAST else block_hook(layer, RESID_PRE)
    given = (meta.get("position") or {}).get("pe_term")
    term = given or INPUT_PE
    if metric in ("pe_pos_share", "pe_pos_coef") or metric.startswith("logit_pe_"):
        return term, kind_of(term)
    if metric.startswith("logit_last_pe_"):
        return LAST_PE, kind_of(LAST_PE)
    if metric == "pe_logit_share":
        name = term if given or INPUT_PE in sites or LAST_PE not in sites else LAST_PE
        return name, kind_of(name)
    if metric.endswith("_ablated"):
        return stream, str(meta.get("pe_kind") or "none")
    return stream, "none"
