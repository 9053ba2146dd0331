"""Top-1/top-5 accuracy and loss of a model or a run directory on a data set (its validation split, the
training split, or every image of a user's test folder)."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..core.errors import DataError, DataWarning
from ..data import DATASETS, DataSignature, build_dataset, dataset_info, named_signature
from ..data.folders import default_split, describe_split, reads_training_images
from ..data.signature import check_fits
from ..data.workers import default_num_workers
from .distributed import DistEnv, all_sum, pick_device
from ..probing.distributed import batch_shard, rank_world  # [issue 22]

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
    if env is not None and env.distributed:  # [issue 22] whole batches, each image once: as one process reads them
        dataset = Subset(dataset, list(batch_shard(len(dataset), batch_size, env.rank, env.world_size)))
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


def run_signature(config: dict) -> DataSignature:
    """What a run was trained on (``config.json``): its recorded ``data.signature``, or for runs written before
    it was recorded, what the data set's name says (named data sets) plus the run's class count."""
    data = config.get("data") or {}
    if isinstance(data.get("signature"), dict):
        return DataSignature.from_dict(data["signature"])
    name = data.get("dataset")
    base = named_signature(dataset_info(name)) if name in DATASETS and name != "imagefolder" else None
    return DataSignature(base.size if base else None, base.channels if base else None, config.get("num_classes"))


def evaluate(
    run_or_model: "str | os.PathLike | nn.Module | Run",
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
    train_split: bool = False,
    batch_size: int = 256,
    device: str | None = None,
    amp: bool | None = None,
    num_workers: int | None = None,
    download: bool = False,
    mean=None,
    std=None,
    progress: bool = False,
    skip_bad: bool | None = None,
) -> dict:
    """Evaluate a run directory, a loaded :class:`Run` or a model on part ``split`` of a data set.

    ``split``: ``val``, ``train`` (without augmentation; ``train_split=True`` says the same) or ``all`` (every
    image of a plain folder of class folders). None picks: ``all`` for a plain image folder that is not the
    run's own training folder (a user's test set is scored whole), else ``val``
    (:func:`pe_probe.data.folders.default_split`).

    For a run directory the data set, data directory, image size, channels and normalization default to the
    run's own (``config.json``); data whose images differ from the run's training images in size, channels
    or class count is refused (:class:`~pe_probe.core.errors.DataError`), and a split that holds the run's own
    training images gives a :class:`~pe_probe.core.errors.DataWarning`. For a bare model pass ``dataset``
    (normalization: the data set's default unless ``mean``/``std`` are given; only the class count is
    checked). ``num_workers`` None picks :func:`~pe_probe.data.workers.default_num_workers` for the device.
    Image files that do not decode raise :class:`~pe_probe.data.scan.BadImagesError` naming them; ``skip_bad``
    leaves them out (None: as the run was trained, for its own data set; else False).
    Returns ``{"top1": %, "top5": %, "loss": mean cross-entropy, "n": images, "dataset", "data_dir", "split",
    "skipped_images"}``.
    """
    from .checkpoints import Run, load_run

    dev = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))  # [issue 22] torchrun: this rank's GPU
    if split is not None and train_split and split != "train":
        raise ValueError(f"train_split=True contradicts split={split!r}")
    if isinstance(run_or_model, nn.Module):
        model = run_or_model
        if dataset is None:
            raise DataError("evaluate(model) needs dataset=...; only a run directory knows its own data set")
        img_size, in_chans = _model_image_format(model)
        info = dataset_info(dataset)
        d_mean, d_std = info.normalization(in_chans)
        mean, std = mean or d_mean, std or d_std
        own, run_data = False, None
        expected = DataSignature(None, None, getattr(model, "num_classes", None))
    else:
        run = run_or_model if isinstance(run_or_model, Run) else load_run(Path(run_or_model))
        model = run.model
        run_data = run.config["data"]
        dataset = dataset or run_data["dataset"]
        if data_dir is None and dataset == run_data["dataset"]:
            data_dir = run_data.get("data_dir")
        own = dataset == run_data["dataset"] and (
            data_dir is None or run_data.get("data_dir") is None
            or Path(data_dir).expanduser().resolve() == Path(run_data["data_dir"]).expanduser().resolve())
        if skip_bad is None and own:
            skip_bad = bool(run_data.get("skip_bad", False))
        img_size, in_chans = int(run_data["img_size"]), int(run_data["in_chans"])
        mean, std = mean or run_data["mean"], std or run_data["std"]
        expected = run_signature(run.config)
    split = split or ("train" if train_split else default_split(dataset, data_dir, own=own))
    ds = build_dataset(dataset, data_dir=data_dir, split=split, img_size=img_size, in_chans=in_chans,
                       mean=mean, std=std, augment=False, download=download, skip_bad=bool(skip_bad))
    where = f"{dataset} {data_dir} ({split})" if data_dir is not None else f"{dataset} ({split})"
    check_fits(expected, ds.signature, where, "the run was trained on" if run_data is not None else "the model has")
    if run_data is not None and reads_training_images(run_data, dataset, data_dir, split):
        warnings.warn(f"{where} holds images the run was trained on ({describe_split(dataset, data_dir, split)}); "
                      "its score says how well the run fits its training data, not how it generalises",
                      DataWarning, stacklevel=2)
    model.to(dev)
    workers = default_num_workers(dev, in_memory=dataset == "digits") if num_workers is None else num_workers
    rank, world = rank_world()  # [issue 22] under torch.distributed each process scores its exact shard
    env = DistEnv(rank, world, int(os.environ.get("LOCAL_RANK", "0")), dev, False) if world > 1 else None
    result = run_eval(model, ds, batch_size=batch_size, device=dev, amp=dev.type == "cuda" if amp is None else amp,
                      num_workers=workers, progress=progress, env=env)
    data_dir_text = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None
    return {**result, "dataset": dataset, "data_dir": data_dir_text, "split": split,
            "skipped_images": len(getattr(ds, "bad", {}))}
