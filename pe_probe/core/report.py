"""``ProbeReport``: the statistics one probe run produced (metadata + float64 arrays), saved atomically.

This is the container only: the numbers derived from it (correlations, alignments, Last-LN statistics,
the tidy frame) are computed by :mod:`pe_probe.analysis` (e.g. ``pe_probe.analysis.summary_frame(report)``).
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError, UnknownNameError
from .hook_points import LAST
from .io import json_default, atomic_path, write_json, write_text
from .locks import folder_lock

META_FILE, FRAME_FILE, ARRAYS_FILE = "meta.json", "metrics.csv", "arrays.npz"
#: Key of the report id inside ``arrays.npz`` (the same id is ``meta["report_id"]``).
ID_KEY = "report_id"

#: Version of the saved report layout. :meth:`ProbeReport.save` stamps it into ``meta.json``; :meth:`ProbeReport.load`
#: refuses, in one line, a report without it (written before PE families: probe again; ``probe_run`` does so
#: by itself) or with a newer one. History: 2 adds ``family``, ``pe_kind``, ``pe_sites``, ``last_ln``
#: (models without a Last LN have no Last-LN arrays) and per-layer arrays of varying shape for hierarchical
#: families.
SCHEMA_VERSION = 2
SCHEMA_KEY = "schema_version"

#: Metadata keys every report has (docs/probe.md).
META_KEYS = ("run", "model", "pe_mode", "global_pool", "num_prefix_tokens", "grid", "depth", "embed_dim",
             "n_images", "pe_derived", "receiving_blocks", "last_ln_pe")


#: Components of the residual stream read through the frozen Last LN, in the order of the ``logit_parts`` array
#: (docs/probe.md, "Position per layer"): the additive input PE, the rest of the stream, the Last LN's beta and
#: the PE added after the Last LN (MPVG).
LOGIT_COMPONENTS = ("pe", "rest", "ln_beta", "last_pe")


class ProbeReport:
    """Probe statistics of one model over one data set (docs/probe.md).

    ``meta``: JSON-able metadata (:data:`META_KEYS` and more). ``arrays``: float64 numpy arrays keyed
    ``"{name}@{layer}"`` (``tok_map``, ``pe_map``, ``tok_norm``, ``resid_norm``, ``pe_norm``, ``tok_pe_cos``,
    ``corr_img``, ``cos_moments``; layer -1 is the Last LN) plus ``out_norm@-1``, ``last_cos``,
    ``last_cos_ln``, ``norm_before``, ``norm_after``, ``last_ln_gamma``, ``last_ln_beta`` and ``pos_embed``.
    """

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise ValueError(f"ProbeReport meta lacks {missing}")
        self.meta = dict(meta)
        self.arrays = {k: np.asarray(v) for k, v in arrays.items() if k != ID_KEY}

    # ------------------------------------------------------------------ the shared result-container interface
    @property
    def pe_kind(self) -> str:
        """The main PE kind of the model's family (``meta["pe_kind"]``; ``absolute`` / ``layerwise`` for reports
        built without one: timm or pe_probe models)."""
        return str(self.meta.get("pe_kind") or ("layerwise" if self.meta.get("adapter") == "pe" else "absolute"))

    def frame(self):
        """The tidy table of the report's per-layer statistics: columns ``site, pe_kind, layer, metric, value``
        (a pandas DataFrame, built on call: pandas is imported here, never when ``pe_probe.core`` is).

        One row per layer and stored per-layer quantity: ``tok_norm_mean``, ``resid_norm_mean`` (every model;
        ``site`` is the layer's ``hook_resid_pre``, ``pe_kind`` ``none``) and, at layers with a PE,
        ``pe_norm_mean``, ``tok_pe_cos_mean``, ``tok_pe_corr_img_mean`` (``site``: the layer's PE hook,
        ``pe_kind``: the family's). The analyses of ``pe_probe.analysis.summary_frame`` carry the same columns.
        """
        import pandas as pd

        from .hook_points import LAST_LN_IN, RESID_PRE, block_hook, pe_site_hook

        rows = []
        for l in self.layers:
            if f"tok_norm@{l}" not in self.arrays:
                continue
            stream = LAST_LN_IN if l == LAST else block_hook(l, RESID_PRE)
            rows.append((stream, "none", l, "tok_norm_mean", float(np.mean(self.arrays[f"tok_norm@{l}"]))))
            rows.append((stream, "none", l, "resid_norm_mean", float(np.mean(self.arrays[f"resid_norm@{l}"]))))
            if f"pe_map@{l}" in self.arrays:
                site, pe = pe_site_hook(l), self.arrays[f"pe_map@{l}"]
                keep = np.isfinite(pe).all(-1)
                rows.append((site, self.pe_kind, l, "pe_norm_mean", float(self.arrays[f"pe_norm@{l}"][keep].mean())))
                rows.append((site, self.pe_kind, l, "tok_pe_cos_mean", float(self.arrays[f"cos_moments@{l}"][1])))
                rows.append((site, self.pe_kind, l, "tok_pe_corr_img_mean", float(self.arrays[f"corr_img@{l}"][1])))
        return pd.DataFrame(rows, columns=["site", "pe_kind", "layer", "metric", "value"])

    def __repr__(self) -> str:
        m = self.meta
        return (f"ProbeReport(model={m['model']!r}, pe_mode={m['pe_mode']!r}, global_pool={m['global_pool']!r}, "
                f"depth={m['depth']}, n_images={m['n_images']}, pe_derived={m['pe_derived']})")

    # ------------------------------------------------------------------ views
    @property
    def layers(self) -> list[int]:
        """Block indices 0..L-1, then -1 (the Last LN, where the model has one: ``meta["last_ln"]``)."""
        return list(range(int(self.meta["depth"]))) + ([LAST] if self.meta.get("last_ln", True) else [])

    @property
    def pe_layers(self) -> list[int]:
        """The layers that have a PE (blocks that receive one, then -1 where the Last LN adds one)."""
        return [l for l in self.layers if f"pe_map@{l}" in self.arrays]

    def check_layer(self, layer: int) -> int:
        """``layer`` as an int; :class:`~pe_probe.core.errors.UnknownNameError` if the report has no such layer."""
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or int(layer) not in self.layers:
            raise UnknownNameError(f"layer={layer!r} is not a layer of this report; valid: {self.layers}")
        return int(layer)

    def mean_maps(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(token_map, pe_map)``, each (T, D), averaged over images; prefix tokens are the first rows.

        ``pe_map`` is None where the layer receives no PE; for layer -1 the token map is mean ``LN(x_L)`` and
        the PE map the Last-LN PE (or None). Derived PEs have NaN rows for prefix tokens without a PE row.
        """
        layer = self.check_layer(layer)
        return self.arrays[f"tok_map@{layer}"], self.arrays.get(f"pe_map@{layer}")

    def token_norm_maps(self) -> dict[str, np.ndarray]:
        """``{"before": (K, h, w), "after": (K, h, w)}``: per-token norms of ``x_L`` and of the Last-LN output
        (with the PE where the model adds one), patch tokens only, for the first K probed images."""
        return {"before": self.arrays["norm_before"], "after": self.arrays["norm_after"]}

    # ------------------------------------------------------------------ identity and persistence
    def report_id(self) -> str:
        """A content hash of ``meta`` (without its ``report_id``) and every array: equal reports, equal ids."""
        h = hashlib.sha256()
        meta = {k: v for k, v in self.meta.items() if k != ID_KEY}
        meta = json.loads(json.dumps(meta, default=json_default))  # as meta.json holds it (numpy scalars: numbers)
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        for key in sorted(self.arrays):
            arr = np.ascontiguousarray(self.arrays[key])
            h.update(key.encode())
            h.update(str((arr.dtype.str, arr.shape)).encode())
            h.update(arr.tobytes())
        return h.hexdigest()[:16]

    def save(self, directory: str | os.PathLike, frame=None) -> Path:
        """Write ``arrays.npz``, then ``metrics.csv`` (the tidy ``frame``, when given) and ``meta.json`` into
        ``directory``, each atomically, holding the folder's lock (:func:`~pe_probe.core.locks.folder_lock`).

        ``meta.json`` is written last and both it and ``arrays.npz`` carry the report id, so a folder whose
        writing was interrupted (new arrays beside an old meta) is detected by :meth:`load`.
        ``pe_probe.analysis.save_report`` passes the tidy frame of ``summary_frame``.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        self.meta.setdefault(SCHEMA_KEY, SCHEMA_VERSION)
        rid = self.report_id()
        with folder_lock(directory):  # one writer (free when the caller holds it already)
            with atomic_path(directory / ARRAYS_FILE) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **self.arrays, **{ID_KEY: np.array(rid)})
            if frame is not None:
                write_text(directory / FRAME_FILE, frame.to_csv(index=False))
            elif (directory / FRAME_FILE).exists():
                (directory / FRAME_FILE).unlink()  # never leave the table of another report beside these arrays
            self.meta[ID_KEY] = rid
            write_json(directory / META_FILE, self.meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ProbeReport":
        """Read a report written by :meth:`save` (no pickle).

        Raises :class:`~pe_probe.core.errors.DataError` when a file is missing or unreadable, when
        ``meta.json`` and ``arrays.npz`` come from different reports, when their contents no longer hash to the
        report id they carry (edited or damaged: wrong types in ``meta.json``, arrays of other shapes), or when a
        metadata entry has the wrong JSON type.
        """
        directory = Path(directory)
        for name in (META_FILE, ARRAYS_FILE):
            if not (directory / name).is_file():
                raise DataError(f"{directory} is not a probe report: {name} is missing")
        try:
            meta = json.loads((directory / META_FILE).read_text())
            with np.load(directory / ARRAYS_FILE, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, UnicodeDecodeError, EOFError, zipfile.BadZipFile) as exc:  # a truncated npz
            raise DataError(f"{directory}: probe report is unreadable ({type(exc).__name__}: {exc})") from None
        if not isinstance(meta, dict):
            raise DataError(f"{directory / META_FILE} is not a JSON object")
        version = meta.get(SCHEMA_KEY)
        if version != SCHEMA_VERSION:
            raise DataError(f"{directory}: probe report of schema {version or 1}, this pe_probe reads schema "
                            f"{SCHEMA_VERSION}; " + ("probe again" if not isinstance(version, int) or version < SCHEMA_VERSION
                                                    else "upgrade pe_probe to read it"))
        stored = str(arrays[ID_KEY]) if ID_KEY in arrays else None
        if stored is not None and meta.get(ID_KEY) != stored:
            raise DataError(f"{directory}: meta.json (report {meta.get(ID_KEY)}) and arrays.npz (report {stored}) "
                            "come from different probe runs; probe again")
        try:
            report = cls(meta, arrays)
        except ValueError as exc:
            raise DataError(f"{directory}: {exc}") from None
        if stored is None or report.report_id() != stored:
            raise DataError(f"{directory}: meta.json and arrays.npz do not hash to their report id "
                            f"{stored or '(none)'} (edited or damaged); probe again")
        for key, (test, what) in _META_TYPES.items():
            if not test(meta[key]):
                raise DataError(f"{directory / META_FILE}: {key} must be {what}, got {meta[key]!r}; probe again")
        return report


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: The JSON types of the metadata the analyses compute with (checked by :meth:`ProbeReport.load`).
_META_TYPES = {
    "depth": (_is_int, "an integer"),
    "embed_dim": (_is_int, "an integer"),
    "n_images": (_is_int, "an integer"),
    "num_prefix_tokens": (_is_int, "an integer"),
    "grid": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_int, v)), "a list of two integers"),
    "receiving_blocks": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integers"),
    "pe_derived": (lambda v: isinstance(v, bool), "true or false"),
}
