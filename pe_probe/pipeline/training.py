"""The one front door for training: :func:`train` (``pe_probe.train``, ``pe-probe train``).

It runs the training loop of the torch floor (:func:`pe_probe.training.run_training`) and adds what needs the
floors above it: with ``probe_every`` the probe history (:class:`~pe_probe.pipeline.history.ProbeHistory`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..core.rundir import RunDir
from ..training import TrainConfig, run_training
from ..training.loop import EpochCallback
from .history import ProbeHistory


def train(config: TrainConfig | None = None, /, *, callbacks: Sequence[EpochCallback] = (), **options: Any) -> Path:
    """Train a model (:func:`pe_probe.training.run_training`: same arguments, same run directory), and with
    ``probe_every=N`` also probe the first ``probe_images`` validation images after every N epochs (and the last),
    appending every report metric to ``RUN/probe_history.csv`` (``epoch, layer, metric, value``). ``callbacks``
    run at the end of every epoch after that (:data:`~pe_probe.training.loop.EpochCallback`)."""
    cfg = config if config is not None else TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"train() takes a TrainConfig or keyword options, not {type(cfg).__name__}")
    if options:
        cfg = cfg.replace(**options)
    every, images = _recorded_probe_options(cfg)
    history = [ProbeHistory(every, images)] if every else []
    return run_training(cfg, callbacks=[*history, *callbacks])


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
