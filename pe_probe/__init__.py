"""pe-probe: train, hook and measure position embeddings in vision transformers.

``import pe_probe`` is cheap: it loads the torch-free ground floor (:mod:`pe_probe.core`) only. Every other
public name is imported on first use, so the analysis and figures floors run without torch. The ``pe_*``
model variants are registered with timm when :mod:`pe_probe.models` is imported: explicitly
(``import pe_probe.models``), by any model, probing or training name below, or by ``import pe_probe`` itself
when timm is already imported (``import timm, pe_probe`` then ``timm.create_model("pe_deit_tiny_patch16_224")``).

Floors (docs/architecture.md): ``core`` -> ``models``/``data``/``probing``/``training`` (torch) ->
``analysis`` (numbers) -> ``figures`` (drawing) -> ``pipeline`` -> ``cli``.
"""

from __future__ import annotations

import importlib
import sys

from ._version import __version__
from .core.errors import CheckpointError, DataError, DataWarning, PEProbeError, UnknownNameError
from .core.pe import KNOBS, PE_MODES, PRESETS, PEConfig, PEKnobs, resolve_pe_config
from .core.report import ProbeReport
from .core.rundir import RunDir

#: Public names loaded on first use: name -> module (relative to this package).
_LAZY = {
    # models (torch)
    "HookPoint": "models", "PEVisionTransformer": "models", "convert_model": "models",
    # probing (torch)
    "capture": "probing", "hook_names": "probing", "probe": "probing", "mpvg_constant_offset_check": "probing",
    # training (torch)
    "TrainConfig": "training", "evaluate": "training", "load_checkpoint": "training",
    "load_model": "training", "load_run": "training",
    # analysis (numpy/pandas)
    "summary_frame": "analysis", "save_report": "analysis", "save_ablation": "analysis",
    "save_attribution": "analysis", "read_ablation": "analysis", "read_attribution": "analysis",
    # pipeline (train: the training loop plus probing during training)
    "train": "pipeline", "reproduce": "pipeline", "render_figures": "pipeline", "ProbeHistory": "pipeline",
    # probing: causal tests of the PE (they return the core containers AblationResult / AttributionResult)
    "ablate": "probing", "attribute": "probing",
    # probing: attention and the input (they return AttentionResult / ShuffleResult; the sweep a ResolutionResult)
    "attention_stats": "probing", "capture_attention": "probing", "patch_shuffle": "probing",
    "check_sizes": "probing", "probe_at_sizes": "probing", "resolution_sweep": "pipeline",
    # PE families (torch)
    "family_for": "families", "register_family": "families", "families": "families", "Family": "families",
    "Site": "families",
}

__all__ = [
    "CheckpointError", "DataError", "DataWarning", "KNOBS", "PEConfig", "PEKnobs", "PEProbeError", "PE_MODES",
    "PRESETS", "ProbeReport", "RunDir", "UnknownNameError", "__version__", "resolve_pe_config", *_LAZY,
]


if "timm" in sys.modules:  # torch and timm are loaded already: registering the pe_* variants costs nothing
    importlib.import_module(f"{__name__}.models")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
