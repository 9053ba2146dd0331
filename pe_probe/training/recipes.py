"""Named training recipes, as data: the paper's (Table 7) plus a small CPU recipe on digits.

A recipe fills every hyperparameter a :class:`~pe_probe.training.TrainConfig` leaves unset. Learning rates are
absolute for the recipe's batch size (per process); they are not rescaled when the batch size changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..core.errors import UnknownNameError

#: timm's RandAugment policy string used by DeiT (``timm.data.rand_augment_transform``).
DEIT_RANDAUGMENT = "rand-m9-mstd0.5-inc1"


def _hp(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class Hyperparameters:
    """Every hyperparameter of a training run; a :class:`Recipe` fills them all, a
    :class:`~pe_probe.training.TrainConfig` may override each (its fields are generated from these).

    AdamW with a cosine schedule and linear warm-up, stepped every update (timm's ``create_optimizer_v2``
    and ``create_scheduler_v2``); mixup/cutmix and label smoothing as timm's ``Mixup``; augmentation with
    timm's ``create_transform``. The help text of each field is what ``pe-probe train --help`` prints.
    """

    epochs: int = _hp(300, "training epochs")
    batch_size: int = _hp(128, "batch size per process")
    lr: float = _hp(5e-4, "peak learning rate (absolute, for the batch size per process)")
    weight_decay: float = _hp(0.05, "AdamW weight decay")
    warmup_epochs: float = _hp(5.0, "linear warm-up epochs (scaled down with epochs when unset and longer than the run)")
    min_lr: float = _hp(1e-5, "final learning rate of the cosine schedule")
    warmup_lr: float = _hp(1e-6, "learning rate at the start of the warm-up")
    opt: str = _hp("adamw", "timm optimizer name (create_optimizer_v2)")
    label_smoothing: float = _hp(0.1, "label smoothing of the hard or mixed targets (0 disables)")
    mixup: float = _hp(0.8, "mixup alpha (0 disables)")
    cutmix: float = _hp(1.0, "cutmix alpha (0 disables)")
    mixup_prob: float = _hp(1.0, "probability of mixing a batch")
    mixup_switch_prob: float = _hp(0.5, "probability of cutmix instead of mixup when both are on")
    augment: bool = _hp(True, "timm's training transform (random-resized crop, flips, colour jitter)")
    randaugment: Optional[str] = _hp(DEIT_RANDAUGMENT, "timm RandAugment policy string, or none")
    re_prob: float = _hp(0.25, "random-erasing probability")
    scale: Optional[tuple[float, float]] = _hp(None, "random-resized-crop scale range (default: timm's 0.08 1)")
    drop_path_rate: float = _hp(0.1, "stochastic depth rate, passed to the model")
    clip_grad: Optional[float] = _hp(None, "gradient-norm clipping (0 or unset: off)")

    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-ready dict."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(Hyperparameters)}
        if d["scale"] is not None:
            d["scale"] = list(d["scale"])
        return d


#: Hyperparameter names a TrainConfig may override.
HYPERPARAMETERS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Hyperparameters))


@dataclass(frozen=True, kw_only=True)
class Recipe(Hyperparameters):
    """A named set of hyperparameters with its default model and data set.

    Attributes (besides :class:`Hyperparameters`):
        name: the recipe's name.
        description: where the numbers come from.
        model: default registered model (None: the user must name one).
        model_kwargs: constructor kwargs used only with the recipe's own default model.
        dataset: default data set.
        reason: why a run got this recipe (set by :func:`~pe_probe.training.config.recipe_for`; recorded in
            ``config.json`` as ``recipe.reason``).
    """

    name: str
    description: str
    model: Optional[str]
    dataset: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


#: The tiny digits model: 16 px (digits upsampled 2x), 4x4 patches -> a 4x4 grid of 16 tokens.
DIGITS_MODEL_KWARGS: dict[str, Any] = dict(
    img_size=16, patch_size=4, in_chans=1, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="deit", description="DeiT on ImageNet-1K (paper Table 7; Touvron et al. 2021)",
            model="pe_deit_tiny_patch16_224", dataset="imagefolder", epochs=300, batch_size=1024, lr=5e-4,
            weight_decay=0.05, warmup_epochs=5,
        ),
        Recipe(
            name="swin", description="Swin on ImageNet-1K (paper Table 7; Liu et al. 2021), timm's Swin-T",
            model="swin_tiny_patch4_window7_224", dataset="imagefolder", epochs=300, batch_size=1024, lr=1e-3,
            weight_decay=0.05, warmup_epochs=20, drop_path_rate=0.2, clip_grad=5.0,
        ),
        Recipe(
            name="t2t", description="T2T-ViT on ImageNet-1K (paper Table 7; Yuan et al. 2021); timm has no "
            "T2T-ViT, so name the model", model=None, dataset="imagefolder", epochs=310, batch_size=512, lr=1e-3,
            weight_decay=0.03, warmup_epochs=10,
        ),
        Recipe(
            name="vit_lite_cifar", description="ViT-Lite-7/4 on CIFAR-100, 32 px (paper Table 7; Hassani et al. 2022)",
            model="pe_vit_lite_7_4_32", dataset="cifar100", epochs=310, batch_size=128, lr=6e-4,
            weight_decay=0.06, warmup_epochs=10, scale=(0.8, 1.0),
        ),
        Recipe(
            name="digits", description="CPU recipe: a tiny ViT on scikit-learn's digits in well under a minute",
            model="pe_vit_lite_7_4_32", model_kwargs=DIGITS_MODEL_KWARGS, dataset="digits", epochs=20,
            batch_size=128, lr=3e-3, weight_decay=0.05, warmup_epochs=2, min_lr=1e-5, warmup_lr=1e-5,
            label_smoothing=0.1, mixup=0.0, cutmix=0.0, augment=False, randaugment=None, re_prob=0.0,
            drop_path_rate=0.0,
        ),
    )
}

#: The recipe used when none is named, by data set (``imagefolder``: by image size, see below).
DEFAULT_RECIPE_FOR_DATASET = {"digits": "digits", "cifar10": "vit_lite_cifar", "cifar100": "vit_lite_cifar",
                              "imagefolder": "deit"}

#: An image folder whose model input (or, without a named model, whose images) is at most this many pixels
#: gets ``SMALL_IMAGE_RECIPE`` (ViT-Lite's 32-px CIFAR recipe: batch 128, crop scale 0.8-1) instead of
#: ``deit`` (ImageNet at 224 px: batch 1024, random-resized crops from 8 % of the image).
SMALL_IMAGE_MAX = 64
SMALL_IMAGE_RECIPE = "vit_lite_cifar"


def get_recipe(name: str) -> Recipe:
    """The named recipe; :class:`~pe_probe.core.errors.UnknownNameError` if unknown."""
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownNameError(f"unknown recipe {name!r}; valid names: {', '.join(RECIPES)}") from None
