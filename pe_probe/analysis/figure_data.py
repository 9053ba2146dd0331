"""The numbers behind every figure and table: a :class:`~pe_probe.analysis.select.Selection` of runs in, a
:class:`FigureData` out (tidy frames only; the figures floor draws them and writes ``data`` as the CSV).

One function per plot a spec can name (the registry in :mod:`pe_probe.figures.plots` pairs each with its
drawing). Each takes the selection, the plot's options and the paper reference the spec names (or None).
No torch, no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..core.hook_points import LAST
from . import paper as P
from .metrics import last_ln_params, pe_similarity_matrix, pearson, summary_frame
from .runs import RunResult
from .select import Selection


@dataclass
class FigureData:
    """What a figure or table shows.

    ``data``: the tidy rows behind it (written as ``<id>.csv``). ``panels``: for map figures, one row per
    panel with its 2-D array (column ``map``) and labels. ``stats``: per-series numbers a figure prints
    beside its lines. ``table``: a table's wide layout. ``notes``: lines for the index.
    ``footnote``: a table's closing sentence. ``subject``: the run a single-run figure shows.
    """

    data: pd.DataFrame
    panels: pd.DataFrame | None = None
    stats: pd.DataFrame | None = None
    table: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    footnote: str = ""
    subject: str = ""


# --- helpers ------------------------------------------------------------------------------------------


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


def map_rows(arr: np.ndarray, **ids: Any) -> pd.DataFrame:
    """A 2-D map as long rows (``row``, ``col``, ``value``) tagged with ``ids`` (leading columns)."""
    arr = np.asarray(arr, dtype=float)
    r, c = np.indices(arr.shape)
    df = pd.DataFrame({"row": r.ravel(), "col": c.ravel(), "value": arr.ravel()})
    for k, v in reversed(list(ids.items())):
        df.insert(0, k, v)
    return df


def fmt_num(value: float | None, digits: int = 2) -> str:
    """A number for captions and annotations; ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


# --- accuracy bars (Fig 1, Fig 5) ----------------------------------------------------------------------


def accuracy_bars(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Top-1 per series (one row per run), with the paper's value for the series key."""
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
    notes = [f"Paper: {ref.source}." + (f" {ref.notes}" if ref.notes else "")] if ref else []
    return FigureData(data=pd.DataFrame(rows), notes=notes)


# --- token / PE heatmaps (Fig 2) -----------------------------------------------------------------------


def layer_map_panels(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Token and PE maps per layer of the first present series' run, with r(token, PE) under each; plus the
    maps after the last layer without PE (that run) and with PE in the Last LN (the next series' run, if any)."""
    main = sel.present()[0]
    run = _first(sel, main.key)
    report = run.report
    use_paper = ref is not None and int(report.meta.get("depth", -1)) == int(options["paper_depth"])
    panels, frames, notes = [], [], []
    for layer in resolve_layers(options["layers"], report.meta):
        tok, pe = layer_maps(report, layer, options["patch_only"])
        col = f"layer {layer}"
        r = pearson(tok, pe) if pe is not None else float("nan")
        p = _paper_get(ref, layer) if use_paper else float("nan")
        cap = f"r = {fmt_num(r)}" + (f" (paper {fmt_num(p)})" if not math.isnan(p) else "")
        panels.append(dict(row="token", column=col, map=tok, title=f"token, {col}",
                           caption=None if pe is not None else "no PE at this layer"))
        frames.append(map_rows(tok, run=run.name, panel="token", layer=layer, correlation=r, paper_correlation=p))
        if pe is not None:
            panels.append(dict(row="PE", column=col, map=pe, title=f"PE, {col}", caption=cap))
            frames.append(map_rows(pe, run=run.name, panel="pe", layer=layer, correlation=r, paper_correlation=p))
    tok, pe = layer_maps(report, LAST, options["patch_only"])
    col = "after last layer"
    panels.append(dict(row="token", column=col, map=tok, title=f"LN(x_L), {run.display}", caption="no PE in Last LN"))
    frames.append(map_rows(tok, run=run.name, panel="after_last_ln", layer=LAST, correlation=np.nan,
                           paper_correlation=np.nan))
    other = next((r for s in sel.present() if s is not main for r in sel.runs[s.key][:1]), None)
    for r_ in ([other] if other is not None else []) + ([run] if pe is not None else []):
        t2, p2 = layer_maps(r_.report, LAST, options["patch_only"])
        if p2 is None:
            notes.append(f"run {r_.name!r} has no PE in its Last LN")
            continue
        c = pearson(t2, p2)
        panels.append(dict(row="PE", column=col, map=t2 + p2, title=f"LN(x_L) + PE, {r_.display}",
                           caption=f"r(LN(x_L), PE) = {fmt_num(c)}"))
        frames.append(map_rows(t2 + p2, run=r_.name, panel="after_last_ln_with_pe", layer=LAST, correlation=c,
                               paper_correlation=np.nan))
        break
    if use_paper:
        notes.append(f"Paper: {ref.source}.")
    return FigureData(data=pd.concat(frames, ignore_index=True), panels=pd.DataFrame(panels), notes=notes,
                      subject=run.display)


# --- correlation per layer (Fig 4) ---------------------------------------------------------------------


def correlation_by_layer(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """r(token map, PE map) at every PE-receiving block of every run; the paper's values as rows with no run."""
    rows = []
    for s in sel.series:
        for run in sel.runs.get(s.key, []):
            for layer in resolve_layers("receiving", run.report.meta):
                tok, pe = layer_maps(run.report, layer, options["patch_only"])
                if pe is not None:
                    rows.append(dict(series=run.display, run=run.name, layer=layer, correlation=pearson(tok, pe)))
    data = pd.DataFrame(rows, columns=["series", "run", "layer", "correlation"])
    if ref:
        data = pd.concat([data, pd.DataFrame([dict(series=options["paper_label"], run=None, layer=k,
                                                   correlation=v) for k, v in ref.items()])], ignore_index=True)
    return FigureData(data=data, notes=[f"Paper: {ref.source}."] if ref else [])


# --- after-Last-LN maps (Fig 8) ------------------------------------------------------------------------


def last_ln_map_panels(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Per series: LN(x_L), the Last-LN PE and their sum, with r(LN(x_L), PE) under the PE map."""
    panels, frames, notes = [], [], []
    for s in sel.present():
        run = sel.runs[s.key][0]
        tok, pe = layer_maps(run.report, LAST, options["patch_only"])
        row = f"{s.label} ({run.display})"
        panels.append(dict(row=row, column="LN(x_L)", map=tok, title=f"LN(x_L), {s.label}", caption=None))
        frames.append(map_rows(tok, series=s.key, run=run.name, panel="token", correlation=np.nan))
        if pe is None:
            notes.append(f"run {run.name!r} adds no PE in its Last LN")
            continue
        r = pearson(tok, pe)
        panels.append(dict(row=row, column="Last-LN PE", map=pe, title=f"PE, {s.label}", caption=f"r = {fmt_num(r)}"))
        panels.append(dict(row=row, column="LN(x_L) + PE", map=tok + pe, title=f"sum, {s.label}", caption=None))
        frames.append(map_rows(pe, series=s.key, run=run.name, panel="pe", correlation=r))
        frames.append(map_rows(tok + pe, series=s.key, run=run.name, panel="sum", correlation=r))
    return FigureData(data=pd.concat(frames, ignore_index=True), panels=pd.DataFrame(panels), notes=notes)


# --- Last LN gamma and beta (Fig 6) --------------------------------------------------------------------


def last_ln_channels(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Gamma and beta of the Last LN per channel, one group of rows per series; var(beta) and the cosine of the
    pooled token before vs after the Last LN (metric ``cosine_metric``, layer -1) per series in ``stats``."""
    var_ref, cos_ref = P.FIG6_BETA_VARIANCE, P.FIG6_COSINE
    frames, stats, notes = [], [], []
    for s in sel.present():
        run = sel.runs[s.key][0]
        params = last_ln_params(run.report)
        var_beta = float(np.var(params["beta"].to_numpy(dtype=float)))
        frame = summary_frame(run.report)
        hit = frame[(frame["metric"] == options["cosine_metric"]) & (frame["layer"] == LAST)]
        cosine = float(hit["value"].mean()) if len(hit) else float("nan")
        if not len(hit):
            notes.append(f"run {run.name!r}: no {options['cosine_metric']!r} metric at layer -1 in its report")
        pool = run.pe_config.get("global_pool")
        paper_cos = _paper_get(cos_ref, pool) if s.key in options["cosine_paper_series"] else float("nan")
        stats.append(dict(series=s.label, var_beta=var_beta, cosine=cosine,
                          paper_var_beta=_paper_get(var_ref, s.key), paper_cosine=paper_cos))
        frames.append(params[["channel", "gamma", "beta"]].assign(
            series=s.label, run=run.name, var_beta=var_beta, cosine=cosine,
            paper_var_beta=stats[-1]["paper_var_beta"], paper_cosine=paper_cos))
    notes.append(f"Paper: {var_ref.source}; {cos_ref.source}.")
    return FigureData(data=pd.concat(frames, ignore_index=True), stats=pd.DataFrame(stats), notes=notes)


# --- token norms before/after the Last LN (Fig 7) ------------------------------------------------------


def token_norm_panels(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Per image and series: the per-token norm map before and after the Last LN."""
    recs, frames = [], []
    for s in sel.present():
        run = sel.runs[s.key][0]
        maps = run.report.token_norm_maps()
        for stage in ("before", "after"):
            arr = np.asarray(maps[stage])
            for i in range(min(int(options["n_images"]), arr.shape[0])):
                recs.append(dict(series=s.label, stage=stage, image=i, map=arr[i]))
                frames.append(map_rows(arr[i], series=s.label, run=run.name, stage=stage, image=i))
    return FigureData(data=pd.concat(frames, ignore_index=True), panels=pd.DataFrame(recs))


# --- LaPE-style PE self-similarity ---------------------------------------------------------------------


def pe_similarity_panels(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """For the first present series' run, per layer: the N x N PE cosine matrix, and which token's row to show."""
    run = _first(sel, sel.present()[0].key)
    report = run.report
    h, w = (int(x) for x in report.meta["grid"])
    token = options["token"]
    token = (h // 2) * w + w // 2 if token == "center" else int(token)
    layers = spread(resolve_layers(options["layers"], report.meta), int(options["max_layers"]))
    panels, frames = [], []
    for layer in layers:
        sim = np.asarray(pe_similarity_matrix(report, layer), dtype=float)
        panels.append(dict(layer=layer, map=sim, token=token, grid=(h, w)))
        frames.append(map_rows(sim, run=run.name, layer=layer))
    data = pd.concat(frames, ignore_index=True).rename(columns={"row": "token_i", "col": "token_j", "value": "cosine"})
    return FigureData(data=data, panels=pd.DataFrame(panels), subject=run.display,
                      notes=[f"Row plots show token {token} on the {h}x{w} patch grid."])


# --- tables --------------------------------------------------------------------------------------------


def _join(values: Sequence[float], digits: int) -> str | float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan")
    return " / ".join(f"{v:.{digits}f}" for v in vals)


def accuracy_table(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Methods (series) x backbones: the paper's top-1 beside ours, our runs in the column of their backbone."""
    ref = ref or P.reference("accuracy")
    digits = options["digits"]
    rows = []
    for s in sel.series:
        for bb in options["backbones"]:
            v = (ref.get(bb) or {}).get(s.key)
            if v is not None:
                rows.append(dict(method=s.key, label=s.label, backbone=bb, source="paper", top1=float(v), run=None))
        for r in sel.runs.get(s.key, []):
            rows.append(dict(method=s.key, label=s.label, backbone=r.backbone, source="ours", top1=r.top1, run=r.name))
    data = pd.DataFrame(rows, columns=["method", "label", "backbone", "source", "top1", "run"])
    backbones = list(dict.fromkeys(list(options["backbones"]) + list(data.loc[data.source == "ours", "backbone"])))
    table = pd.DataFrame({"method": [s.label for s in sel.series]})
    for bb in backbones:
        for source in ("paper", "ours"):
            part = data[(data.backbone == bb) & (data.source == source)]
            if part.empty:
                continue
            table[f"{bb} {source}"] = [_join(part.loc[part.method == s.key, "top1"].tolist(), digits)
                                       for s in sel.series]
    return FigureData(data=data, table=table,
                      footnote=f"Paper: {ref.source}. Ours: top-1 % from each run's summary.json.")


def _lookup_or_none(run: RunResult, name: str) -> Any:
    try:
        return run.lookup(name)
    except KeyError:
        return None


def _yes_no(v: Any) -> Any:
    return {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v


def ablation_table(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """One row per run, grouped by the query's ``[group] by`` fields (``sel.group_by``), with the paper's value
    for that combination; combinations the paper reports but no run has are appended (``paper_rows``)."""
    by = tuple(sel.group_by)
    if not by:
        raise ValueError("ablation_table needs a [group] query (its rows are the groups)")

    def paper_value(values: tuple) -> float:
        return _paper_get(ref, values[0] if len(values) == 1 else values)

    rows, seen = [], set()
    for s in sel.present():
        for r in sel.runs[s.key]:
            values = tuple(_lookup_or_none(r, f) for f in by)
            seen.add(values)
            rows.append({**dict(zip(by, values)), "backbone": r.backbone, "run": r.name, "top1": r.top1,
                         "paper_top1": paper_value(values)})
    if ref is not None and options["paper_rows"]:
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
    footnote = (f"Paper: {ref.source}." + (f" {ref.notes}" if ref.notes else "")) if ref is not None else ""
    return FigureData(data=data, table=shown, footnote=footnote)
