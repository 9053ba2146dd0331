"""The causal analyses as tidy frames: ablation and attribution results in, DataFrames and files out.

The torch floor measures and ``pe_probe.ablate`` / ``pe_probe.attribute`` return the core containers
(:class:`~pe_probe.core.causal.AblationResult`, :class:`~pe_probe.core.causal.AttributionResult`: ``.meta``,
``.frame()``, ``.save``, ``.load``). This module gives the figures' data functions the per-run caches as frames
whose ``attrs`` hold the meta (:func:`read_ablation`, :func:`read_attribution`) and writes either form as
``<name>.csv`` (the rows) + ``<name>.json`` (the meta, and the attribution maps). No torch, no matplotlib.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.causal import (ABLATION_COLUMNS, ATTRIBUTION_COLUMNS, ATTRIBUTION_SUMMARY, AblationResult,
                           AttributionResult)
from ..core.errors import CheckpointError


@dataclass
class Attribution:
    """An attribution as the figures read it (:func:`attribution_of` of what :func:`pe_probe.attribute` returns, an
    :class:`~pe_probe.core.causal.AttributionResult`; :func:`read_attribution` of a saved one): ``frame``
    (``site, pe_kind, layer, metric, value``; ``frame.attrs``: what was run, also :attr:`meta`) and per site the
    per-token attribution maps of the first images, ``(K, h, w)`` arrays on the patch grid: ``pe_maps`` (to the
    PE) and ``tok_maps`` (to the tokens)."""

    frame: pd.DataFrame
    pe_maps: dict[str, np.ndarray] = field(default_factory=dict)
    tok_maps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        """What was run and measured besides the rows (``n_images``, ``n_steps``, ``baseline``, ``cost``, ...)."""
        return self.frame.attrs


def ablation_frame(result: AblationResult) -> pd.DataFrame:
    """The tidy frame ``site, pe_kind, layer, intervention, metric, value`` of an ablation (``attrs``: its meta)."""
    frame = result.frame()
    frame.attrs.update(result.meta)
    return frame


def attribution_of(result: AttributionResult) -> Attribution:
    """The :class:`Attribution` of a result: its tidy frame ``site, pe_kind, layer, metric, value`` and its maps."""
    frame = result.frame()
    frame.attrs.update(result.meta)
    return Attribution(frame, dict(result.pe_maps), dict(result.tok_maps))


def site_table(frame: pd.DataFrame, metrics: tuple[str, ...] | list[str] = ATTRIBUTION_SUMMARY, *,
               by: str | None = None) -> pd.DataFrame:
    """One row per site (``layer``, ``site`` and, where the frame has it, ``pe_kind``, in the frame's order) and one
    column per metric of a tidy ablation or attribution frame; with ``by`` (``"intervention"`` for an ablation) one
    column per ``(by, metric)`` pair, flattened to ``"<value> <metric>"``. Only the sites the frame holds (no
    empty layer x site cells)."""
    index = ["layer", "site"] + (["pe_kind"] if "pe_kind" in frame.columns else [])
    keep = frame[frame["metric"].isin(list(metrics))]
    sites = list(dict.fromkeys(zip(*(keep[c] for c in index))))
    columns = ["metric"] if by is None else [by, "metric"]
    wide = keep.pivot_table(index=index, columns=columns, values="value", sort=False, aggfunc="first", dropna=False)
    wide = wide.reindex(pd.MultiIndex.from_tuples(sites, names=index))
    if by is None:
        wide = wide[[m for m in metrics if m in wide.columns]]
    else:
        wide.columns = [f"{a} {b}" for a, b in wide.columns]
    wide.columns.name = None
    return wide.reset_index()


def _rows(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[tuple]:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CheckpointError(f"the frame lacks the columns {missing} (has {list(frame.columns)})")
    return [tuple(r) for r in frame[list(columns)].itertuples(index=False, name=None)]


def save_ablation(result: AblationResult | pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write ``out/ablation.csv`` (the rows) and ``out/ablation.json`` (the meta) atomically, as a pair
    (:meth:`~pe_probe.core.causal.AblationResult.save`). ``result``: what ``pe_probe.ablate`` returns, or a frame
    with ``ABLATION_COLUMNS`` whose ``attrs`` are the meta (as :func:`read_ablation` gives). Returns the CSV's path."""
    if isinstance(result, pd.DataFrame):
        result = AblationResult(_rows(result, ABLATION_COLUMNS), dict(result.attrs))
    return result.save(out)


def save_attribution(attribution: AttributionResult | Attribution, out: str | os.PathLike) -> Path:
    """Write ``out/attribution.csv`` (the rows) and ``out/attribution.json`` (the meta, plus ``pe_maps`` /
    ``tok_maps`` as nested lists) atomically, as a pair. Returns the CSV's path."""
    if isinstance(attribution, Attribution):
        attribution = AttributionResult(_rows(attribution.frame, ATTRIBUTION_COLUMNS), dict(attribution.frame.attrs),
                                        dict(attribution.pe_maps), dict(attribution.tok_maps))
    return attribution.save(out)


def read_ablation(folder: str | os.PathLike) -> pd.DataFrame:
    """The frame :func:`save_ablation` wrote to ``folder`` (``attrs``: its meta, for the figures' data functions);
    :class:`~pe_probe.core.errors.CheckpointError` in one line for a missing, corrupt or old-schema pair."""
    return ablation_frame(AblationResult.load(folder))


def read_attribution(folder: str | os.PathLike) -> Attribution:
    """The :class:`Attribution` :func:`save_attribution` wrote to ``folder``."""
    return attribution_of(AttributionResult.load(folder))
