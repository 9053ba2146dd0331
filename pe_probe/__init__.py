"""pe-probe: train, hook and measure position embeddings in vision transformers.

Importing the package registers the ``pe_*`` model variants with timm.
"""

from .models import PE_MODES, PRESETS, HookPoint, PEConfig, PEVisionTransformer, resolve_pe_config

from ._version import __version__

__all__ = ["HookPoint", "PEConfig", "PEVisionTransformer", "PE_MODES", "PRESETS", "resolve_pe_config"]

# --- probe (issue 3): hook names, one-batch capture, streaming probe, its report and the MPVG check ---
from .analysis import ProbeReport  # noqa: E402
from .api import probe  # noqa: E402
from .probe import capture, hook_names, mpvg_constant_offset_check  # noqa: E402

__all__ += ["ProbeReport", "capture", "hook_names", "mpvg_constant_offset_check", "probe"]

# --- Training and evaluation (issue 4) -------------------------------------------------------------
# Note: binding the function ``train`` here shadows the subpackage attribute ``pe_probe.train``; import the
# package's other names with ``from pe_probe.train import TrainConfig, RECIPES`` (that goes through
# sys.modules and still works).
from .train import TrainConfig, evaluate, load_checkpoint, load_model, load_run, train  # noqa: E402

__all__ += ["TrainConfig", "evaluate", "load_checkpoint", "load_model", "load_run", "train"]

# --- Reproduction pipeline (issue 5): imported on first use, so `import pe_probe` stays free of matplotlib ----
_LAZY = {"reproduce": "pipeline", "render_figures": "pipeline"}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
