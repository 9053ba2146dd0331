"""Probing during training: the probe history of a run (``RUN/probe_history.csv``) and the public ``train``
that records it.

The training loop (torch floor) only calls back at the end of an epoch; the metrics of each probe are the
analysis floor's (:func:`pe_probe.analysis.summary_frame`), so the callback lives here, above both.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from ..analysis import summary_frame
from ..core.io import write_text
from ..core.rundir import RunDir
from ..probing import probe
from ..training import TrainConfig
from ..training import train as _train_loop

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


def train(config: TrainConfig | None = None, /, **options: Any) -> Path:
    """Train a model (:func:`pe_probe.training.train`: same arguments, same run directory), and with
    ``probe_every=N`` also probe the first ``probe_images`` validation images after every N epochs (and the last),
    appending every report metric to ``RUN/probe_history.csv`` (``epoch, layer, metric, value``)."""
    cfg = config if config is not None else TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"train() takes a TrainConfig or keyword options, not {type(cfg).__name__}")
    if options:
        cfg = cfg.replace(**options)
    every, images = _recorded_probe_options(cfg)
    callbacks = [ProbeHistory(every, images)] if every else []
    return _train_loop(cfg, callbacks=callbacks)


def _recorded_probe_options(cfg: TrainConfig) -> tuple[Any, Any]:
    """``(probe_every, probe_images)`` the run will train with: on ``resume`` of a run whose ``config.json``
    records them, the recorded ones (the loop refuses a resume that asks for others); else ``cfg``'s."""
    every, images = cfg.probe_every, cfg.probe_images
    if cfg.resume and cfg.out is not None:
        run = RunDir(cfg.out)
        try:
            args = run.read_config().get("recipe", {}).get("args", {}) if run.config_path.is_file() else {}
        except Exception:  # noqa: BLE001 - a damaged config.json is reported by the loop, in one line
            args = {}
        if isinstance(args, dict) and all(isinstance(args.get(k, 1), int) for k in ("probe_every", "probe_images")):
            every, images = args.get("probe_every", every), args.get("probe_images", images)
    return every, images
