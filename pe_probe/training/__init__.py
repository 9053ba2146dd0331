"""Training and evaluation (torch floor): timm's optimizer, schedule and augmentation; resumable run directories.

:func:`train` writes a run directory (:class:`~pe_probe.core.rundir.RunDir`); :func:`load_run` /
:func:`load_model` / :func:`load_checkpoint` read models back and :func:`evaluate` scores them.
"""

from .checkpoints import Run, load_model, load_run
from .config import RUNTIME_FIELDS, HyperparameterOverrides, RunOptions, TrainConfig
from .evaluate import evaluate
from .formats import CheckpointInfo, load_checkpoint
from .loop import TrainingDivergedError, train
from .recipes import HYPERPARAMETERS, RECIPES, Hyperparameters, Recipe, get_recipe

__all__ = [
    "CheckpointInfo", "HYPERPARAMETERS", "HyperparameterOverrides", "Hyperparameters", "RECIPES", "RUNTIME_FIELDS",
    "Recipe", "Run", "RunOptions", "TrainConfig", "TrainingDivergedError", "evaluate", "get_recipe", "load_checkpoint", "load_model",
    "load_run", "train",
]
