"""Reproduction pipeline: presets of runs, training, probing and rendering in one call.

Names are loaded on first use: the presets (:mod:`.presets`) import no torch, so ``pe-probe reproduce --help``
lists them without loading torch.
"""

from __future__ import annotations

import importlib

#: Public names -> the module (relative to this package) that defines them.
_LAZY = {
    "attention_run": "attention", "position_tests": "attention", "resolution_run": "attention",
    "resolution_sweep": "attention", "shuffle_run": "attention",
    "ablate": "causal", "ablate_run": "causal", "attribute": "causal", "attribute_run": "causal",
    "ProbeHistory": "history", "read_history": "history",
    "train": "training",
    "DEFAULT_SEEDS": "presets", "PRESET_NAMES": "presets", "QUICK": "presets", "RunPlan": "presets",
    "ablation_plans": "presets", "preset_plans": "presets", "table5_layers": "presets",
    "ReproduceResult": "run", "find_runs": "run", "plan_runs": "run", "probe_run": "run", "render_figures": "run",
    "reproduce": "run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
