"""Probing during training: the probe history of a run (``RUN/probe_history.csv``), recorded by the epoch
callback :class:`ProbeHistory` that :func:`pe_probe.train` (:mod:`pe_probe.pipeline.training`) adds.

The training loop (torch floor) only calls back at the end of an epoch; the metrics of each probe are the
analysis floor's (:func:`pe_probe.analysis.summary_frame`), so the callback lives here, above both.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
from torch import nn

from ..analysis import summary_frame
from ..core.io import write_text
from ..core.rundir import RunDir
from ..probing import probe

#: Columns of ``probe_history.csv``.
HISTORY_COLUMNS = ["epoch", "layer", "metric", "value"]


class ProbeHistory:
    """An epoch callback that probes the first ``images`` validation images after every ``every`` epochs (and
    after the last) and records every report metric in ``RUN/probe_history.csv``.

    The images are those ``pe-probe probe RUN --max-images images`` streams (the run's data set by name, its
    normalization). The file is rewritten atomically; rows of the epoch being recorded are replaced, so a run
    resumed after a kill never holds an epoch twice.
    """

    def __init__(self, every: int, images: int) -> None:
        for name, value in (("probe_every", every), ("probe_images", images)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        self.every, self.images = every, images

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether ``epoch`` (1-based) is probed."""
        return epoch % self.every == 0 or epoch == epochs

    def __call__(self, *, model: nn.Module, epoch: int, epochs: int, run: RunDir, config: dict, **_: Any) -> None:
        if not self.due(epoch, epochs):
            return
        data = config["data"]
        report = probe(model, data["dataset"], data_dir=data.get("data_dir"), mean=data.get("mean"),
                       std=data.get("std"), max_images=self.images, run=run.name, progress=False, trained_on=data)
        rows = summary_frame(report)[["layer", "metric", "value"]].assign(epoch=epoch)[HISTORY_COLUMNS]
        old = read_history(run)
        if old is not None:
            rows = pd.concat([old[old["epoch"] != epoch], rows], ignore_index=True)
        buf = io.StringIO()
        rows.sort_values(["epoch"], kind="stable").to_csv(buf, index=False)
        write_text(run.probe_history_path, buf.getvalue())


def read_history(run: RunDir) -> pd.DataFrame | None:
    """``probe_history.csv`` of ``run``, or None when it has none."""
    path = run.probe_history_path
    return pd.read_csv(path) if path.is_file() else None
