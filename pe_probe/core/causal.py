"""The nouns of the causal analyses (ablation and attribution of the PE), defined once and torch-free.

The torch floor (:mod:`pe_probe.probing.ablation`, :mod:`pe_probe.probing.attribution`) fills an
:class:`AblationResult` / :class:`AttributionResult` with plain rows, and ``pe_probe.ablate`` /
``pe_probe.attribute`` return them: ``.meta``, ``.frame()`` (tidy, built on call), ``.save(dir)``, ``.load(dir)``.

A *site* is one place where a PE term enters the network, named by the hook on that term (column ``site``),
its PE kind (``pe_kind``, :data:`~pe_probe.core.hook_points.PE_KINDS`) and a ``layer`` (:func:`pe_probe.core.hook_points.pe_site_hook`): the input (``hook_input_pe``, layer
:data:`~pe_probe.core.hook_points.INPUT` = -2), block ``i`` (``blocks.{i}.hook_pe``, layer ``i``) and the Last
LN (``hook_last_pe``, layer :data:`~pe_probe.core.hook_points.LAST` = -1).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .io import atomic_path, write_json

#: What replaces a site's PE: all rows 0; every patch row the mean patch row; the patch rows permuted.
INTERVENTIONS = ("zero", "mean", "shuffle")
#: ``direct``: only the term added at the site changes; ``total``: the change also reaches every later reader
#: of that PE (the next blocks' PE chain, the Last LN).
EFFECTS = ("direct", "total")
#: The PE an attribution path starts from: zeros, or the row mean (the PE without its position information).
BASELINES = ("zero", "mean")
#: The token term an attribution path starts from: zeros, or the intact tokens (only the PE moves).
TOKEN_BASELINES = ("zero", "keep")

#: Columns of an ablation frame (and of ``ablation.csv``).
ABLATION_COLUMNS = ("site", "pe_kind", "layer", "intervention", "metric", "value")
#: Columns of an attribution frame (and of ``attribution.csv``).
ATTRIBUTION_COLUMNS = ("site", "pe_kind", "layer", "metric", "value")
#: Ablation metrics: accuracy on labelled data, agreement with the intact model's prediction, mean KL divergence.
ABLATION_METRICS = ("top1", "agree", "kl")
#: Attribution metrics, per site (docs/causal.md).
ATTRIBUTION_METRICS = ("pe_attr", "tok_attr", "pe_abs", "tok_abs", "pe_share", "fdiff", "delta_abs_mean",
                       "delta_abs_max", "rel_delta")

#: File names, in a run directory (:class:`~pe_probe.core.rundir.RunDir`) or a ``--out`` folder: the rows (CSV)
#: and what was run (JSON: the frame's ``attrs``; for attribution also the per-token maps).
ABLATION_CSV, ABLATION_JSON = "ablation.csv", "ablation.json"
ATTRIBUTION_CSV, ATTRIBUTION_JSON = "attribution.csv", "attribution.json"


#: Version of the saved ablation / attribution layout (``schema_version`` in their JSON). 2: the columns
#: ``site`` (was ``hook``) and ``pe_kind``. A saved result of another schema is refused in one line by
#: :meth:`AblationResult.load` / :meth:`AttributionResult.load` (the per-run caches are then measured again).
RESULT_SCHEMA_VERSION = 2


def write_rows(path: Path, columns: tuple[str, ...], rows: list) -> None:
    """``rows`` as CSV with the header ``columns`` (floats in full precision: ``repr``) into ``path``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([repr(float(v)) if isinstance(v, float) else v for v in r])
    Path(path).write_text(buf.getvalue())


class _Result:
    """What ablation and attribution results share: ``rows`` (tuples in the order of :attr:`COLUMNS`), ``meta``
    (JSON-able: what was run), a tidy frame built on request, and a CSV + JSON pair on disk."""

    COLUMNS: tuple[str, ...] = ()
    CSV = JSON = ""
    KIND = ""

    rows: list
    meta: dict[str, Any]

    def frame(self):
        """The rows as a tidy pandas DataFrame with :attr:`COLUMNS` (built on each call, no ``attrs``: what was
        run is :attr:`meta`). pandas is imported here, never when ``pe_probe.core`` is."""
        import pandas as pd

        frame = pd.DataFrame([tuple(r) for r in self.rows], columns=list(self.COLUMNS))
        return frame.astype({"layer": "int64", "value": "float64"})

    @property
    def sites(self) -> list[str]:
        """The sites in forward order, as the rows give them."""
        return list(dict.fromkeys(r[0] for r in self.rows))

    def _extra_json(self) -> dict[str, Any]:
        return {}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<name>.csv`` (the rows) and ``<name>.json`` (``meta`` plus ``schema_version``) into
        ``directory``, both to temporary names renamed only when both are complete (an error leaves the
        previous pair as it was). Returns the CSV's path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "schema_version": RESULT_SCHEMA_VERSION, **self._extra_json()}
        with atomic_path(out / self.JSON) as tmp_json, atomic_path(out / self.CSV) as tmp_csv:
            write_json(tmp_json, meta)
            write_rows(tmp_csv, self.COLUMNS, self.rows)
        return out / self.CSV

    @classmethod
    def _read(cls, directory: str | os.PathLike) -> tuple[list, dict]:
        folder = Path(directory)
        csv_path, json_path = folder / cls.CSV, folder / cls.JSON
        try:
            meta = json.loads(json_path.read_text()) if json_path.is_file() else {}
            text = csv_path.read_text()
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot read the {cls.KIND} in {folder}: {type(exc).__name__}: {exc}") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{json_path} is not a JSON object")
        lines = list(csv.reader(io.StringIO(text)))
        header = lines[0] if lines else []
        version = meta.get("schema_version")
        if tuple(header) != cls.COLUMNS or version not in (None, RESULT_SCHEMA_VERSION):
            raise CheckpointError(f"{csv_path}: {cls.KIND} of schema {version or 1} (columns {header}); this "
                                  f"pe_probe reads schema {RESULT_SCHEMA_VERSION} ({list(cls.COLUMNS)}): measure it again")
        rows = []
        for i, line in enumerate(lines[1:], start=2):
            try:
                rows.append(tuple(int(v) if c == "layer" else float(v) if c == "value" else v
                                  for c, v in zip(cls.COLUMNS, line, strict=True)))
            except ValueError as exc:
                raise CheckpointError(f"{csv_path}, line {i}: {exc}") from None
        meta.pop("schema_version", None)
        return rows, meta


@dataclass
class AblationResult(_Result):
    """What :func:`pe_probe.ablate` returns: rows ``(site, pe_kind, layer, intervention, metric, value)`` in forward
    order of the sites, and ``meta``: what was run and measured besides (``n_images``, ``intact_top1``, ``effect``,
    ``seed``, ``shuffle_perm``, ``cost``, ``family``, ...). :meth:`frame` gives the tidy DataFrame; :meth:`save` /
    :meth:`load` the ``ablation.csv`` + ``ablation.json`` pair."""

    rows: list[tuple[str, str, int, str, str, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    COLUMNS = ABLATION_COLUMNS
    CSV, JSON, KIND = ABLATION_CSV, ABLATION_JSON, "ablation"

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "AblationResult":
        """The result :meth:`save` wrote to ``directory``; :class:`~pe_probe.core.errors.CheckpointError` in one
        line for a missing, corrupt or old-schema pair."""
        rows, meta = cls._read(directory)
        return cls(rows, meta)


@dataclass
class AttributionResult(_Result):
    """What :func:`pe_probe.attribute` returns: rows ``(site, pe_kind, layer, metric, value)`` per site, ``meta``
    (``n_images``, ``n_steps``, ``baseline``, ...), and per site the per-token attribution maps of the first
    images on the patch grid, ``(K, h, w)`` arrays summed over channels: ``pe_maps`` (to the PE) and ``tok_maps``
    (to the tokens). :meth:`frame`, :meth:`save` and :meth:`load` as for :class:`AblationResult` (the maps go into
    ``attribution.json``)."""

    rows: list[tuple[str, str, int, str, float]]
    meta: dict[str, Any] = field(default_factory=dict)
    pe_maps: dict[str, np.ndarray] = field(default_factory=dict)
    tok_maps: dict[str, np.ndarray] = field(default_factory=dict)

    COLUMNS = ATTRIBUTION_COLUMNS
    CSV, JSON, KIND = ATTRIBUTION_CSV, ATTRIBUTION_JSON, "attribution"

    def _extra_json(self) -> dict[str, Any]:
        return {"pe_maps": {k: np.asarray(v).tolist() for k, v in self.pe_maps.items()},
                "tok_maps": {k: np.asarray(v).tolist() for k, v in self.tok_maps.items()}}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "AttributionResult":
        """The result :meth:`save` wrote to ``directory`` (maps included); one-line
        :class:`~pe_probe.core.errors.CheckpointError` otherwise."""
        rows, meta = cls._read(directory)
        maps = {k: {h: np.asarray(v, dtype=float) for h, v in (meta.pop(k, None) or {}).items()}
                for k in ("pe_maps", "tok_maps")}
        return cls(rows, meta, maps["pe_maps"], maps["tok_maps"])
