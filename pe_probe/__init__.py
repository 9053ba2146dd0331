"""pe-probe: train, hook and measure position embeddings in vision transformers.

Importing the package registers the ``pe_*`` model variants with timm.
"""

from .models import PE_MODES, PRESETS, HookPoint, PEConfig, PEVisionTransformer, resolve_pe_config

__version__ = "0.1.0"

__all__ = ["HookPoint", "PEConfig", "PEVisionTransformer", "PE_MODES", "PRESETS", "resolve_pe_config"]
