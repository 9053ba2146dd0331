"""Data sets for training and probing: ``digits`` (embedded), ``cifar10``/``cifar100`` and ``imagefolder``.

Every data set yields ``(image, label)`` with ``image`` a normalized float tensor ``(C, H, W)``.
Transforms come from timm's data tooling (:func:`timm.data.create_transform`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from torch.utils.data import Dataset

from ..core.errors import DataError
from .registry import DATASETS, DatasetInfo, dataset_info
from .transforms import AUG_KEYS, ConvertThen, build_transform

__all__ = ["AUG_KEYS", "DATASETS", "DatasetInfo", "build_dataset", "dataset_info"]


def build_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train: bool,
    img_size: int,
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = False,
    download: bool = False,
    **aug: Any,
) -> Dataset:
    """The train or validation split of data set ``name``, resized to ``img_size`` with ``in_chans`` channels.

    ``mean``/``std`` default to the data set's own statistics (:func:`dataset_info`). ``augment`` switches on
    timm's training transform; ``aug`` passes its options (``auto_augment``, ``re_prob``, ``scale``, ``hflip``,
    ... see :data:`AUG_KEYS`). The returned data set has ``num_classes`` and ``classes`` attributes.
    ``download`` fetches CIFAR only when asked; otherwise missing files raise :class:`~pe_probe.core.errors.DataError`.
    """
    info = dataset_info(name)
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

        return DigitsDataset(info, train=train, img_size=img_size, in_chans=in_chans, mean=mean, std=std,
                             augment=augment, **aug)

    from .folders import build_cifar, build_imagefolder, check_data_dir

    path = check_data_dir(name, data_dir, download=download)
    transform = build_transform(info, augment=augment, img_size=img_size, mean=mean, std=std, **aug)
    if name in ("cifar10", "cifar100"):
        if in_chans == 1:
            transform = ConvertThen("L", transform)
        return build_cifar(name, path, train=train, transform=transform, download=download)
    return build_imagefolder(path, train=train, transform=transform, in_chans=in_chans)
