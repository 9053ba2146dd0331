"""``ProbeReport``: the statistics one probe run produced, with metadata, analyses and atomic save/load."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, UnknownNameError
from ..io import atomic_path, write_json, write_text
from . import metrics

META_FILE, FRAME_FILE, ARRAYS_FILE = "meta.json", "metrics.csv", "arrays.npz"

#: Metadata keys every report has (docs/contracts.md).
META_KEYS = ("run", "model", "pe_mode", "global_pool", "num_prefix_tokens", "grid", "depth", "embed_dim",
             "n_images", "pe_derived", "receiving_blocks", "last_ln_pe")


class ProbeReport:
    """Probe statistics of one model over one data set (see docs/contracts.md and docs/probe.md).

    ``meta``: JSON-able metadata. ``arrays``: float64 numpy arrays keyed ``"{name}@{layer}"``
    (``tok_map``, ``pe_map``, ``tok_norm``, ``resid_norm``, ``pe_norm``, ``tok_pe_cos``, ``corr_img``,
    ``cos_moments``; layer -1 is the Last LN) plus ``out_norm@-1``, ``last_cos``, ``last_cos_ln``,
    ``norm_before``, ``norm_after``, ``last_ln_gamma``, ``last_ln_beta`` and ``pos_embed``.
    """

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise ValueError(f"ProbeReport meta lacks {missing}")
        self.meta = dict(meta)
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}

    def __repr__(self) -> str:
        m = self.meta
        return (f"ProbeReport(model={m['model']!r}, pe_mode={m['pe_mode']!r}, global_pool={m['global_pool']!r}, "
                f"depth={m['depth']}, n_images={m['n_images']}, pe_derived={m['pe_derived']})")

    # ------------------------------------------------------------------ views
    @property
    def layers(self) -> list[int]:
        """Block indices 0..L-1, then -1 (the Last LN)."""
        return list(range(int(self.meta["depth"]))) + [metrics.LAST]

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or int(layer) not in self.layers:
            raise UnknownNameError(f"layer={layer!r} is not a layer of this report; valid: {self.layers}")
        return int(layer)

    def to_frame(self) -> pd.DataFrame:
        """Long DataFrame ``run, model, pe_mode, global_pool, layer, metric, value`` (layer -1 = Last LN)."""
        return metrics.summary_frame(self)

    def mean_maps(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(token_map, pe_map)``, each (T, D), averaged over images; prefix tokens are the first rows.

        ``pe_map`` is None where the layer receives no PE; for layer -1 the token map is mean ``LN(x_L)`` and
        the PE map the Last-LN PE (or None). Derived PEs have NaN rows for prefix tokens without a PE row.
        """
        layer = self._check_layer(layer)
        return self.arrays[f"tok_map@{layer}"], self.arrays.get(f"pe_map@{layer}")

    def pe_similarity(self, layer: int) -> np.ndarray:
        """(N, N) cosine similarity between the patch-token rows of the layer's PE (ValueError if none)."""
        return metrics.pe_similarity_matrix(self, self._check_layer(layer))

    def last_ln_params(self) -> pd.DataFrame:
        """``DataFrame[channel, gamma, beta]`` of the Last LN."""
        return metrics.last_ln_params(self)

    def token_norm_maps(self) -> dict[str, np.ndarray]:
        """``{"before": (K, h, w), "after": (K, h, w)}``: per-token norms of ``x_L`` and of the Last-LN output
        (with the PE where the model adds one), patch tokens only, for the first K probed images."""
        return {"before": self.arrays["norm_before"], "after": self.arrays["norm_after"]}

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``arrays.npz``, ``metrics.csv`` (``to_frame()``) and ``meta.json`` into ``directory``.

        Each file is written atomically; ``meta.json`` is written last, so a directory with it is complete.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / ARRAYS_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **self.arrays)
        buf = io.StringIO()
        self.to_frame().to_csv(buf, index=False)
        write_text(directory / FRAME_FILE, buf.getvalue())
        write_json(directory / META_FILE, self.meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ProbeReport":
        """Read a report written by :meth:`save` (no pickle)."""
        directory = Path(directory)
        for name in (META_FILE, ARRAYS_FILE):
            if not (directory / name).is_file():
                raise DataError(f"{directory} is not a probe report: {name} is missing")
        meta = json.loads((directory / META_FILE).read_text())
        with np.load(directory / ARRAYS_FILE, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(meta, arrays)
