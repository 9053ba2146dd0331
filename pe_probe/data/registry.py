"""Known data sets and their defaults (classes, normalization, native image size), as data."""

from __future__ import annotations

from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..core.errors import UnknownNameError

#: Mean and std of scikit-learn's digits after scaling pixels to [0, 1] (all 1,797 images).
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is before any file is opened.

    Attributes:
        name: the name ``build_dataset`` accepts.
        num_classes: number of classes, or None where it depends on the files (``imagefolder``).
        mean, std: default per-channel normalization for the data set's native channels.
        native_size: native image side in pixels (None when it varies).
        crop_pct: timm's evaluation crop fraction (1.0: resize to the model size, no crop).
        hflip: whether horizontal flips keep the label (False for digits).
        needs_data_dir: whether ``data_dir`` is required.
    """

    name: str
    num_classes: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: int | None
    crop_pct: float
    hflip: bool
    needs_data_dir: bool

    def normalization(self, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` for ``in_chans`` channels (grey statistics repeated, or colour averaged)."""
        return _fit_channels(self.mean, in_chans), _fit_channels(self.std, in_chans)


def _fit_channels(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    if len(values) == in_chans:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * in_chans
    if in_chans == 1:
        return (round(sum(values) / len(values), 4),)
    raise ValueError(f"cannot fit a {len(values)}-channel normalization to in_chans={in_chans}")


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, DIGITS_MEAN, DIGITS_STD, 8, 1.0, False, False),
    "cifar10": DatasetInfo("cifar10", 10, CIFAR10_MEAN, CIFAR10_STD, 32, 1.0, True, True),
    "cifar100": DatasetInfo("cifar100", 100, CIFAR100_MEAN, CIFAR100_STD, 32, 1.0, True, True),
    "imagefolder": DatasetInfo(
        "imagefolder", None, tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), None, 0.875, True, True
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; :class:`~pe_probe.core.errors.UnknownNameError` if unknown."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}") from None
