"""Models and hook points (the torch floor): one timm ViT family for every PE-delivery scheme.

Importing this package registers the ``pe_*`` variants with timm (``timm.create_model("pe_deit_tiny_patch16_224",
pe_mode="mpvg")``). The PE configuration itself is the torch-free :mod:`pe_probe.core.pe`.
"""

from .block import PEBlock
from .foreign import convert_model
from .hooks import HookPoint
from .registry import VARIANT_ARGS
from .vit import PEVisionTransformer

__all__ = ["HookPoint", "PEBlock", "PEVisionTransformer", "VARIANT_ARGS", "convert_model"]
