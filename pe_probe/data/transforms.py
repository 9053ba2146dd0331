"""Image transforms from timm's data tooling (``timm.data.create_transform``)."""

from __future__ import annotations

from typing import Any, Callable

from PIL import Image, ImageOps
from timm.data import auto_augment as timm_aa
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
        try:
            transform = create_transform(
                img_size, is_training=True, interpolation=interpolation, mean=mean, std=std, **aug
            )
        except (AssertionError, ValueError, KeyError, TypeError) as exc:  # timm asserts on unknown policies
            raise ValueError(f"timm cannot build the training transform from {aug}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        allow_zero_bit_posterize(transform)
        return transform
    return create_transform(img_size, is_training=False, interpolation=interpolation, mean=mean, std=std,
                            crop_pct=crop_pct)


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **__: Any) -> Image.Image:
    """timm's ``posterize`` op, also for ``bits_to_keep <= 0``: what Pillow <= 12 returned there (all black).

    Why: timm's RandAugment asks for 0 bits. With ``inc1`` policies (DeiT's ``rand-m9-mstd0.5-inc1``)
    ``PosterizeIncreasing`` keeps ``4 - int(m / 10 * 4)`` bits, which is 0 whenever the Gaussian magnitude
    draw reaches 10 (about 1 image in 660); AutoAugment ``v0`` asks for 0 bits too. Pillow <= 12 applied the
    mask ``~(2 ** (8 - bits) - 1)``, i.e. 0 for bits <= 0, and returned an all-black image; Pillow 13's
    ``ImageOps.posterize`` raises ``ValueError`` instead, which kills a data-loader worker mid-epoch. Returning
    the old result keeps the augmentation policy exactly as published, with no Pillow pin.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep >= 1:
        return ImageOps.posterize(img, bits_to_keep)
    return img.point([0] * 256 * len(img.getbands()))


def allow_zero_bit_posterize(transform: Any) -> int:
    """Give every posterize op inside ``transform`` :func:`posterize_any_bits`; returns how many were changed.

    Walks ``Compose.transforms``, ``RandAugment.ops``, ``AugMixAugment.ops`` and ``AutoAugment.policy``
    (a list of sub-policies). Only the op instances of this transform change (their ``aug_fn``), not timm's
    module state; the random draws (op choice, probability, magnitude) happen before ``aug_fn`` and are
    untouched, so the images are the same as before wherever the old code did not raise.
    """
    changed, stack = 0, [transform]
    while stack:
        t = stack.pop()
        if isinstance(t, (list, tuple)):
            stack.extend(t)
        elif isinstance(t, timm_aa.AugmentOp):
            if t.aug_fn is timm_aa.posterize:
                t.aug_fn = posterize_any_bits
                changed += 1
        else:
            for attr in ("transforms", "ops", "policy"):
                sub = getattr(t, attr, None)
                if isinstance(sub, (list, tuple)):
                    stack.append(sub)
    return changed


class ConvertThen:
    """Convert a PIL image to ``mode`` (e.g. ``"L"`` for one channel), then apply ``transform``."""

    def __init__(self, mode: str, transform: Callable) -> None:
        self.mode, self.transform = mode, transform

    def __call__(self, img):  # noqa: D102
        return self.transform(img.convert(self.mode))
