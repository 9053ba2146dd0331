"""Image transforms from timm's data tooling (``timm.data.create_transform``)."""

from __future__ import annotations

from typing import Any, Callable

from timm.data import create_transform

from .registry import DatasetInfo

#: ``create_transform`` keywords that ``build_dataset(**aug)`` passes through.
AUG_KEYS = (
    "scale", "ratio", "hflip", "vflip", "color_jitter", "auto_augment", "interpolation", "re_prob", "re_mode",
    "re_count", "crop_pct", "crop_mode", "train_crop_mode",
)


def build_transform(
    info: DatasetInfo,
    *,
    augment: bool,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    **aug: Any,
) -> Callable:
    """A PIL-image -> normalized-tensor transform.

    With ``augment`` it is timm's training transform (random-resized crop, flips, colour jitter, optional
    RandAugment ``auto_augment="rand-m9-mstd0.5-inc1"`` and random erasing ``re_prob``); otherwise timm's
    evaluation transform (resize, centre crop at ``crop_pct``, normalize).
    """
    unknown = sorted(set(aug) - set(AUG_KEYS))
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; valid: {', '.join(AUG_KEYS)}")
    aug = {k: v for k, v in aug.items() if v is not None}
    crop_pct = aug.pop("crop_pct", info.crop_pct)
    interpolation = aug.pop("interpolation", "bicubic")
    if augment:
        if not info.hflip:
            aug.setdefault("hflip", 0.0)
        if len(mean) == 1:  # colour jitter and RandAugment assume RGB; grey images get geometric aug only
            aug.setdefault("color_jitter", 0.0)
        return create_transform(
            img_size, is_training=True, interpolation=interpolation, mean=mean, std=std, **aug
        )
    return create_transform(img_size, is_training=False, interpolation=interpolation, mean=mean, std=std,
                            crop_pct=crop_pct)


class ConvertThen:
    """Convert a PIL image to ``mode`` (e.g. ``"L"`` for one channel), then apply ``transform``."""

    def __init__(self, mode: str, transform: Callable) -> None:
        self.mode, self.transform = mode, transform

    def __call__(self, img):  # noqa: D102
        return self.transform(img.convert(self.mode))
