"""Top-1/top-5 accuracy and loss of a model or a run directory on a data set's validation split."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..data import build_dataset, dataset_info
from ..core.errors import DataError
from .distributed import DistEnv, all_sum, pick_device
from .sampler import shard_indices

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoints import Run


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def run_eval(model: nn.Module, dataset: Dataset, *, batch_size: int, device: torch.device, amp: bool = False,
             env: DistEnv | None = None, num_workers: int = 0, progress: bool = False) -> dict:
    """Loss and accuracy (in %) of ``model`` on ``dataset``, sharded over the processes of ``env``."""
    was_training = model.training
    model.eval()
    if env is not None and env.distributed:
        dataset = Subset(dataset, shard_indices(len(dataset), env.rank, env.world_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    loss_sum = c1 = c5 = n = 0.0
    for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast_for(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top == y[:, None]
        c1 += hit[:, 0].sum().item()
        c5 += hit.any(dim=-1).sum().item()
        n += len(y)
    model.train(was_training)
    if env is not None:
        loss_sum, c1, c5, n = all_sum([loss_sum, c1, c5, n], env)
    if n == 0:
        raise DataError("the evaluation set is empty")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n, "n": int(n)}


def _model_image_format(model: nn.Module) -> tuple[int, int]:
    """``(img_size, in_chans)`` a model expects, from its patch embedding or timm's pretrained config."""
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) is not None:
        size = pe.img_size[0] if isinstance(pe.img_size, (tuple, list)) else int(pe.img_size)
        chans = pe.proj.in_channels if hasattr(pe, "proj") else 3
        return int(size), int(chans)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    c, h, _ = cfg.get("input_size", (3, 224, 224))
    return int(h), int(c)


def evaluate(
    run_or_model: "str | os.PathLike | nn.Module | Run",
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    train_split: bool = False,
    batch_size: int = 256,
    device: str | None = None,
    amp: bool | None = None,
    num_workers: int = 0,
    download: bool = False,
    mean=None,
    std=None,
    progress: bool = False,
) -> dict:
    """Evaluate a run directory, a loaded :class:`Run` or a model on a data set's validation split.

    ``train_split=True`` scores the training split instead (without augmentation).

    For a run directory the data set, data directory, image size, channels and normalization default to the
    run's own (``config.json``); for a bare model pass ``dataset`` (normalization: the data set's default
    unless ``mean``/``std`` are given).
    Returns ``{"top1": %, "top5": %, "loss": mean cross-entropy, "n": images}``.
    """
    from .checkpoints import Run, load_run

    dev = pick_device(device)
    if isinstance(run_or_model, nn.Module):
        model = run_or_model
        if dataset is None:
            raise DataError("evaluate(model) needs dataset=...; only a run directory knows its own data set")
        img_size, in_chans = _model_image_format(model)
        info = dataset_info(dataset)
        d_mean, d_std = info.normalization(in_chans)
        mean, std = mean or d_mean, std or d_std
    else:
        run = run_or_model if isinstance(run_or_model, Run) else load_run(Path(run_or_model))
        model = run.model
        data = run.config["data"]
        dataset = dataset or data["dataset"]
        if data_dir is None and dataset == data["dataset"]:
            data_dir = data.get("data_dir")
        img_size, in_chans = int(data["img_size"]), int(data["in_chans"])
        mean, std = mean or data["mean"], std or data["std"]
    ds = build_dataset(dataset, data_dir=data_dir, train=train_split, img_size=img_size, in_chans=in_chans,
                       mean=mean, std=std, augment=False, download=download)
    num_classes = getattr(model, "num_classes", None)
    ds_classes = getattr(ds, "num_classes", None)
    if num_classes is not None and ds_classes is not None and num_classes != ds_classes:
        raise DataError(f"the model has {num_classes} classes but dataset {dataset!r} has {ds_classes}")
    model.to(dev)
    return run_eval(model, ds, batch_size=batch_size, device=dev, amp=dev.type == "cuda" if amp is None else amp,
                    num_workers=num_workers, progress=progress)
