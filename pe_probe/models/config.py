"""PE-delivery configuration: the paper's knobs as one frozen value, with named presets.

A scheme is data, resolved once when a model is built. See ``docs`` in the README and
``../shared/docs/paper-notes.md`` for the equations each knob switches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

PEMode = Literal["default", "lape", "pvg", "mpvg"]
Pooling = Literal["token", "avg"]
PEType = Literal["learned", "sincos"]

PE_MODES: tuple[str, ...] = get_args(PEMode)
POOLINGS: tuple[str, ...] = get_args(Pooling)
PE_TYPES: tuple[str, ...] = get_args(PEType)


@dataclass(frozen=True)
class PEConfig:
    """How the position embedding reaches the network.

    Attributes:
        layerwise: blocks receive their own LayerNorm'ed PE inside the attention input (LaPE/PVG/MPVG).
        input_add: ``x_0 = p + pos_0`` (True) or ``x_0 = p`` (False).
        layer0: with ``layerwise``, block 0 receives a PE too (LaPE) or not (PVG/MPVG).
        hierarchical: with ``layerwise``, ``pe_l = LN'_l(pe_prev)`` (True) or ``LN'_l(pos_0)`` (False).
        last_ln_pe: which PE is added after the Last LN, through its own LayerNorm ``LN'_last``:
            None (nothing), 0 (``pos_0``, MPVG) or k >= 1 (the PE block k received).
        global_pool: ``"token"`` (class token) or ``"avg"`` (global average pooling, no class token).
        pe_type: ``"learned"`` absolute PE or fixed 2-D ``"sincos"``.
    """

    layerwise: bool = False
    input_add: bool = True
    layer0: bool = False
    hierarchical: bool = True
    last_ln_pe: int | None = None
    global_pool: Pooling = "token"
    pe_type: PEType = "learned"

    def replace(self, **changes) -> "PEConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def pe_sources(self, depth: int) -> tuple[int | None, ...]:
        """For each block, where its PE comes from: None (no PE), -1 (``pos_0``) or j (block j's PE)."""
        self.validate(depth)
        sources: list[int | None] = []
        prev = -1
        for i in range(depth):
            if not self.layerwise or (i == 0 and not self.layer0):
                sources.append(None)
                continue
            sources.append(prev if self.hierarchical else -1)
            prev = i
        return tuple(sources)

    def validate(self, depth: int) -> None:
        """Raise ``ValueError`` naming the knob when the configuration cannot be built."""
        if self.global_pool not in POOLINGS:
            raise ValueError(f"global_pool={self.global_pool!r} is not supported; valid values: {POOLINGS}")
        if self.pe_type not in PE_TYPES:
            raise ValueError(f"pe_type={self.pe_type!r} is not supported; valid values: {PE_TYPES}")
        if depth < 1:
            raise ValueError(f"depth={depth} must be at least 1")
        for name in ("layerwise", "input_add", "layer0", "hierarchical"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"pe knob {name}={getattr(self, name)!r} must be a bool")
        k = self.last_ln_pe
        if k is None or k == 0:
            return
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"last_ln_pe={k!r} must be None, 0 (pos_0) or the index of a block that receives a PE")
        first = 0 if self.layer0 else 1
        valid = list(range(first, depth)) if self.layerwise else []
        if k not in valid:
            raise ValueError(
                f"last_ln_pe={k} names no block that receives a PE; valid values: None, 0 (pos_0)"
                + (f", {first}..{depth - 1}" if valid else " (this scheme has no layer-wise PE)")
            )


#: Named PE-delivery presets (paper-notes, table of schemes). Pooling defaults differ per preset.
PRESETS: dict[str, PEConfig] = {
    "default": PEConfig(layerwise=False, input_add=True, global_pool="token"),
    "lape": PEConfig(layerwise=True, input_add=False, layer0=True, hierarchical=True, global_pool="token"),
    "pvg": PEConfig(layerwise=True, input_add=True, layer0=False, hierarchical=True, global_pool="avg"),
    "mpvg": PEConfig(layerwise=True, input_add=True, layer0=False, hierarchical=True, last_ln_pe=0,
                     global_pool="avg"),
}

_UNSET = object()


def resolve_pe_config(
    pe_mode: str = "default",
    *,
    pe_input_add: bool | None = None,
    pe_layer0: bool | None = None,
    pe_hierarchical: bool | None = None,
    last_ln_pe: int | None | object = _UNSET,
    global_pool: str | None = None,
    pe_type: str | None = None,
) -> PEConfig:
    """Start from preset ``pe_mode`` and apply the given overrides (``None`` keeps the preset's value).

    ``last_ln_pe`` uses a sentinel default because ``None`` is a meaningful value for it.
    """
    if pe_mode not in PRESETS:
        raise ValueError(f"pe_mode={pe_mode!r} is unknown; valid values: {tuple(PRESETS)}")
    cfg = PRESETS[pe_mode]
    changes = {
        "input_add": pe_input_add,
        "layer0": pe_layer0,
        "hierarchical": pe_hierarchical,
        "global_pool": global_pool,
        "pe_type": pe_type,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not cfg.layerwise:
        for knob, field in (("pe_layer0", "layer0"), ("pe_hierarchical", "hierarchical")):
            if field in changes and changes[field] != getattr(cfg, field):
                raise ValueError(
                    f"{knob} only applies to layer-wise presets ('lape', 'pvg', 'mpvg'), not pe_mode={pe_mode!r}"
                )
    cfg = cfg.replace(**changes)
    if last_ln_pe is not _UNSET:
        cfg = cfg.replace(last_ln_pe=last_ln_pe)
    return cfg
