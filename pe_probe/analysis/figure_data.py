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

from ..core.hook_points import INPUT, LAST, layer_label
from . import paper as P
from .metrics import correlation_parts, last_ln_params, pe_similarity_matrix, pearson, summary_frame
from .runs import RunResult
from .select import Selection
from .stats import mean_interval, with_seed_summary

#: The correlation and its two parts (``pe_probe.analysis.metrics.correlation_parts``), as figures name them.
CORRELATION_METRICS = ("tok_pe_corr", "tok_pe_corr_position", "tok_pe_corr_channel")


@dataclass
class FigureData:
    """What a figure or table shows.

    ``data``: the tidy rows behind it (written as ``<id>.csv``; with seeds, one row per seed plus ``n_seeds``,
    ``mean``, ``ci_low``, ``ci_high`` of its group). ``panels``: for map figures, one row per panel with its
    2-D array (column ``map``), labels and the colour range it shares (``vmin``, ``vmax``). ``stats``:
    per-series numbers a figure prints beside its lines. ``table``: a table's wide layout. ``notes``: lines
    for the index. ``findings``: what the data shows, in sentences computed from it (the caption's second
    half). ``footnote``: a table's closing sentence. ``subject``: the run a single-run figure shows.
    """

    data: pd.DataFrame
    panels: pd.DataFrame | None = None
    stats: pd.DataFrame | None = None
    table: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
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


def by_seed(runs: Sequence[RunResult]) -> list[RunResult]:
    """``runs`` ordered by seed (runs without a recorded seed last, in their given order)."""
    return sorted(runs, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))


def _first(sel: Selection, key: str) -> RunResult | None:
    """The run a single-run figure shows for series ``key``: its lowest seed."""
    runs = by_seed(sel.runs.get(key) or [])
    return runs[0] if runs else None


def _seed_note(sel: Selection, key: str, run: RunResult) -> list[str]:
    same = [r for r in sel.runs.get(key, []) if r.config_key == run.config_key]
    if len(same) < 2:
        return []
    return [f"{run.display}: the maps show seed {run.seed} (one of {len(same)} seeds of this configuration)."]


def _groups(sel: Selection, key: str) -> list[tuple[str, list[RunResult]]]:
    """The runs of series ``key`` grouped by configuration (seeds of one configuration together), each group
    labelled by its runs' :attr:`~RunResult.display` name, in order of first appearance."""
    groups: dict[str, list[RunResult]] = {}
    for r in sel.runs.get(key, []):
        groups.setdefault(r.config_key, []).append(r)
    return [(runs[0].display, by_seed(runs)) for runs in groups.values()]


def symmetric_range(*arrays: np.ndarray) -> float:
    """The largest finite absolute value over ``arrays`` (a shared, zero-centred colour range)."""
    vals = [np.nanmax(np.abs(np.asarray(a, dtype=float))) for a in arrays if np.isfinite(a).any()]
    return float(max(vals)) if vals else 1.0


def interval_text(values: Sequence[float], digits: int = 3) -> str:
    """``mean [low, high] (n seeds)`` of ``values``, or the single value."""
    iv = mean_interval(values)
    if iv.n == 0:
        return "n/a"
    if iv.n == 1:
        return f"{iv.mean:.{digits}g} (1 seed)"
    return f"{iv.mean:.{digits}g} [{iv.low:.{digits}g}, {iv.high:.{digits}g}] ({iv.n} seeds)"


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


def accuracy_by_scheme(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Top-1 per series: one row per run (seed), with the series' ``n_seeds``, ``mean`` and 95% ``ci_low`` /
    ``ci_high`` (:mod:`~pe_probe.analysis.stats`) and the paper's value for the series key. A series whose runs
    are of several configurations gets one bar per configuration."""
    rows = []
    for s in sel.series:
        groups = _groups(sel, s.key)
        for name, runs in groups:
            label = s.label if len(groups) == 1 else f"{s.label}\n{name}"
            rows += [dict(series=s.key, label=label, run=r.name, seed=r.seed, backbone=r.backbone, top1=r.top1,
                          paper=_paper_get(ref, s.key)) for r in runs]
        if not groups:
            rows.append(dict(series=s.key, label=s.label, run=None, seed=None, backbone=None, top1=float("nan"),
                             paper=_paper_get(ref, s.key)))
    data = with_seed_summary(pd.DataFrame(rows), ["label"], "top1")
    notes = [f"Paper: {ref.source}." + (f" {ref.notes}" if ref.notes else "")] if ref else []
    findings = [f"{label.replace(chr(10), ' ')}: {interval_text(part['top1'].tolist(), 4)} top-1 %"
                for label, part in data.groupby("label", sort=False) if part["n_seeds"].iloc[0] > 0]
    return FigureData(data=data, notes=notes, findings=findings)


# --- token / PE heatmaps (Fig 2) -----------------------------------------------------------------------


def layer_map_panels(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Token and PE maps per layer of the first present series' run (its lowest seed), with r(token, PE) under
    each; plus the maps after the last layer without PE (that run) and with PE in the Last LN (the next
    series' run, if any). The token and PE maps of a column share one zero-centred colour range."""
    main = sel.present()[0]
    run = _first(sel, main.key)
    report = run.report
    use_paper = ref is not None and int(report.meta.get("depth", -1)) == int(options["paper_depth"])
    panels, frames, notes = [], [], _seed_note(sel, main.key, run)
    for layer in resolve_layers(options["layers"], report.meta):
        tok, pe = layer_maps(report, layer, options["patch_only"])
        col = f"layer {layer}"
        r = pearson(tok, pe) if pe is not None else float("nan")
        p = _paper_get(ref, layer) if use_paper else float("nan")
        cap = f"r = {fmt_num(r)}" + (f" (paper {fmt_num(p)})" if not math.isnan(p) else "")
        vmax = symmetric_range(tok, *([] if pe is None else [pe]))
        panels.append(dict(row="token", column=col, map=tok, title=f"token, {col}",
                           caption=None if pe is not None else "no PE at this layer", vmin=-vmax, vmax=vmax))
        frames.append(map_rows(tok, run=run.name, panel="token", layer=layer, correlation=r, paper_correlation=p))
        if pe is not None:
            panels.append(dict(row="PE", column=col, map=pe, title=f"PE, {col}", caption=cap, vmin=-vmax, vmax=vmax))
            frames.append(map_rows(pe, run=run.name, panel="pe", layer=layer, correlation=r, paper_correlation=p))
    tok, pe = layer_maps(report, LAST, options["patch_only"])
    col = "after last layer"
    last = [dict(row="token", column=col, map=tok, title=f"LN(x_L), {run.display}", caption="no PE in Last LN")]
    frames.append(map_rows(tok, run=run.name, panel="after_last_ln", layer=LAST, correlation=np.nan,
                           paper_correlation=np.nan))
    other = next((r for s in sel.present() if s is not main for r in by_seed(sel.runs[s.key])[:1]), None)
    for r_ in ([other] if other is not None else []) + ([run] if pe is not None else []):
        t2, p2 = layer_maps(r_.report, LAST, options["patch_only"])
        if p2 is None:
            notes.append(f"run {r_.name!r} has no PE in its Last LN")
            continue
        c = pearson(t2, p2)
        last.append(dict(row="PE", column=col, map=t2 + p2, title=f"LN(x_L) + PE, {r_.display}",
                         caption=f"r(LN(x_L), PE) = {fmt_num(c)}"))
        frames.append(map_rows(t2 + p2, run=r_.name, panel="after_last_ln_with_pe", layer=LAST, correlation=c,
                               paper_correlation=np.nan))
        break
    vmax = symmetric_range(*(p["map"] for p in last))
    panels += [{**p, "vmin": -vmax, "vmax": vmax} for p in last]
    if use_paper:
        notes.append(f"Paper: {ref.source}.")
    data = pd.concat(frames, ignore_index=True)
    rs = data.drop_duplicates(["panel", "layer"]).query("panel == 'pe'")
    findings = [f"{run.display} (seed {run.seed}): r(token map, PE map) by layer "
                + ", ".join(f"{int(l)}: {fmt_num(v)}" for l, v in zip(rs.layer, rs.correlation))] if len(rs) else []
    return FigureData(data=data, panels=pd.DataFrame(panels), notes=notes, findings=findings, subject=run.display)


# --- correlation per layer (Fig 4) ---------------------------------------------------------------------


def correlation_by_layer(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """The token-PE correlation and its positional and per-channel parts (``tok_pe_corr``,
    ``tok_pe_corr_position``, ``tok_pe_corr_channel``) at every PE-receiving block of every run: one row per
    run (seed), layer and metric, with the mean and 95% CI over the seeds of its configuration; the paper's
    values as ``tok_pe_corr`` rows with no run."""
    rows = []
    for s in sel.series:
        for name, runs in _groups(sel, s.key):
            for run in runs:
                for layer in resolve_layers("receiving", run.report.meta):
                    tok, pe = layer_maps(run.report, layer, options["patch_only"])
                    if pe is None:
                        continue
                    rows_ = np.isfinite(pe).all(axis=1)
                    for metric, value in zip(CORRELATION_METRICS, correlation_parts(tok[rows_], pe[rows_])):
                        rows.append(dict(series=name, run=run.name, seed=run.seed, layer=layer, metric=metric,
                                         value=value))
    cols = ["series", "run", "seed", "layer", "metric", "value"]
    data = with_seed_summary(pd.DataFrame(rows, columns=cols), ["series", "layer", "metric"], "value")
    findings = []
    for name, part in data[data.metric == "tok_pe_corr"].groupby("series", sort=False):
        per_seed = part.groupby("run")["value"].mean()
        findings.append(f"{name}: r averaged over its PE blocks {interval_text(per_seed.tolist())}")
    notes = []
    if ref:
        depths = {int(r.report.meta["depth"]) for s in sel.series for r in sel.runs.get(s.key, [])}
        if depths == {int(options["paper_depth"])}:
            paper = pd.DataFrame([dict(series=options["paper_label"], run=None, seed=None, layer=k,
                                       metric="tok_pe_corr", value=v, n_seeds=0) for k, v in ref.items()])
            data = pd.concat([data, paper], ignore_index=True)
            notes.append(f"Paper: {ref.source}.")
        else:
            notes.append(f"The paper's values ({ref.source}) are for a {options['paper_depth']}-block model and are "
                         f"not drawn beside these {'/'.join(str(d) for d in sorted(depths))}-block models: "
                         + ", ".join(f"block {k}: {v}" for k, v in ref.items()) + ".")
    return FigureData(data=data, notes=notes, findings=findings)


# --- any report metric per layer (position per layer) --------------------------------------------------


def metric_by_layer(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Report metrics ``options["metrics"]`` (rows of :func:`~pe_probe.analysis.metrics.summary_frame`) per run
    (seed), layer and metric, with the mean and 95% CI over the seeds of its configuration. ``position`` puts
    the layers in forward order (blocks 0..L-1, then layer -1 at L: the stream after the last block). With
    ``options["x"] == "metric"`` each metric is a point on the x axis instead (``position`` = its index; for
    single-layer metrics such as the logit decomposition). Runs whose report lacks a metric add no row for it."""
    metrics = list(options["metrics"])
    by_metric = options.get("x", "layer") == "metric"
    rows = []
    for s in sel.series:
        for name, runs in _groups(sel, s.key):
            for run in runs:
                frame = summary_frame(run.report)
                frame = frame[frame["metric"].isin(metrics)]
                depth = int(run.report.meta["depth"])
                for layer, metric, value in zip(frame["layer"], frame["metric"], frame["value"]):
                    pos = metrics.index(metric) if by_metric else (depth if int(layer) == LAST else int(layer))
                    rows.append(dict(series=name, run=run.name, seed=run.seed, layer=int(layer), position=pos,
                                     metric=metric, value=float(value)))
    cols = ["series", "run", "seed", "layer", "position", "metric", "value"]
    data = with_seed_summary(pd.DataFrame(rows, columns=cols), ["series", "position", "metric"], "value")
    findings, notes = [], []
    for metric in metrics:
        part = data[data["metric"] == metric]
        if not len(part):
            notes.append(f"No run has {metric} (probe with the option that measures it).")
            continue
        cells = []
        for name, sub in part.groupby("series", sort=False):
            last = sub[sub["position"] == sub["position"].max()]
            cells.append(f"{name} {interval_text(last['value'].tolist())}")
        where = "" if by_metric else " after the last block"
        findings.append(f"{metric}{where}: " + "; ".join(cells))
    return FigureData(data=data, findings=findings, notes=notes)


# --- after-Last-LN maps (Fig 8) ------------------------------------------------------------------------


def last_ln_map_panels(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Per series (its lowest seed): LN(x_L), the Last-LN PE and their sum, with r(LN(x_L), PE) under the PE
    map; the maps of a row share one zero-centred colour range."""
    panels, frames, notes, findings = [], [], [], []
    for s in sel.present():
        run = _first(sel, s.key)
        notes += _seed_note(sel, s.key, run)
        tok, pe = layer_maps(run.report, LAST, options["patch_only"])
        row = f"{s.label} ({run.display})"
        vmax = symmetric_range(tok, *([] if pe is None else [pe, tok + pe]))
        panels.append(dict(row=row, column="LN(x_L)", map=tok, title=f"LN(x_L), {s.label}", caption=None,
                           vmin=-vmax, vmax=vmax))
        frames.append(map_rows(tok, series=s.key, run=run.name, panel="token", correlation=np.nan))
        if pe is None:
            notes.append(f"run {run.name!r} adds no PE in its Last LN")
            continue
        r = pearson(tok, pe)
        panels.append(dict(row=row, column="Last-LN PE", map=pe, title=f"PE, {s.label}", caption=f"r = {fmt_num(r)}",
                           vmin=-vmax, vmax=vmax))
        panels.append(dict(row=row, column="LN(x_L) + PE", map=tok + pe, title=f"sum, {s.label}", caption=None,
                           vmin=-vmax, vmax=vmax))
        frames.append(map_rows(pe, series=s.key, run=run.name, panel="pe", correlation=r))
        frames.append(map_rows(tok + pe, series=s.key, run=run.name, panel="sum", correlation=r))
        seeds = [pearson(*layer_maps(x.report, LAST, options["patch_only"])) for x in sel.runs[s.key]
                 if x.config_key == run.config_key]
        findings.append(f"{s.label}: r(LN(x_L), Last-LN PE) {interval_text(seeds)}")
    return FigureData(data=pd.concat(frames, ignore_index=True), panels=pd.DataFrame(panels), notes=notes,
                      findings=findings)


# --- Last LN gamma and beta (Fig 6) --------------------------------------------------------------------


def last_ln_by_channel(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Gamma and beta of the Last LN per channel of each series' lowest seed; per series in ``stats`` (and on
    every row of ``data``): var(beta) and the cosine of the pooled token before vs after the Last LN (metric
    ``cosine_metric``, layer -1), as mean and 95% CI over the series' seeds, beside the paper's values."""
    var_ref, cos_ref = P.FIG6_BETA_VARIANCE, P.FIG6_COSINE
    frames, stats, notes, findings = [], [], [], []
    for s in sel.present():
        run = _first(sel, s.key)
        seeds = [r for r in sel.runs[s.key] if r.config_key == run.config_key]
        var_betas, cosines = [], []
        for r in seeds:
            var_betas.append(float(np.var(last_ln_params(r.report)["beta"].to_numpy(dtype=float))))
            frame = summary_frame(r.report)
            hit = frame[(frame["metric"] == options["cosine_metric"]) & (frame["layer"] == LAST)]
            cosines.append(float(hit["value"].mean()) if len(hit) else float("nan"))
        if all(math.isnan(c) for c in cosines):
            notes.append(f"run {run.name!r}: no {options['cosine_metric']!r} metric at layer -1 in its report")
        pool = run.pe_config.get("global_pool")
        paper_cos = _paper_get(cos_ref, pool) if s.key in options["cosine_paper_series"] else float("nan")
        vb, cs = mean_interval(var_betas), mean_interval(cosines)
        row = dict(series=s.label, n_seeds=vb.n, var_beta=vb.mean, var_beta_ci_low=vb.low, var_beta_ci_high=vb.high,
                   cosine=cs.mean, cosine_ci_low=cs.low, cosine_ci_high=cs.high,
                   paper_var_beta=_paper_get(var_ref, s.key), paper_cosine=paper_cos)
        stats.append(row)
        params = last_ln_params(run.report)[["channel", "gamma", "beta"]]
        frames.append(params.assign(run=run.name, seed=run.seed, **row))
        findings.append(f"{s.label}: var(beta) {interval_text(var_betas)}, cos(before, after) {interval_text(cosines)}")
    notes.append(f"Paper: {var_ref.source}; {cos_ref.source}.")
    return FigureData(data=pd.concat(frames, ignore_index=True), stats=pd.DataFrame(stats), notes=notes,
                      findings=findings)


# --- token norms before/after the Last LN (Fig 7) ------------------------------------------------------


def token_norm_panels(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Per image and series (its lowest seed): the per-token norm map before and after the Last LN. All
    panels of a stage share one colour range (series and images are compared on it)."""
    recs, frames, notes = [], [], []
    for s in sel.present():
        run = _first(sel, s.key)
        notes += _seed_note(sel, s.key, run)
        maps = run.report.token_norm_maps()
        for stage in ("before", "after"):
            arr = np.asarray(maps[stage])
            for i in range(min(int(options["n_images"]), arr.shape[0])):
                recs.append(dict(series=s.label, stage=stage, image=i, map=arr[i]))
                frames.append(map_rows(arr[i], series=s.label, run=run.name, stage=stage, image=i))
    panels = pd.DataFrame(recs)
    findings = []
    if len(panels):
        for stage, part in panels.groupby("stage", sort=False):
            stack = np.stack(part["map"].to_list())
            panels.loc[part.index, "vmin"], panels.loc[part.index, "vmax"] = float(stack.min()), float(stack.max())
        for (series, stage), part in panels.groupby(["series", "stage"], sort=False):
            stack = np.stack(part["map"].to_list())
            spread = stack.std(axis=(1, 2)) / stack.mean(axis=(1, 2))
            findings.append(f"{series}, {stage} the Last LN: token norms {stack.mean():.3g} on average, "
                            f"relative spread over tokens {spread.mean():.2g}")
    return FigureData(data=pd.concat(frames, ignore_index=True), panels=panels, notes=notes, findings=findings)


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


# --- probing during training ---------------------------------------------------------------------------


def history_by_epoch(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """The correlation and its two parts per PE block across training epochs (``probe_history.csv``): one row
    per run (seed), epoch, layer and metric, with the mean and 95% CI over the seeds of its configuration."""
    frames = []
    for s in sel.present():
        for name, runs in _groups(sel, s.key):
            for run in runs:
                h = run.history
                h = h[h["metric"].isin(CORRELATION_METRICS) & (h["layer"] >= 0)]
                frames.append(h.assign(series=name, run=run.name, seed=run.seed))
    cols = ["series", "run", "seed", "epoch", "layer", "metric", "value"]
    data = pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
    data = with_seed_summary(data, ["series", "epoch", "layer", "metric"], "value")
    findings = []
    for name, part in data[data.metric == "tok_pe_corr"].groupby("series", sort=False):
        first, last = part.epoch.min(), part.epoch.max()
        at = lambda e: part[part.epoch == e].groupby("run")["value"].mean().tolist()  # noqa: E731
        findings.append(f"{name}: r averaged over its PE blocks at epoch {first} {interval_text(at(first))}, "
                        f"at epoch {last} {interval_text(at(last))}")
    return FigureData(data=data, findings=findings)


# --- tables --------------------------------------------------------------------------------------------


def _cell(values: Sequence[float], digits: int) -> str | float:
    """A table cell for our runs of one method and backbone: the mean, with its 95% CI and seed count when
    there are several seeds."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan")
    iv = mean_interval(vals)
    if iv.n == 1:
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}] (n={iv.n})"


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
            rows.append(dict(method=s.key, label=s.label, backbone=r.backbone, source="ours", top1=r.top1, run=r.name,
                             seed=r.seed))
    data = pd.DataFrame(rows, columns=["method", "label", "backbone", "source", "top1", "run", "seed"])
    data = with_seed_summary(data, ["method", "backbone", "source"], "top1")
    backbones = list(dict.fromkeys(list(options["backbones"]) + list(data.loc[data.source == "ours", "backbone"])))
    table = pd.DataFrame({"method": [s.label for s in sel.series]})
    for bb in backbones:
        for source in ("paper", "ours"):
            part = data[(data.backbone == bb) & (data.source == source)]
            if part.empty:
                continue
            table[f"{bb} {source}"] = [_cell(part.loc[part.method == s.key, "top1"].tolist(), digits)
                                       for s in sel.series]
    return FigureData(data=data, table=table,
                      footnote=f"Paper: {ref.source}. Ours: top-1 % from each run's summary.json; with several "
                               "seeds, the mean [95% CI] (n seeds).")


def _lookup_or_none(run: RunResult, name: str) -> Any:
    try:
        return run.lookup(name)
    except KeyError:
        return None


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _yes_no(v: Any) -> Any:
    return {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v


def ablation_table(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """One row per run (seed), grouped by the query's ``[group] by`` fields (``sel.group_by``), with the mean and
    95% CI over the seeds of its combination and the paper's value for it; combinations the paper reports but
    no run has are appended (``paper_rows``). The table shows one line per combination."""
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
            rows.append({**dict(zip(by, values)), "backbone": r.backbone, "run": r.name, "seed": r.seed,
                         "top1": r.top1, "paper_top1": paper_value(values)})
    if ref is not None and options["paper_rows"]:
        for key in ref:
            values = key if isinstance(key, tuple) else (key,)
            if values not in seen:
                rows.append({**dict(zip(by, values)), "backbone": "(paper only)", "run": None, "seed": None,
                             "top1": float("nan"), "paper_top1": paper_value(values)})
    data = pd.DataFrame(rows, columns=[*by, "backbone", "run", "seed", "top1", "paper_top1"])
    data = with_seed_summary(data, [*by, "backbone"], "top1")
    shown = []
    for key, part in data.groupby([*by, "backbone"], dropna=False, sort=False):
        cells = {f: ("none" if _missing(v) else _yes_no(v)) for f, v in zip(by, key[:-1])}
        shown.append({**cells, "backbone": key[-1], "ours top-1": _cell(part["top1"].tolist(), options["digits"]),
                      "paper top-1": part["paper_top1"].iloc[0]})
    shown = pd.DataFrame(shown, columns=[*by, "backbone", "ours top-1", "paper top-1"])
    footnote = (f"Paper: {ref.source}." + (f" {ref.notes}" if ref.notes else "")) if ref is not None else ""
    return FigureData(data=data, table=shown, footnote=footnote)


# --- causal tests of the PE: ablation and attribution per site -----------------------------------------


def _depth(run: RunResult, frame: pd.DataFrame) -> int:
    """The run's number of blocks: from the frame's attrs, the config or the report, else past its last block."""
    for value in (frame.attrs.get("depth"), run.fields().get("depth"),
                  (run.report.meta.get("depth") if run.report is not None else None)):
        if value is not None:
            return int(value)
    blocks = frame.loc[frame["layer"] >= 0, "layer"]
    return int(blocks.max()) + 1 if len(blocks) else 0


def site_position(layer: int, depth: int) -> int:
    """Where a PE site goes on an axis in forward order: the input at -1, block i at i, the Last LN at ``depth``."""
    return {INPUT: -1, LAST: depth}.get(int(layer), int(layer))


def _site_rows(sel: Selection, frame_of, keep, value_cols: Sequence[str]) -> pd.DataFrame:
    """One row per run (seed) and PE site of the frames ``frame_of(run)`` (filtered by ``keep``), with the site's
    ``position`` (:func:`site_position`) and ``site`` label, grouped by configuration (``series``)."""
    rows = []
    for s in sel.present():
        for name, runs in _groups(sel, s.key):
            for run in runs:
                frame = frame_of(run)
                depth = _depth(run, frame)
                for rec in frame[keep(frame)].to_dict("records"):
                    rows.append(dict(series=name, run=run.name, seed=run.seed, hook=rec["site"], layer=int(rec["layer"]),
                                     position=site_position(rec["layer"], depth), site=layer_label(int(rec["layer"])),
                                     **{c: rec[c] for c in value_cols}))
    return pd.DataFrame(rows, columns=["series", "run", "seed", "hook", "layer", "position", "site", *value_cols])


def ablation_by_layer(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """The effect of ablating each PE site (``RUN/ablation.csv``): metric ``options["metric"]`` per run (seed),
    site and intervention (``options["interventions"]``), with the mean and 95% CI over the seeds of its
    configuration; sites in forward order (``position``: input -1, block i, Last LN at the depth)."""
    metric, kinds = options["metric"], list(options["interventions"])
    data = _site_rows(sel, lambda r: r.ablation,
                      lambda f: (f["metric"] == metric) & f["intervention"].isin(kinds), ["intervention", "metric", "value"])
    data = with_seed_summary(data, ["series", "hook", "intervention"], "value")
    findings, notes = [], []
    lowest = metric in ("agree", "top1")  # the largest effect: the lowest agreement or accuracy, the highest KL
    for name, part in data.groupby("series", sort=False):
        cells = []
        for kind in kinds:
            sub = part[part["intervention"] == kind]
            if not len(sub):
                continue
            means = sub.groupby("hook", sort=False)["value"].mean()
            hook = means.idxmin() if lowest else means.idxmax()
            site = sub.loc[sub["hook"] == hook, "site"].iloc[0]
            cells.append(f"{kind} at {site} {interval_text(sub.loc[sub['hook'] == hook, 'value'].tolist())}")
        if cells:
            findings.append(f"{name}: largest effect on {metric}: " + "; ".join(cells))
    n = sorted({int(r.ablation.attrs["n_images"]) for s in sel.present() for r in sel.runs[s.key]
                if "n_images" in r.ablation.attrs})
    if n:
        notes.append(f"Ablations over {'/'.join(map(str, n))} validation images per run.")
    return FigureData(data=data, findings=findings, notes=notes)


def attribution_by_layer(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """The share of the attribution that goes to the PE at each PE site (``RUN/attribution.csv``:
    ``pe_share = sum |attr_pe| / (sum |attr_pe| + sum |attr_tok|)``) and captum's relative convergence delta
    (``rel_delta``), per run (seed) and site, with the mean and 95% CI over the seeds of its configuration."""
    metrics = ["pe_share", "rel_delta"]
    data = _site_rows(sel, lambda r: r.attribution, lambda f: f["metric"].isin(metrics), ["metric", "value"])
    data = with_seed_summary(data, ["series", "hook", "metric"], "value")
    findings, notes = [], []
    for name, part in data[data["metric"] == "pe_share"].groupby("series", sort=False):
        cells = [f"{part.loc[part['hook'] == h, 'site'].iloc[0]} {interval_text(part.loc[part['hook'] == h, 'value'].tolist())}"
                 for h in dict.fromkeys(part["hook"])]
        findings.append(f"{name}: PE share " + ", ".join(cells))
    bad = data[(data["metric"] == "rel_delta") & (data["value"] > float(options["max_rel_delta"]))]
    for (name, site), part in bad.groupby(["series", "site"], sort=False):
        notes.append(f"{name}, {site}: captum's relative delta up to {part['value'].max():.2g} (> "
                     f"{options['max_rel_delta']}): the attributions there are not complete (docs/causal.md).")
    attrs = [r.attribution.attrs for s in sel.present() for r in sel.runs[s.key]]
    facts = {k: sorted({str(a[k]) for a in attrs if a.get(k) is not None}) for k in ("baseline", "tokens", "target",
                                                                                     "n_steps", "n_images")}
    if any(facts.values()):
        notes.append("Attribution: " + ", ".join(f"{k} {'/'.join(v)}" for k, v in facts.items() if v) + ".")
    return FigureData(data=data, findings=findings, notes=notes)
