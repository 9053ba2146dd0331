"""PE-delivery configuration: the paper's knobs as one frozen value, with named presets.

This is the only place a PE knob is defined. Each knob is a field of :class:`PEConfig` whose metadata
names its constructor keyword (``kwarg``) and says what it does (``help``); everything else is derived
from those fields: the keywords :class:`~pe_probe.models.PEVisionTransformer` accepts
(:func:`resolve_pe_config`), the override fields of a training config (:class:`PEKnobs`), the
``pe-probe train`` flags and the run selectors of the figure specs. A new knob is one new field here
(plus the model code that honours it). Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Optional, get_args, get_type_hints

PEMode = Literal["default", "lape", "pvg", "mpvg"]
Pooling = Literal["token", "avg"]
PEType = Literal["learned", "sincos"]

PE_MODES: tuple[str, ...] = get_args(PEMode)
POOLINGS: tuple[str, ...] = get_args(Pooling)
PE_TYPES: tuple[str, ...] = get_args(PEType)

#: Value of an override that keeps the preset's choice where None is itself meaningful (``last_ln_pe``).
PRESET = "preset"


def _knob(default: Any, kwarg: str, help: str) -> Any:
    return field(default=default, metadata={"kwarg": kwarg, "help": help})


@dataclass(frozen=True)
class PEConfig:
    """How the position embedding reaches the network (docs/science.md, "The four PE-delivery schemes").

    ``layerwise`` is fixed by the preset; every other field is a knob a user may override, under the
    constructor keyword in its metadata (``input_add`` is the keyword ``pe_input_add``, ...).
    """

    layerwise: bool = field(default=False, metadata={
        "help": "blocks receive their own LayerNorm'ed PE inside the attention input (set by the preset)"})
    input_add: bool = _knob(True, "pe_input_add", "add pos_0 to the input tokens (x_0 = p + pos_0)")
    layer0: bool = _knob(False, "pe_layer0", "with a layer-wise PE, block 0 receives one too (LaPE)")
    hierarchical: bool = _knob(True, "pe_hierarchical",
                               "layer-wise PE chain pe_l = LN'_l(pe_prev) (else LN'_l(pos_0))")
    last_ln_pe: Optional[int] = _knob(None, "last_ln_pe",
                                      "PE added after the Last LN through LN'_last: none, 0 (pos_0, MPVG) "
                                      "or k (the PE block k receives)")
    global_pool: Pooling = _knob("token", "global_pool", "pooling: class token or global average pooling")
    pe_type: PEType = _knob("learned", "pe_type", "learned absolute PE or a fixed 2-D sin-cos table")

    def replace(self, **changes: Any) -> "PEConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_kwargs(self) -> dict[str, Any]:
        """The knob values as model constructor keywords (``pe_input_add=...``; ``pe_mode`` not included).

        A nullable knob set to None is given as ``"none"``: ``timm.create_model`` drops None-valued keywords,
        which would silently bring back the preset's value (an ``mpvg`` model with ``last_ln_pe=None`` would be
        built with ``last_ln_pe=0``).
        """
        out = {k.kwarg: getattr(self, k.field) for k in KNOBS}
        out.update({k.kwarg: "none" for k in KNOBS if k.nullable and out[k.kwarg] is None})
        return out

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

    def pe_blocks(self, depth: int) -> list[int]:
        """Indices of the blocks that receive a layer-wise PE."""
        return [i for i, src in enumerate(self.pe_sources(depth)) if src is not None]

    def validate(self, depth: int) -> None:
        """Raise ``ValueError`` naming the knob when the configuration cannot be built."""
        if self.global_pool not in POOLINGS:
            raise ValueError(f"global_pool={self.global_pool!r} is not supported; valid values: {POOLINGS}")
        if self.pe_type not in PE_TYPES:
            raise ValueError(f"pe_type={self.pe_type!r} is not supported; valid values: {PE_TYPES}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth={depth!r} must be an int of at least 1")
        for name in ("layerwise", "input_add", "layer0", "hierarchical"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"pe knob {name}={getattr(self, name)!r} must be a bool")
        k = self.last_ln_pe
        if k is None or (k == 0 and not isinstance(k, bool)):
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


class Knob(NamedTuple):
    """One user-settable PE knob: its constructor keyword, the :class:`PEConfig` field it sets, its type
    (``bool``, ``int | None`` or a ``Literal``), its choices (Literal knobs), its help text, and whether None
    is one of its values (then ``"preset"`` is how an override keeps the preset's value)."""

    kwarg: str
    field: str
    type: Any
    choices: tuple[Any, ...] | None
    help: str
    nullable: bool


def _knobs() -> tuple[Knob, ...]:
    hints = get_type_hints(PEConfig)
    out = []
    for f in dataclasses.fields(PEConfig):
        if "kwarg" not in f.metadata:
            continue
        typ = hints[f.name]
        choices = get_args(typ) if getattr(typ, "__origin__", None) is Literal else None
        nullable = type(None) in get_args(typ)
        out.append(Knob(f.metadata["kwarg"], f.name, typ, choices, f.metadata["help"], nullable))
    return tuple(out)


#: Every user-settable knob, in PEConfig field order (derived from the fields above).
KNOBS: tuple[Knob, ...] = _knobs()
KNOB_NAMES: tuple[str, ...] = tuple(k.kwarg for k in KNOBS)

#: Named PE-delivery presets (docs/science.md, table of schemes). Pooling defaults differ per preset.
PRESETS: dict[str, PEConfig] = {
    "default": PEConfig(layerwise=False, input_add=True, global_pool="token"),
    "lape": PEConfig(layerwise=True, input_add=False, layer0=True, hierarchical=True, global_pool="token"),
    "pvg": PEConfig(layerwise=True, input_add=True, layer0=False, hierarchical=True, global_pool="avg"),
    "mpvg": PEConfig(layerwise=True, input_add=True, layer0=False, hierarchical=True, last_ln_pe=0,
                     global_pool="avg"),
}
assert tuple(PRESETS) == PE_MODES


def _keeps_preset(knob: Knob, value: Any) -> bool:
    """Whether an override ``value`` means "keep the preset's choice" (None, or PRESET where None counts)."""
    if knob.nullable:
        return isinstance(value, str) and value.lower() == PRESET
    return value is None


def resolve_pe_config(pe_mode: str | None = "default", **knobs: Any) -> PEConfig:
    """Start from preset ``pe_mode`` (None: ``"default"``) and apply the knob overrides in ``knobs``.

    ``knobs`` are keyed by constructor keyword (:data:`KNOB_NAMES`). An override of None keeps the
    preset's value, except for ``last_ln_pe`` where None means "no PE in the Last LN": there ``"preset"``
    keeps the preset's value (and ``"none"`` is accepted for None). Unknown names and knobs a preset does
    not take raise ``ValueError``.
    """
    pe_mode = "default" if pe_mode is None else pe_mode
    if pe_mode not in PRESETS:
        raise ValueError(f"pe_mode={pe_mode!r} is unknown; valid values: {tuple(PRESETS)}")
    unknown = sorted(set(knobs) - set(KNOB_NAMES))
    if unknown:
        raise ValueError(f"unknown PE knob(s) {unknown}; valid knobs: {KNOB_NAMES}")
    cfg = PRESETS[pe_mode]
    changes: dict[str, Any] = {}
    for knob in KNOBS:
        if knob.kwarg not in knobs or _keeps_preset(knob, knobs[knob.kwarg]):
            continue
        value = knobs[knob.kwarg]
        if knob.nullable and isinstance(value, str) and value.lower() == "none":
            value = None
        changes[knob.field] = value
    if not cfg.layerwise:
        for knob in KNOBS:
            if knob.field in ("layer0", "hierarchical") and knob.field in changes \
                    and changes[knob.field] != getattr(cfg, knob.field):
                raise ValueError(f"{knob.kwarg} only applies to layer-wise presets ('lape', 'pvg', 'mpvg'), "
                                 f"not pe_mode={pe_mode!r}")
    return cfg.replace(**changes)


def _pe_knobs_class() -> type:
    """:class:`PEKnobs`, generated from :data:`KNOBS` so that no knob is listed twice."""
    fields: list[tuple[str, Any, Any]] = [
        ("pe_mode", Optional[str], field(default=None, metadata={
            "help": f"PE-delivery preset, one of {', '.join(PE_MODES)} (default: default)",
            "choices": PE_MODES}))]
    for k in KNOBS:
        default = PRESET if k.nullable else None
        fields.append((k.kwarg, Any if k.nullable else Optional[k.type],
                       field(default=default, metadata={"help": k.help, "choices": k.choices, "knob": k})))

    def resolve(self) -> PEConfig:
        """The PEConfig these overrides give (see :func:`resolve_pe_config`)."""
        return resolve_pe_config(self.pe_mode, **{k.kwarg: getattr(self, k.kwarg) for k in KNOBS})

    def given(self) -> dict[str, Any]:
        """The overrides actually set (not None / ``"preset"``), keyed by constructor keyword."""
        out = {} if self.pe_mode is None else {"pe_mode": self.pe_mode}
        out.update({k.kwarg: getattr(self, k.kwarg) for k in KNOBS if not _keeps_preset(k, getattr(self, k.kwarg))})
        return out

    cls = dataclasses.make_dataclass(
        "PEKnobs", fields, frozen=True, kw_only=True, namespace={"resolve": resolve, "given": given},
    )
    cls.__module__ = __name__
    cls.__doc__ = ("A preset name plus PE knob overrides, as a user gives them (None keeps the preset's "
                   "value; ``last_ln_pe='preset'`` likewise). Fields are generated from PEConfig.")
    return cls


#: The PE part of a training configuration: ``pe_mode`` plus one optional override per knob.
PEKnobs = _pe_knobs_class()
