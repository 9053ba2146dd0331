"""Reproduction pipeline: presets of runs, training, probing and rendering in one call."""

from .attention import attention_run, position_tests, resolution_run, resolution_sweep, shuffle_run
from .causal import ablate, ablate_run, attribute, attribute_run
from .history import ProbeHistory, read_history, train
from .presets import PRESET_NAMES, QUICK, RunPlan, ablation_plans, preset_plans, table5_layers
from .run import ReproduceResult, find_runs, probe_run, render_figures, reproduce

__all__ = [
    "attention_run", "position_tests", "resolution_run", "resolution_sweep", "shuffle_run",
    "ablate", "ablate_run", "attribute", "attribute_run",
    "ProbeHistory", "read_history", "train",
    "PRESET_NAMES", "QUICK", "ReproduceResult", "RunPlan", "ablation_plans", "find_runs", "render_figures", "preset_plans",
    "probe_run", "reproduce", "table5_layers",
]
