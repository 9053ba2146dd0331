"""Named variants registered with timm: ``timm.create_model("pe_deit_tiny_patch16_224", pe_mode="mpvg")``."""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .vit import PEVisionTransformer

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "pe_deit_tiny_patch16_224.untrained": _cfg(),
    "pe_deit_small_patch16_224.untrained": _cfg(),
    "pe_deit_base_patch16_224.untrained": _cfg(),
    "pe_vit_lite_7_4_32.untrained": _cfg(
        num_classes=100, input_size=(3, 32, 32), crop_pct=1.0, mean=CIFAR_MEAN, std=CIFAR_STD
    ),
})

#: Architecture of each registered variant (kwargs filled before the user's own).
VARIANT_ARGS: dict[str, dict] = {
    "pe_deit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "pe_deit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "pe_deit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "pe_vit_lite_7_4_32": dict(patch_size=4, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
}


def _create(variant: str, pretrained: bool = False, **kwargs) -> PEVisionTransformer:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights: pe_probe never downloads; load a run directory")
    return build_model_with_cfg(PEVisionTransformer, variant, pretrained=False, **{**VARIANT_ARGS[variant], **kwargs})


@register_model
def pe_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> PEVisionTransformer:
    """DeiT-Ti (192 dim, 12 blocks, 3 heads, patch 16, 224 px) with a configurable PE scheme."""
    return _create("pe_deit_tiny_patch16_224", pretrained, **kwargs)


@register_model
def pe_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> PEVisionTransformer:
    """DeiT-S (384 dim, 12 blocks, 6 heads, patch 16, 224 px) with a configurable PE scheme."""
    return _create("pe_deit_small_patch16_224", pretrained, **kwargs)


@register_model
def pe_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> PEVisionTransformer:
    """DeiT-B (768 dim, 12 blocks, 12 heads, patch 16, 224 px) with a configurable PE scheme."""
    return _create("pe_deit_base_patch16_224", pretrained, **kwargs)


@register_model
def pe_vit_lite_7_4_32(pretrained: bool = False, **kwargs) -> PEVisionTransformer:
    """ViT-Lite-7/4 for 32 px CIFAR (256 dim, 7 blocks, 4 heads, MLP ratio 2; Hassani et al. 2022)."""
    return _create("pe_vit_lite_7_4_32", pretrained, **kwargs)
