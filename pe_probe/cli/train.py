"""``pe-probe train``: train a model with a named recipe and overridable flags into a run directory.

Every flag is generated from a :class:`~pe_probe.training.TrainConfig` field (:mod:`pe_probe.cli._fields`):
the run options, the PE knobs (:class:`~pe_probe.core.pe.PEKnobs`) and one override per hyperparameter.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..core.pe import PEKnobs
from ._fields import add_fields, field_values


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    from ..training import RECIPES, HyperparameterOverrides, RunOptions, TrainConfig

    p = sub.add_parser(
        "train", help="train a model into a run directory",
        description="Train a pe-probe ViT (or any timm model) with a named recipe; unset flags come from the recipe. "
        f"Recipes: {', '.join(RECIPES)} (digits is the default for --dataset digits).",
    )
    groups = (
        (None, RunOptions),
        ("position-embedding knobs (pe_* models; unset: the preset's)", PEKnobs),
        ("hyperparameters (unset: the recipe's)", HyperparameterOverrides),
    )
    for title, cls in groups:
        target = p if title is None else p.add_argument_group(title)
        add_fields(target, TrainConfig, [f.name for f in dataclasses.fields(cls)])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build a TrainConfig from the flags and train; prints the run directory."""
    from .. import train
    from ..training import TrainConfig

    out = train(TrainConfig(**field_values(args, TrainConfig)))
    print(out)
    return 0
