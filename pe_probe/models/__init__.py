"""Models and hook points (the torch layer of pe_probe)."""

from .block import PEBlock
from .config import PE_MODES, PRESETS, PEConfig, resolve_pe_config
from .hooks import HookPoint
from .registry import VARIANT_ARGS
from .vit import PEVisionTransformer

__all__ = [
    "HookPoint", "PEBlock", "PEConfig", "PEVisionTransformer", "PE_MODES", "PRESETS",
    "VARIANT_ARGS", "resolve_pe_config",
]
