"""Data sets read from disk: torchvision's CIFAR-10/100 and ImageNet-style image folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset

from ..core.errors import DataError

#: Fraction of each class held out for validation when an image folder has no ``val/`` split.
FOLDER_VAL_FRACTION = 0.1
FOLDER_SPLIT_SEED = 0

_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def build_cifar(name: str, data_dir: Path, *, train: bool, transform: Callable, download: bool) -> Dataset:
    """torchvision's CIFAR-10/100 under ``data_dir`` (the folder holding ``cifar-10-batches-py/``).

    torchvision checks each file's MD5 against the official release before reading it, so only the
    genuine CIFAR files are ever unpickled.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    if not download and not (data_dir / _CIFAR_DIRS[name]).is_dir():
        raise DataError(
            f"{name} not found: {data_dir} has no {_CIFAR_DIRS[name]}/ folder; "
            "pass --download (download=True) to fetch it"
        )
    try:
        ds = cls(root=str(data_dir), train=train, transform=transform, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"{name} in {data_dir} is incomplete or corrupt ({exc}); pass --download to fetch it") from None
    ds.num_classes = len(ds.classes)
    return ds


class _Loader:
    """Open an image file and convert it to ``mode`` (a class, so data-loader workers can pickle it)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Image.Image:
        with open(path, "rb") as f:
            return Image.open(f).convert(self.mode)


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def build_imagefolder(
    data_dir: Path, *, train: bool, transform: Callable, in_chans: int
) -> Dataset:
    """ImageNet layout (``data_dir/train/<class>/*``, ``data_dir/val/<class>/*``) or one folder of classes.

    A single folder of class subfolders (or a ``train/`` without ``val/``) is split per class with a fixed
    seed: ``FOLDER_VAL_FRACTION`` of each class goes to validation, always the same files.
    """
    from torchvision.datasets import ImageFolder

    loader = _Loader("L" if in_chans == 1 else "RGB")
    tr, va = data_dir / "train", data_dir / "val"
    if _has_class_folders(tr) and _has_class_folders(va):
        root, split = (tr if train else va), False
    elif _has_class_folders(tr):
        root, split = tr, True
    elif _has_class_folders(data_dir) and not tr.exists():
        root, split = data_dir, True
    else:
        raise DataError(f"{data_dir} holds no class folders (expected train/<class>/ and val/<class>/, or <class>/)")
    try:
        ds = ImageFolder(str(root), transform=transform, loader=loader)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"no images found under {root}: {str(exc).splitlines()[0]}") from None
    num_classes = len(ds.classes)
    if split:
        idx = _split_indices(ds.targets, train)
        sub = Subset(ds, idx)
        sub.classes, sub.targets = ds.classes, [ds.targets[i] for i in idx]
        ds = sub
    if len(ds) == 0:
        raise DataError(f"the {'train' if train else 'val'} split of {data_dir} is empty")
    ds.num_classes = num_classes
    return ds


def _split_indices(targets: list[int], train: bool) -> list[int]:
    """Deterministic per-class split: the same files go to validation on every machine."""
    rng = np.random.default_rng(FOLDER_SPLIT_SEED)
    targets_a = np.asarray(targets)
    keep: list[int] = []
    for c in np.unique(targets_a):
        members = np.flatnonzero(targets_a == c)
        members = members[rng.permutation(len(members))]
        n_val = max(1, int(round(FOLDER_VAL_FRACTION * len(members)))) if len(members) > 1 else 0
        keep.extend((members[n_val:] if train else members[:n_val]).tolist())
    return sorted(keep)


def check_data_dir(name: str, data_dir: str | os.PathLike | None, *, download: bool) -> Path:
    """``data_dir`` as a Path; :class:`DataError` if it is missing, not a folder or empty."""
    if data_dir is None:
        raise DataError(f"dataset {name!r} needs a data directory (--data-dir)")
    path = Path(data_dir).expanduser()
    if download and name != "imagefolder":
        path.mkdir(parents=True, exist_ok=True)
        return path
    if not path.exists():
        raise DataError(f"data directory {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data directory {path} is not a directory")
    if not any(path.iterdir()):
        raise DataError(f"data directory {path} is empty")
    return path
