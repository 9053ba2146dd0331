"""Data sets for training and probing: ``digits`` (embedded), ``cifar10``/``cifar100`` and ``imagefolder``.

Every data set yields ``(image, label)`` with ``image`` a normalized float tensor ``(C, H, W)``.
Transforms come from timm's data tooling (:func:`timm.data.create_transform`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from torch.utils.data import Dataset

from ..core.errors import DataError
from ..core.vocab import SPLITS
from .registry import DATASETS, DatasetInfo, dataset_info
from .signature import DataSignature
from .transforms import AUG_KEYS, ConvertThen, build_transform

__all__ = ["AUG_KEYS", "DATASETS", "DataSignature", "DatasetInfo", "build_dataset", "dataset_info", "named_signature"]


def build_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train: bool | None = None,
    split: str | None = None,
    img_size: int,
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = False,
    download: bool = False,
    skip_bad: bool = False,
    **aug: Any,
) -> Dataset:
    """Part ``split`` (``train``, ``val`` or ``all``; or ``train=True/False``) of data set ``name``, resized to
    ``img_size`` with ``in_chans`` channels.

    ``all`` (image folders only) reads every image of a plain folder of class folders; ``train``/``val`` of such
    a folder are its fixed 90/10 per-class split (see :func:`pe_probe.data.folders.split_root`).
    ``mean``/``std`` default to the data set's own statistics (:func:`dataset_info`). ``augment`` switches on
    timm's training transform; ``aug`` passes its options (``auto_augment``, ``re_prob``, ``scale``, ``hflip``,
    ... see :data:`AUG_KEYS`). The returned data set has ``num_classes``, ``classes`` and ``signature`` (the
    images' own size, channels and class count: :class:`~pe_probe.data.signature.DataSignature`).
    ``download`` fetches CIFAR only when asked; otherwise missing files raise :class:`~pe_probe.core.errors.DataError`.
    Every file of an image folder is checked before the data set is returned (:mod:`pe_probe.data.scan`): a bad
    one raises :class:`~pe_probe.data.scan.BadImagesError` naming it, or with ``skip_bad`` is left out (the
    data set's ``bad`` maps each to why; other data sets have an empty ``bad``).
    """
    if split is None:
        if train is None:
            raise ValueError("build_dataset needs split='train'|'val'|'all' (or train=True/False)")
        split = "train" if train else "val"
    elif train is not None and split != ("train" if train else "val"):
        raise ValueError(f"train={train} contradicts split={split!r}")
    if split not in SPLITS:
        raise DataError(f"split={split!r} is unknown; valid: {', '.join(SPLITS)}")
    info = dataset_info(name)
    if split == "all" and name != "imagefolder":
        raise DataError(f"split 'all' reads a plain image folder; {name} has a train and a val split")
    train = split == "train"
    if in_chans not in (1, 3):
        raise DataError(f"in_chans={in_chans} is not supported by the data sets; use 1 or 3")
    if not isinstance(img_size, int) or img_size < 1:
        raise DataError(f"img_size={img_size!r} must be a positive int")
    d_mean, d_std = info.normalization(in_chans)
    mean = tuple(float(v) for v in (mean if mean is not None else d_mean))
    std = tuple(float(v) for v in (std if std is not None else d_std))
    if len(mean) != in_chans or len(std) != in_chans:
        raise DataError(f"mean/std need {in_chans} values, got {len(mean)} and {len(std)}")

    if name == "digits":
        from .digits import DigitsDataset

        ds = DigitsDataset(info, train=train, img_size=img_size, in_chans=in_chans, mean=mean, std=std,
                           augment=augment, **aug)
        ds.signature = named_signature(info)
        ds.bad = {}
        return ds

    from .folders import build_cifar, build_imagefolder, check_data_dir

    path = check_data_dir(name, data_dir, download=download)
    transform = build_transform(info, augment=augment, img_size=img_size, mean=mean, std=std, **aug)
    if name in ("cifar10", "cifar100"):
        if in_chans == 1:
            transform = ConvertThen("L", transform)
        ds = build_cifar(name, path, train=train, transform=transform, download=download)
        ds.signature = named_signature(info)
        ds.bad = {}
        return ds
    return build_imagefolder(path, split=split, transform=transform, in_chans=in_chans, skip_bad=skip_bad)


def named_signature(info: DatasetInfo) -> DataSignature:
    """The images of a named data set with fixed files (digits, CIFAR): native size, channels, classes."""
    size = (info.native_size, info.native_size) if info.native_size else None
    return DataSignature(size, len(info.mean), info.num_classes)
