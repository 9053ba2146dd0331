"""Training and evaluation (torch floor): timm's optimizer, schedule and augmentation; resumable run directories.

:func:`run_training` writes a run directory (:class:`~pe_probe.core.rundir.RunDir`); :func:`load_run` /
:func:`load_model` / :func:`load_checkpoint` read models back and :func:`evaluate` scores them. The public
front door is :func:`pe_probe.train` (this loop plus probing during training).

Names are loaded on first use: the configuration and recipes (:mod:`.config`, :mod:`.recipes`) import no
torch, so ``pe-probe COMMAND --help`` builds its flags from them without loading torch. No module is named
like a public name (importing a submodule binds its name on the package, which would hide the function).
"""

from __future__ import annotations

import importlib

#: Public names -> the module (relative to this package) that defines them.
_LAZY = {
    "Run": "checkpoints", "load_model": "checkpoints", "load_run": "checkpoints",
    "RUNTIME_FIELDS": "config", "HyperparameterOverrides": "config", "RunOptions": "config", "TrainConfig": "config",
    "ResolvedRun": "resolve", "resolve_run": "resolve",
    "evaluate": "evaluation",
    "CheckpointInfo": "formats", "load_checkpoint": "formats",
    "TrainingDivergedError": "loop", "run_training": "loop",
    "HYPERPARAMETERS": "recipes", "RECIPES": "recipes", "Hyperparameters": "recipes", "Recipe": "recipes",
    "get_recipe": "recipes",
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
