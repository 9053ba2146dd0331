"""Training and evaluation: timm's optimizer, schedule and augmentation; safe, resumable run directories.

``pe_probe.train(...)`` (this package's :func:`train`) returns a run directory laid out as docs/contracts.md
says; :func:`load_run` / :func:`load_model` read it back and :func:`evaluate` scores it.
"""

from .config import TrainConfig
from .evaluate import evaluate
from .loop import TrainingDivergedError, train
from .recipes import RECIPES, Recipe, get_recipe
from .rundir import Run, load_checkpoint, load_model, load_run

__all__ = [
    "RECIPES", "Recipe", "Run", "TrainConfig", "TrainingDivergedError", "evaluate", "get_recipe", "load_checkpoint", "load_model",
    "load_run", "train",
]
