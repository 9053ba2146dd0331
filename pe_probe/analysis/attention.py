"""The numbers behind the attention and input-side figures (issue 20): per-layer attention statistics, patch
shuffles and resolution sweeps of every selected run, one row per run (seed) with the mean and 95% t interval
over the seeds of its configuration. No torch, no matplotlib.

Each run carries the frames its per-run caches hold (:class:`~pe_probe.analysis.runs.RunResult`):
``attention`` (``site, pe_kind, layer, head, metric, value``), ``shuffle`` (``block, metric, value``) and
``resolution`` (``img_size, site, pe_kind, layer, metric, value``; ``layer`` -3 for whole-model numbers such as
``top1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..core.attention import WHOLE_MODEL  # noqa: F401  (the layer of whole-model rows)
from . import paper as P
from .figure_data import FigureData, _groups, interval_text
from .select import Selection
from .stats import with_seed_summary


def _rows(sel: Selection, frame_of, make) -> pd.DataFrame:
    rows = []
    for s in sel.present():
        for name, runs in _groups(sel, s.key):
            for run in runs:
                frame = frame_of(run)
                if frame is None or not len(frame):
                    continue
                for rec in make(frame):
                    rows.append(dict(series=name, run=run.name, seed=run.seed, **rec))
    return pd.DataFrame(rows)


def attention_by_layer(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """An attention statistic per block (``RUN/attention.csv``): ``options["metric"]`` averaged over the heads of
    each run (seed) and block, with the mean and 95% CI over the seeds of its configuration."""
    metric = options["metric"]

    def make(frame):
        part = frame[frame["metric"] == metric]
        for layer, g in part.groupby("layer", sort=True):
            yield dict(layer=int(layer), metric=metric, value=float(g["value"].mean()), heads=int(g["head"].nunique()))

    data = _rows(sel, lambda r: r.attention, make)
    cols = ["series", "run", "seed", "layer", "metric", "value", "heads"]
    data = with_seed_summary(data.reindex(columns=cols), ["series", "layer"], "value")
    findings = []
    for name, part in data.groupby("series", sort=False):
        first, last = part["layer"].min(), part["layer"].max()
        findings.append(f"{name}: {metric} {interval_text(part.loc[part.layer == first, 'value'].tolist())} at block "
                        f"{first}, {interval_text(part.loc[part.layer == last, 'value'].tolist())} at block {last}")
    notes = []
    if not len(data):
        notes.append(f"No run has {metric} (attention.csv); the logit split exists only where a block's attention "
                     "input has an additive PE term (docs/probe.md).")
    return FigureData(data=data, findings=findings, notes=notes)


def shuffle_by_block(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """Patch-shuffle sensitivity (``RUN/shuffle.csv``): ``options["metric"]`` (``agree`` or ``top1``) per run
    (seed) and shuffle block size, with the mean and 95% CI over the seeds of its configuration."""
    metric = options["metric"]

    def make(frame):
        for rec in frame[frame["metric"] == metric].to_dict("records"):
            yield dict(block=int(rec["block"]), metric=metric, value=float(rec["value"]))

    data = _rows(sel, lambda r: r.shuffle, make)
    data = with_seed_summary(data.reindex(columns=["series", "run", "seed", "block", "metric", "value"]),
                             ["series", "block"], "value")
    findings = []
    for name, part in data.groupby("series", sort=False):
        big = part["block"].max()
        findings.append(f"{name}: {metric} {interval_text(part.loc[part.block == big, 'value'].tolist())} with "
                        f"{big}x{big}-patch blocks shuffled")
    return FigureData(data=data, findings=findings)


def resolution_by_size(sel: Selection, options: Mapping[str, Any], ref: P.Reported | None) -> FigureData:
    """A resolution sweep (``RUN/resolution.csv``): top-1 and ``options["metric"]`` (averaged over the layers
    that have it) per run (seed) and input size, with the mean and 95% CI over the seeds of its configuration;
    ``native`` marks each run's training size."""
    metrics = ["top1", options["metric"]]

    def make(frame):
        for size, g in frame.groupby("img_size", sort=True):
            for metric in metrics:
                part = g[(g["metric"] == metric) & ((g["layer"] >= 0) | (metric == "top1"))]  # blocks, not the Last LN
                if len(part):
                    yield dict(img_size=int(size), metric=metric, value=float(part["value"].mean()))

    data = _rows(sel, lambda r: r.resolution, make)
    cols = ["series", "run", "seed", "img_size", "metric", "value"]
    data = with_seed_summary(data.reindex(columns=cols), ["series", "img_size", "metric"], "value")
    native = {r.name: r.fields().get("img_size") for s in sel.present() for r in sel.runs[s.key]}
    data["native"] = [native.get(run) == size for run, size in zip(data["run"], data["img_size"])]
    findings = []
    for name, part in data[data["metric"] == "top1"].groupby("series", sort=False):
        cells = [f"{size} px {interval_text(g['value'].tolist())}" for size, g in part.groupby("img_size", sort=True)]
        findings.append(f"{name}: top-1 " + ", ".join(cells))
    return FigureData(data=data, findings=findings)
