"""The checkpoint and data arguments every command that measures a checkpoint shares (``probe``, ``ablate``,
``attribute``): the flags, and loading the model and resolving its data set the same way for all of them."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..core.vocab import SPLITS
from ._args import parse_kv


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """CHECKPOINT, ``--data``, ``--data-dir``, ``--split``, ``--model``, ``--model-arg``, ``--ema``,
    ``--resample-pos-embed`` and ``--device``."""
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="run directory, timm hub or Hugging Face folder, or .safetensors/.pth/.pt/.bin/.pth.tar "
                        "file (pe-probe, timm, DeiT, LaPE, torchvision, open_clip/OpenAI CLIP)")
    p.add_argument("--data", help="data-set name for pe_probe.data.build_dataset (default: the run's data set)")
    p.add_argument("--data-dir", help="where the data set lives (default: the run's, for the run's data set)")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="part of the data set: val, train, or all (every image of a plain folder of class "
                        "folders); default: all for a plain folder that is not the run's own data, else val")
    p.add_argument("--model", help="timm model name (e.g. deit_tiny_patch16_224); needed when the checkpoint "
                   "does not name its model")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor kwarg (VALUE parsed as JSON when possible), over what the checkpoint "
                        "records, e.g. img_size=32 or pe_mode=pvg; repeatable")
    p.add_argument("--ema", action="store_true",
                   help="load the EMA weights (model_ema / state_dict_ema) instead of the trained ones (model / "
                        "state_dict), which are what DeiT's and LaPE's evaluation use")
    p.add_argument("--resample-pos-embed", action="store_true",
                   help="interpolate a PE trained for another patch grid to the model's (timm's "
                        "resample_abs_pos_embed, bicubic); the output records it. Without it a grid mismatch is "
                        "an error")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def _max_images(text: str) -> int | None:
    if text.lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or 'all', got {text!r}") from None


def add_stream_args(p: argparse.ArgumentParser, batch_size: int = 64, max_images: int | None = None) -> None:
    """``--batch-size``, ``--max-images`` (``all``: every image; default ``max_images``), ``--num-workers`` and
    ``--no-progress``."""
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--max-images", type=_max_images, default=max_images, metavar="N|all",
                   help="stop after this many images (default: " + ("every image" if max_images is None else
                                                                     f"{max_images}; 'all': every image") + ")")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class Checkpoint:
    """A loaded checkpoint (the model on its device, eval mode), what :func:`pe_probe.load_checkpoint` read about
    it (``info``: a :class:`~pe_probe.training.formats.CheckpointInfo`) and the data it is measured on."""

    path: Path
    model: Any
    info: Any
    data: str
    data_dir: str | None
    split: str | None

    def data_options(self) -> dict[str, Any]:
        """``data_dir``, ``mean``, ``std``, ``split`` and ``trained_on`` (the run's recorded data, so data that
        does not fit it is refused) as ``pe_probe.probe`` / ``ablate`` / ``attribute`` take them."""
        recorded = self.info.data
        return dict(data_dir=self.data_dir, mean=recorded.get("mean"), std=recorded.get("std"), split=self.split,
                    trained_on=recorded if self.info.format == "run" else None)

    def normalization(self) -> str:
        """Which mean/std the images are normalised with, in words: the checkpoint's recorded ones, or the data
        set's own when the checkpoint records none (then numbers can differ from a copy that records them)."""
        recorded = self.info.data
        if recorded.get("mean") is not None and recorded.get("std") is not None:
            return f"normalised with the checkpoint's recorded mean {_fmt(recorded['mean'])} std {_fmt(recorded['std'])}"
        from ..core.errors import UnknownNameError
        from ..data import dataset_info

        in_chans = int(getattr(getattr(getattr(self.model, "patch_embed", None), "proj", None), "in_channels", 3))
        try:
            mean, std = dataset_info(self.data).normalization(in_chans)
        except UnknownNameError:
            return f"normalised with the {self.data} data set's own mean/std (the checkpoint records none)"
        return (f"normalised with {self.data}'s own mean {_fmt(mean)} std {_fmt(std)}: the checkpoint records none "
                "(a checkpoint trained with another normalisation gives other numbers)")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def load(args: argparse.Namespace) -> Checkpoint:
    """Load ``args.checkpoint`` with :func:`pe_probe.load_checkpoint`; the data set is ``--data``, else the one the
    checkpoint recorded (with its data directory, mean and std); the model goes to ``--device``."""
    import torch

    from .. import load_checkpoint

    path = Path(args.checkpoint)
    model, info = load_checkpoint(path, args.model, use_ema=args.ema, resample_pos_embed=args.resample_pos_embed,
                                  **parse_kv(args.model_arg, "--model-arg"))
    recorded = info.data
    data = args.data or recorded.get("dataset")
    if not data:
        raise DataError("--data is required (no data set recorded for this checkpoint)")
    data_dir = args.data_dir or (recorded.get("data_dir") if data == recorded.get("dataset") else None)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:  # [issue 22] torchrun
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    model.to(device)
    return Checkpoint(path, model, info, data, data_dir, args.split)
