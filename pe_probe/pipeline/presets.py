"""Which runs each reproduction preset trains: the paper's comparisons as data.

A preset is a list of :class:`RunPlan` (a run name plus its PE knobs). The recipe (model size, epochs,
optimizer) is the training code's choice for the data set (:func:`pe_probe.training.resolve_run`) unless the
caller overrides it, so the same run list serves the quick CPU reproduction on digits and the paper's GPU
recipes on CIFAR-100 or ImageNet; the Table 5 runs are placed on the blocks of the model that recipe builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UnknownNameError


@dataclass(frozen=True)
class RunPlan:
    """One run of a preset: directory ``name``, a display ``label`` and its TrainConfig PE options."""

    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)


def _knobs(pe_mode: str, global_pool: str, **extra: Any) -> dict[str, Any]:
    return {"pe_mode": pe_mode, "global_pool": global_pool, **extra}


#: The runs behind Figs 1, 2, 4, 5, 6, 7, 8 and the LaPE similarity maps.
QUICK: tuple[RunPlan, ...] = (
    RunPlan("default", "Default (class token)", _knobs("default", "token")),
    RunPlan("gap", "GAP", _knobs("default", "avg")),
    RunPlan("lape", "Layer-wise (LaPE)", _knobs("lape", "token")),
    RunPlan("lape_gap", "GAP + Layer-wise", _knobs("lape", "avg")),
    RunPlan("pvg", "PVG", _knobs("pvg", "avg")),
    RunPlan("mpvg", "MPVG", _knobs("mpvg", "avg")),
    RunPlan("pvg_token", "PVG (class token)", _knobs("pvg", "token")),
    RunPlan("gap_last_pe", "GAP + PE in Last LN", _knobs("default", "avg", last_ln_pe=0)),
)


def table5_layers(depth: int) -> tuple[int, ...]:
    """The paper's pos_5, pos_8, pos_11 of a 12-block DeiT, mapped onto a ``depth``-block model: blocks of
    ``1..depth-1`` (the blocks an MPVG model feeds a PE), so every Table 5 run is valid for its model (7 blocks:
    3, 4, 6; none for a 1-block model)."""
    return tuple(sorted({max(1, round(x * (depth - 1) / 11)) for x in (5, 8, 11)} & set(range(1, depth))))


def ablation_plans(depth: int) -> tuple[RunPlan, ...]:
    """Table 5 (which pos_k feeds the Last LN) and Table 6 (layer 0, hierarchical, x+PE) runs of MPVG."""
    plans = [RunPlan(f"mpvg_last_pos{k}", f"MPVG, Last LN fed pos_{k}", _knobs("mpvg", "avg", last_ln_pe=k))
             for k in table5_layers(depth)]
    for layer0 in (False, True):
        for hier in (True, False):
            for add in (True, False):
                if (layer0, hier, add) == (False, True, True):
                    continue  # that is MPVG itself, already in QUICK
                name = f"mpvg_l0{int(layer0)}_h{int(hier)}_x{int(add)}"
                label = f"MPVG layer0={'yes' if layer0 else 'no'}, hier={'yes' if hier else 'no'}, x+PE={'yes' if add else 'no'}"
                plans.append(RunPlan(name, label, _knobs("mpvg", "avg", pe_layer0=layer0, pe_hierarchical=hier,
                                                         pe_input_add=add)))
    return tuple(plans)


PRESET_NAMES = ("quick", "ablations", "paper")

#: Seeds per run when ``seeds`` is not given: three for the quick preset (intervals need at least two), one for
#: the GPU-sized presets (pass ``seeds`` to get intervals there too).
DEFAULT_SEEDS = {"quick": 3, "ablations": 1, "paper": 1}
#: Probing during training in reproduce: every this many epochs (and the last), on this many validation images.
PROBE_EVERY, PROBE_IMAGES = 4, 128
#: Epochs of the quick preset on digits (the digits recipe has 20). The slowest learners, Default and GAP, reach
#: 67-86 % top-1 after 12 epochs, 89-92 % after 20 and 93-96 % after 24 (seeds 1-2), so accuracy differences at
#: fewer epochs measure speed of convergence more than the scheme. 3 seeds x 8 runs at 24 epochs take 5-8 minutes
#: on a quiet 2-core CPU, the probes and causal tests included (BENCHMARKS.md, summary table and section 4).
#: An explicit ``epochs`` wins.
QUICK_DIGITS_EPOCHS = 24


def preset_plans(preset: str, depth: int) -> tuple[RunPlan, ...]:
    """The runs of ``preset`` for a model with ``depth`` blocks (``quick``, ``ablations`` or ``paper``)."""
    if preset == "quick":
        return QUICK
    if preset in ("ablations", "paper"):
        return QUICK + ablation_plans(depth)
    raise UnknownNameError(f"unknown preset {preset!r}; valid values: {PRESET_NAMES}")
