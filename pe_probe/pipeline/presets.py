"""Which runs each reproduction preset trains: the paper's comparisons as data.

A preset is a list of :class:`RunPlan` (a run name plus its PE knobs). The recipe (model size, epochs,
optimizer) comes from the data set unless the caller overrides it, so the same run list serves the quick
CPU reproduction on digits and the paper's GPU recipes on CIFAR-100 or ImageNet.
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
    """The paper's pos_5, pos_8, pos_11 of a 12-block DeiT, mapped onto a ``depth``-block model."""
    return tuple(sorted({max(1, round(x * (depth - 1) / 11)) for x in (5, 8, 11)}))


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


def preset_plans(preset: str, depth: int) -> tuple[RunPlan, ...]:
    """The runs of ``preset`` for a model with ``depth`` blocks (``quick``, ``ablations`` or ``paper``)."""
    if preset == "quick":
        return QUICK
    if preset in ("ablations", "paper"):
        return QUICK + ablation_plans(depth)
    raise UnknownNameError(f"unknown preset {preset!r}; valid values: {PRESET_NAMES}")
