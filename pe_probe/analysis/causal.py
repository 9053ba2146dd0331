"""The causal analyses as tidy frames: ablation and attribution results in, DataFrames and files out.

The torch floor measures (:class:`~pe_probe.core.causal.AblationResult`,
:class:`~pe_probe.core.causal.AttributionResult`); this module lays the rows out as frames whose ``attrs`` hold
what was run, and writes / reads them as ``<name>.csv`` (the rows) + ``<name>.json`` (the attrs, and the
attribution maps), the two renamed into place together. No torch, no matplotlib.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.causal import (ABLATION_COLUMNS, ABLATION_CSV, ABLATION_JSON, ATTRIBUTION_COLUMNS, ATTRIBUTION_CSV,
                           ATTRIBUTION_JSON, ATTRIBUTION_SUMMARY, AblationResult, AttributionResult)
from ..core.errors import CheckpointError
from ..core.io import atomic_path, write_json


@dataclass
class Attribution:
    """What :func:`pe_probe.attribute` returns: ``frame`` (``hook, layer, metric, value``; ``frame.attrs``: what was
    run, also :attr:`meta`) and per site the per-token attribution maps of the first images, ``(K, h, w)``
    arrays on the patch grid: ``pe_maps`` (to the PE) and ``tok_maps`` (to the tokens)."""

    frame: pd.DataFrame
    pe_maps: dict[str, np.ndarray] = field(default_factory=dict)
    tok_maps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        """What was run and measured besides the rows (``n_images``, ``n_steps``, ``baseline``, ``cost``, ...)."""
        return self.frame.attrs


def ablation_frame(result: AblationResult) -> pd.DataFrame:
    """The tidy frame ``hook, layer, intervention, metric, value`` of an ablation (``attrs``: its meta)."""
    frame = pd.DataFrame(result.rows, columns=list(ABLATION_COLUMNS))
    frame.attrs.update(result.meta)
    return frame


def attribution_of(result: AttributionResult) -> Attribution:
    """The :class:`Attribution` of a result: its tidy frame ``hook, layer, metric, value`` and its maps."""
    frame = pd.DataFrame(result.rows, columns=list(ATTRIBUTION_COLUMNS))
    frame.attrs.update(result.meta)
    return Attribution(frame, dict(result.pe_maps), dict(result.tok_maps))


def site_table(frame: pd.DataFrame, metrics: tuple[str, ...] | list[str] = ATTRIBUTION_SUMMARY, *,
               by: str | None = None) -> pd.DataFrame:
    """One row per site (``layer``, ``hook``, in the frame's order) and one column per metric of a tidy ablation or
    attribution frame; with ``by`` (``"intervention"`` for an ablation) one column per ``(by, metric)`` pair,
    flattened to ``"<value> <metric>"``. Only the sites the frame holds (no empty layer x hook cells)."""
    keep = frame[frame["metric"].isin(list(metrics))]
    sites = list(dict.fromkeys(zip(keep["layer"], keep["hook"])))
    columns = ["metric"] if by is None else [by, "metric"]
    wide = keep.pivot_table(index=["layer", "hook"], columns=columns, values="value", sort=False, aggfunc="first")
    wide = wide.reindex(pd.MultiIndex.from_tuples(sites, names=["layer", "hook"]))
    if by is None:
        wide = wide[[m for m in metrics if m in wide.columns]]
    else:
        wide.columns = [f"{a} {b}" for a, b in wide.columns]
    wide.columns.name = None
    return wide.reset_index()


def _save(out: Path, json_name: str, meta: dict, csv_name: str, frame: pd.DataFrame) -> Path:
    """Both files written to temporary names and renamed only when both are complete (CSV, then JSON): an
    error leaves the previous pair as it was."""
    with atomic_path(out / json_name) as tmp_json, atomic_path(out / csv_name) as tmp_csv:
        write_json(tmp_json, meta)
        tmp_csv.write_text(frame.to_csv(index=False))
    return out / csv_name


def save_ablation(frame: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write ``out/ablation.csv`` (the rows) and ``out/ablation.json`` (the attrs) atomically, as a pair.
    Returns the CSV's path."""
    return _save(Path(out), ABLATION_JSON, dict(frame.attrs), ABLATION_CSV, frame[list(ABLATION_COLUMNS)])


def save_attribution(attribution: Attribution, out: str | os.PathLike) -> Path:
    """Write ``out/attribution.csv`` (the rows) and ``out/attribution.json`` (the attrs, plus ``pe_maps`` /
    ``tok_maps`` as nested lists) atomically, as a pair. Returns the CSV's path."""
    maps = {"pe_maps": {k: np.asarray(v).tolist() for k, v in attribution.pe_maps.items()},
            "tok_maps": {k: np.asarray(v).tolist() for k, v in attribution.tok_maps.items()}}
    return _save(Path(out), ATTRIBUTION_JSON, {**dict(attribution.frame.attrs), **maps}, ATTRIBUTION_CSV,
                 attribution.frame[list(ATTRIBUTION_COLUMNS)])


def _read(csv: Path, meta: Path, columns: tuple[str, ...]) -> tuple[pd.DataFrame, dict]:
    try:
        frame = pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CheckpointError(f"cannot read {csv}: {exc}") from None
    if list(frame.columns) != list(columns):
        raise CheckpointError(f"{csv} has columns {list(frame.columns)}, expected {list(columns)}")
    attrs: dict = {}
    if meta.is_file():
        try:
            attrs = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{meta} is corrupt: {exc}") from None
    frame["layer"] = frame["layer"].astype(int)
    return frame, attrs


def read_ablation(folder: str | os.PathLike) -> pd.DataFrame:
    """The frame :func:`save_ablation` wrote to ``folder`` (``attrs`` from the JSON when present)."""
    frame, attrs = _read(Path(folder) / ABLATION_CSV, Path(folder) / ABLATION_JSON, ABLATION_COLUMNS)
    frame.attrs.update(attrs)
    return frame


def read_attribution(folder: str | os.PathLike) -> Attribution:
    """The :class:`Attribution` :func:`save_attribution` wrote to ``folder``."""
    frame, attrs = _read(Path(folder) / ATTRIBUTION_CSV, Path(folder) / ATTRIBUTION_JSON, ATTRIBUTION_COLUMNS)
    maps = {k: {h: np.asarray(v, dtype=float) for h, v in (attrs.pop(k, None) or {}).items()}
            for k in ("pe_maps", "tok_maps")}
    frame.attrs.update(attrs)
    return Attribution(frame, maps["pe_maps"], maps["tok_maps"])
