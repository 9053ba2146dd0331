"""The built-in plots specs can name: runs -> tidy data -> a figure or a Markdown table.

Each builder reads only the ``RunResult``/``ProbeReport`` contract (docs/contracts.md): ``summary["top1"]``,
``report.meta``, ``mean_maps``, ``pe_similarity``, ``last_ln_params``, ``token_norm_maps``, ``to_frame``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import paper as P
from ..analysis.metrics import pearson as analysis_pearson
from ..analysis.runs import RunResult
from ._axes import fmt_num
from .accuracy import accuracy_bars
from .correlation import correlation_lines
from .heatmaps import heatmap_grid
from .last_ln import last_ln_channels
from .pe_similarity import pe_similarity_matrix, pe_similarity_row
from .registry import Output, register_plot
from .select import Selection
from .specs import Spec
from .tables import markdown_table
from .token_norms import token_norm_grid

# --- small measures on report data -------------------------------------------------------------------


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped maps over the entries finite in both (a derived PE has NaN
    rows for prefix tokens without a PE, which are left out, as in ``analysis``'s ``tok_pe_corr``); NaN when
    either is constant. The correlation itself is :func:`pe_probe.analysis.metrics.pearson`."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in size: {a.size} vs {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return float("nan")
    return analysis_pearson(a[keep], b[keep])


def layer_maps(report, layer: int, patch_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``report.mean_maps(layer)``, optionally without the prefix (class token) rows."""
    tok, pe = report.mean_maps(layer)
    if patch_only:
        k = int(report.meta.get("num_prefix_tokens", 0))
        tok = np.asarray(tok)[k:]
        pe = None if pe is None else np.asarray(pe)[k:]
    return np.asarray(tok), None if pe is None else np.asarray(pe)


def resolve_layers(option: Any, meta: Mapping[str, Any]) -> list[int]:
    """Which blocks to show. ``"all"``: every block; ``"receiving"``: the PE-receiving blocks (every block
    when none receives one); a list: those layers when the model has them all, else as many layers spread
    evenly over the candidates (so the paper's 1, 4, 7, 9, 11 of a 12-block model become e.g. 1, 2, 3 of a
    4-block one)."""
    depth = int(meta.get("depth", 0))
    receiving = [int(x) for x in meta.get("receiving_blocks") or []]
    if option == "all":
        return list(range(depth))
    candidates = receiving or list(range(depth))
    if option == "receiving":
        return candidates
    wanted = [int(x) for x in option]
    if all(0 <= x < depth for x in wanted):
        return wanted
    return spread(candidates, len(wanted))


def spread(items: Sequence[int], n: int) -> list[int]:
    """At most ``n`` items spread evenly over ``items`` (first and last included)."""
    items = list(items)
    if n >= len(items):
        return items
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))
    return [items[i] for i in idx]


def _first(sel: Selection, key: str) -> RunResult | None:
    runs = sel.runs.get(key) or []
    return runs[0] if runs else None


def _paper_get(ref: Mapping | None, key: Any) -> float:
    if ref is None:
        return float("nan")
    v = ref.get(key)
    return float(v) if v is not None else float("nan")


def _map_rows(arr: np.ndarray, **ids: Any) -> pd.DataFrame:
    """A 2-D map as long rows (``row``, ``col``, ``value``) tagged with ``ids``."""
    arr = np.asarray(arr, dtype=float)
    r, c = np.indices(arr.shape)
    df = pd.DataFrame({"row": r.ravel(), "col": c.ravel(), "value": arr.ravel()})
    for k, v in reversed(list(ids.items())):
        df.insert(0, k, v)
    return df


def _figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


# --- accuracy bars (Fig 1, Fig 5) ----------------------------------------------------------------------


@register_plot("accuracy_bars", "figure", options={"digits": 2, "paper_label": "paper (DeiT-Ti, ImageNet-1K)"})
def build_accuracy_bars(spec: Spec, sel: Selection) -> Output:
    """Top-1 per series (one bar per run), the paper's value for the series key as a marker."""
    ref = P.reference(spec.paper) if spec.paper else None
    rows = []
    for s in sel.series:
        runs = sel.runs.get(s.key) or []
        for r in runs:
            label = s.label if len(runs) == 1 else f"{s.label}\n{r.display}"
            rows.append(dict(series=s.key, label=label, run=r.name, backbone=r.backbone, top1=r.top1,
                             paper=_paper_get(ref, s.key)))
        if not runs:
            rows.append(dict(series=s.key, label=s.label, run=None, backbone=None, top1=float("nan"),
                             paper=_paper_get(ref, s.key)))
    data = pd.DataFrame(rows)
    fig = _figure(max(4.0, 1.2 * len(data) + 1.5), 3.8)
    ax = fig.subplots()
    accuracy_bars(data, ax, digits=spec.options["digits"], paper_label=spec.options["paper_label"])
    ax.set_title(spec.title, fontsize=10)
    notes = [f"Paper: {ref.source}." + (f" {ref.notes}" if ref.notes else "")] if ref else []
    return Output(data=data, figure=fig, notes=notes)


# --- token / PE heatmaps (Fig 2) -------------------------------------------------------------------------


@register_plot("layer_maps", "figure", options={"layers": [1, 4, 7, 9, 11], "patch_only": False, "paper_depth": 12})
def build_layer_maps(spec: Spec, sel: Selection) -> Output:
    """Token and PE maps per layer of the first present series' run, with r(token, PE) under each; plus the
    maps after the last layer without PE (that run) and with PE in the Last LN (the next series' run, if any)."""
    main = sel.present()[0]
    run = _first(sel, main.key)
    report = run.report
    opts = spec.options
    ref = P.reference(spec.paper) if spec.paper else None
    use_paper = ref is not None and int(report.meta.get("depth", -1)) == int(opts["paper_depth"])
    panels, frames, notes = [], [], []
    for layer in resolve_layers(opts["layers"], report.meta):
        tok, pe = layer_maps(report, layer, opts["patch_only"])
        col = f"layer {layer}"
        r = pearson(tok, pe) if pe is not None else float("nan")
        p = _paper_get(ref, layer) if use_paper else float("nan")
        cap = f"r = {fmt_num(r)}" + (f" (paper {fmt_num(p)})" if not math.isnan(p) else "")
        panels.append(dict(row="token", column=col, map=tok, title=f"token, {col}",
                           caption=None if pe is not None else "no PE at this layer"))
        frames.append(_map_rows(tok, run=run.name, panel="token", layer=layer, correlation=r, paper_correlation=p))
        if pe is not None:
            panels.append(dict(row="PE", column=col, map=pe, title=f"PE, {col}", caption=cap))
            frames.append(_map_rows(pe, run=run.name, panel="pe", layer=layer, correlation=r, paper_correlation=p))
    tok, pe = layer_maps(report, -1, opts["patch_only"])
    col = "after last layer"
    panels.append(dict(row="token", column=col, map=tok, title=f"LN(x_L), {run.display}", caption="no PE in Last LN"))
    frames.append(_map_rows(tok, run=run.name, panel="after_last_ln", layer=-1, correlation=np.nan,
                            paper_correlation=np.nan))
    other = next((r for s in sel.present() if s is not main for r in sel.runs[s.key][:1]), None)
    for r_ in ([other] if other is not None else []) + ([run] if pe is not None else []):
        t2, p2 = layer_maps(r_.report, -1, opts["patch_only"])
        if p2 is None:
            notes.append(f"run {r_.name!r} has no PE in its Last LN")
            continue
        c = pearson(t2, p2)
        panels.append(dict(row="PE", column=col, map=t2 + p2, title=f"LN(x_L) + PE, {r_.display}",
                           caption=f"r(LN(x_L), PE) = {fmt_num(c)}"))
        frames.append(_map_rows(t2 + p2, run=r_.name, panel="after_last_ln_with_pe", layer=-1, correlation=c,
                                paper_correlation=np.nan))
        break
    panels_df = pd.DataFrame(panels)
    ncols = panels_df["column"].nunique()
    fig = _figure(2.3 * ncols, 5.2)
    heatmap_grid(panels_df, figure=fig)
    fig.suptitle(f"{spec.title} ({run.display})", fontsize=10)
    if use_paper:
        notes.append(f"Paper: {ref.source}.")
    return Output(data=pd.concat(frames, ignore_index=True), figure=fig, notes=notes)


# --- correlation per layer (Fig 4) -----------------------------------------------------------------------


@register_plot("correlation_lines", "figure", options={"patch_only": False, "paper_label": "paper (DeiT-Ti)"})
def build_correlation_lines(spec: Spec, sel: Selection) -> Output:
    """r(token map, PE map) at every PE-receiving block, one line per run; the paper's values dashed."""
    rows = []
    for s in sel.series:
        for run in sel.runs.get(s.key, []):
            for layer in resolve_layers("receiving", run.report.meta):
                tok, pe = layer_maps(run.report, layer, spec.options["patch_only"])
                if pe is not None:
                    rows.append(dict(series=run.display, run=run.name, layer=layer, correlation=pearson(tok, pe)))
    data = pd.DataFrame(rows, columns=["series", "run", "layer", "correlation"])
    ref = P.reference(spec.paper) if spec.paper else None
    fig = _figure(5.0, 3.6)
    ax = fig.subplots()
    correlation_lines(data, ax, paper=dict(ref) if ref else None, paper_label=spec.options["paper_label"])
    ax.set_title(spec.title, fontsize=10)
    if ref:
        data = pd.concat([data, pd.DataFrame([dict(series=spec.options["paper_label"], run=None, layer=k,
                                                   correlation=v) for k, v in ref.items()])], ignore_index=True)
    return Output(data=data, figure=fig, notes=[f"Paper: {ref.source}."] if ref else [])


# --- after-Last-LN maps (Fig 8) --------------------------------------------------------------------------


@register_plot("last_ln_maps", "figure", options={"patch_only": False})
def build_last_ln_maps(spec: Spec, sel: Selection) -> Output:
    """Per series: LN(x_L), the Last-LN PE and their sum, with r(LN(x_L), PE) under the PE map."""
    panels, frames, notes = [], [], []
    for s in sel.present():
        run = sel.runs[s.key][0]
        tok, pe = layer_maps(run.report, -1, spec.options["patch_only"])
        row = f"{s.label} ({run.display})"
        panels.append(dict(row=row, column="LN(x_L)", map=tok, title=f"LN(x_L), {s.label}", caption=None))
        frames.append(_map_rows(tok, series=s.key, run=run.name, panel="token", correlation=np.nan))
        if pe is None:
            notes.append(f"run {run.name!r} adds no PE in its Last LN")
            continue
        r = pearson(tok, pe)
        panels.append(dict(row=row, column="Last-LN PE", map=pe, title=f"PE, {s.label}", caption=f"r = {fmt_num(r)}"))
        panels.append(dict(row=row, column="LN(x_L) + PE", map=tok + pe, title=f"sum, {s.label}", caption=None))
        frames.append(_map_rows(pe, series=s.key, run=run.name, panel="pe", correlation=r))
        frames.append(_map_rows(tok + pe, series=s.key, run=run.name, panel="sum", correlation=r))
    panels_df = pd.DataFrame(panels)
    fig = _figure(7.5, 2.6 * panels_df["row"].nunique())
    heatmap_grid(panels_df, figure=fig)
    fig.suptitle(spec.title, fontsize=10)
    return Output(data=pd.concat(frames, ignore_index=True), figure=fig, notes=notes)


# --- Last LN gamma and beta (Fig 6) ----------------------------------------------------------------------


@register_plot("last_ln_params", "figure",
               options={"cosine_metric": "last_ln_cos_before_after", "cosine_paper_series": ["pvg_token", "pvg"]})
def build_last_ln_params(spec: Spec, sel: Selection) -> Output:
    """Gamma and beta of the Last LN per channel, one line per series; var(beta) and the cosine of the
    pooled token before vs after the Last LN (metric ``cosine_metric``, layer -1, of ``to_frame()``) in a box."""
    var_ref, cos_ref = P.FIG6_BETA_VARIANCE, P.FIG6_COSINE
    frames, stats, notes = [], [], []
    for s in sel.present():
        run = sel.runs[s.key][0]
        params = run.report.last_ln_params()
        var_beta = float(np.var(params["beta"].to_numpy(dtype=float)))
        frame = run.report.to_frame()
        hit = frame[(frame["metric"] == spec.options["cosine_metric"]) & (frame["layer"] == -1)]
        cosine = float(hit["value"].mean()) if len(hit) else float("nan")
        if not len(hit):
            notes.append(f"run {run.name!r}: no {spec.options['cosine_metric']!r} metric at layer -1 in its report")
        pool = run.pe_config.get("global_pool")
        paper_cos = _paper_get(cos_ref, pool) if s.key in spec.options["cosine_paper_series"] else float("nan")
        stats.append(dict(series=s.label, var_beta=var_beta, cosine=cosine,
                          paper_var_beta=_paper_get(var_ref, s.key), paper_cosine=paper_cos))
        frames.append(params[["channel", "gamma", "beta"]].assign(series=s.label, run=run.name, var_beta=var_beta,
                                                                  cosine=cosine, paper_var_beta=stats[-1]["paper_var_beta"],
                                                                  paper_cosine=paper_cos))
    data = pd.concat(frames, ignore_index=True)
    stats_df = pd.DataFrame(stats)
    fig = _figure(11.0, 3.8)
    ax_g, ax_b = fig.subplots(1, 2)
    last_ln_channels(data, ax_g, param="gamma")
    last_ln_channels(data, ax_b, param="beta", stats=stats_df)
    fig.suptitle(spec.title, fontsize=10)
    notes.append(f"Paper: {var_ref.source}; {cos_ref.source}.")
    return Output(data=data, figure=fig, notes=notes)


# --- token norms before/after the Last LN (Fig 7) --------------------------------------------------------


@register_plot("token_norms", "figure", options={"n_images": 3})
def build_token_norms(spec: Spec, sel: Selection) -> Output:
    """Per image (rows) and series: the per-token norm map before and after the Last LN."""
    recs, frames = [], []
    for s in sel.present():
        run = sel.runs[s.key][0]
        maps = run.report.token_norm_maps()
        for stage in ("before", "after"):
            arr = np.asarray(maps[stage])
            for i in range(min(int(spec.options["n_images"]), arr.shape[0])):
                recs.append(dict(series=s.label, stage=stage, image=i, map=arr[i]))
                frames.append(_map_rows(arr[i], series=s.label, run=run.name, stage=stage, image=i))
    data = pd.DataFrame(recs)
    fig = _figure(1.0, 1.0)
    token_norm_grid(data, figure=fig)
    fig.suptitle(spec.title, fontsize=10)
    return Output(data=pd.concat(frames, ignore_index=True), figure=fig)


# --- LaPE-style PE self-similarity ------------------------------------------------------------------------


@register_plot("pe_similarity", "figure", options={"layers": "receiving", "max_layers": 4, "token": "center"})
def build_pe_similarity(spec: Spec, sel: Selection) -> Output:
    """For the first present series' run, per layer: the N x N PE cosine matrix and one token's row on the grid."""
    run = _first(sel, sel.present()[0].key)
    report = run.report
    h, w = (int(x) for x in report.meta["grid"])
    token = spec.options["token"]
    token = (h // 2) * w + w // 2 if token == "center" else int(token)
    layers = resolve_layers(spec.options["layers"], report.meta)
    layers = spread(layers, int(spec.options["max_layers"]))
    fig = _figure(2.4 * len(layers), 5.0)
    axes = np.asarray(fig.subplots(2, len(layers), squeeze=False))
    frames = []
    for j, layer in enumerate(layers):
        sim = np.asarray(report.pe_similarity(layer), dtype=float)
        pe_similarity_matrix(sim, axes[0, j], title=f"layer {layer}: PE cosine")
        pe_similarity_row(sim, token, (h, w), axes[1, j], title=f"layer {layer}: token {token}")
        frames.append(_map_rows(sim, run=run.name, layer=layer))
    fig.colorbar(axes[0, -1].images[0], ax=list(axes.ravel()), shrink=0.6, label="cosine")
    fig.suptitle(f"{spec.title} ({run.display})", fontsize=10)
    data = pd.concat(frames, ignore_index=True).rename(columns={"row": "token_i", "col": "token_j", "value": "cosine"})
    return Output(data=data, figure=fig, notes=[f"Row plots show token {token} on the {h}x{w} patch grid."])


# --- tables ------------------------------------------------------------------------------------------------


def _join(values: Sequence[float], digits: int) -> str | float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan")
    return " / ".join(f"{v:.{digits}f}" for v in vals)


@register_plot("accuracy_table", "table", options={"backbones": ["DeiT-Ti", "DeiT-S", "DeiT-B"], "digits": 2})
def build_accuracy_table(spec: Spec, sel: Selection) -> Output:
    """Methods (series) x backbones: the paper's top-1 beside ours, our runs in the column of their backbone."""
    ref = P.reference(spec.paper or "accuracy")
    digits = spec.options["digits"]
    rows = []
    for s in sel.series:
        for bb in spec.options["backbones"]:
            v = (ref.get(bb) or {}).get(s.key)
            if v is not None:
                rows.append(dict(method=s.key, label=s.label, backbone=bb, source="paper", top1=float(v), run=None))
        for r in sel.runs.get(s.key, []):
            rows.append(dict(method=s.key, label=s.label, backbone=r.backbone, source="ours", top1=r.top1, run=r.name))
    data = pd.DataFrame(rows, columns=["method", "label", "backbone", "source", "top1", "run"])
    backbones = list(dict.fromkeys(list(spec.options["backbones"]) + list(data.loc[data.source == "ours", "backbone"])))
    table = pd.DataFrame({"method": [s.label for s in sel.series]})
    for bb in backbones:
        for source in ("paper", "ours"):
            part = data[(data.backbone == bb) & (data.source == source)]
            if part.empty:
                continue
            table[f"{bb} {source}"] = [_join(part.loc[part.method == s.key, "top1"].tolist(), digits)
                                       for s in sel.series]
    md = markdown_table(table, digits) + f"\nPaper: {ref.source}. Ours: top-1 % from each run's summary.json.\n"
    return Output(data=data, table=md)


def _lookup_or_none(run: RunResult, field: str) -> Any:
    try:
        return run.lookup(field)
    except KeyError:
        return None


def _yes_no(v: Any) -> Any:
    return {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v


@register_plot("ablation_table", "table", options={"paper_rows": True, "digits": 2})
def build_ablation_table(spec: Spec, sel: Selection) -> Output:
    """One row per run, grouped by the spec's ``[group] by`` fields, with the paper's value for that
    combination; combinations the paper reports but no run has are appended (``paper_rows``)."""
    assert spec.group is not None, "ablation_table needs a [group] spec"
    by = spec.group.by
    ref = P.reference(spec.paper) if spec.paper else None

    def paper_value(values: tuple) -> float:
        return _paper_get(ref, values[0] if len(values) == 1 else values)

    rows, seen = [], set()
    for s in sel.present():
        for r in sel.runs[s.key]:
            values = tuple(_lookup_or_none(r, f) for f in by)
            seen.add(values)
            rows.append({**dict(zip(by, values)), "backbone": r.backbone, "run": r.name, "top1": r.top1,
                         "paper_top1": paper_value(values)})
    if ref is not None and spec.options["paper_rows"]:
        for key in ref:
            values = key if isinstance(key, tuple) else (key,)
            if values not in seen:
                rows.append({**dict(zip(by, values)), "backbone": "(paper only)", "run": None, "top1": float("nan"),
                             "paper_top1": paper_value(values)})
    data = pd.DataFrame(rows, columns=[*by, "backbone", "run", "top1", "paper_top1"])
    shown = data.copy()
    for f in by:
        shown[f] = [_yes_no(v) if v is not None else "none" for v in shown[f]]
    shown = shown.rename(columns={"top1": "ours top-1", "paper_top1": "paper top-1"})
    md = markdown_table(shown, spec.options["digits"])
    if ref is not None:
        md += f"\nPaper: {ref.source}." + (f" {ref.notes}" if ref.notes else "") + "\n"
    return Output(data=data, table=md)
