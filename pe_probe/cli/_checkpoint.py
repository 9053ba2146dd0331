"""The checkpoint and data arguments every command that measures a checkpoint shares (``probe``, ``ablate``,
``attribute``): the flags, and loading the model and resolving its data set the same way for all of them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ._args import parse_kv


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """CHECKPOINT, ``--data``, ``--data-dir``, ``--model``, ``--model-arg`` and ``--device``."""
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory (config.json + model.safetensors) "
                   "or a .safetensors state dict (then --model is required)")
    p.add_argument("--data", help="data-set name for pe_probe.data.build_dataset (default: the run's data set)")
    p.add_argument("--data-dir", help="where the data set lives")
    p.add_argument("--model", help="timm model name for a safetensors state dict (e.g. deit_tiny_patch16_224)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model constructor kwarg for --model (VALUE parsed as JSON when possible); repeatable")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def add_stream_args(p: argparse.ArgumentParser, batch_size: int = 64) -> None:
    """``--batch-size``, ``--max-images``, ``--num-workers`` and ``--no-progress``."""
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--max-images", type=int, default=None, help="stop after this many images")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class Checkpoint:
    """A loaded checkpoint (the model on its device, eval mode) and the data it is measured on."""

    path: Path
    model: Any
    data: str
    data_dir: str | None
    mean: Any
    std: Any

    def data_options(self) -> dict[str, Any]:
        """``data_dir``, ``mean`` and ``std`` as ``pe_probe.probe`` / ``ablate`` / ``attribute`` take them."""
        return dict(data_dir=self.data_dir, mean=self.mean, std=self.std)


def load(args: argparse.Namespace) -> Checkpoint:
    """Load ``args.checkpoint`` with :func:`pe_probe.load_checkpoint`; the data set is ``--data``, else the one the
    run recorded (its mean and std come with it); the model goes to ``--device``."""
    import torch

    from .. import load_checkpoint

    path = Path(args.checkpoint)
    model, data_cfg = load_checkpoint(path, args.model, **parse_kv(args.model_arg, "--model-arg"))
    data = args.data or data_cfg.get("dataset")
    if not data:
        raise DataError("--data is required (no data set recorded for this checkpoint)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    return Checkpoint(path, model, data, args.data_dir, data_cfg.get("mean"), data_cfg.get("std"))
