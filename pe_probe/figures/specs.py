"""Declarative figure/table specs: ``analyses/specs/*.toml``, loaded and validated with ``tomllib``.

A spec names the runs a figure needs (selectors on run config fields), the plot that draws it and its
options; ``render.render_all`` does the rest. The format is documented in ``docs/figures.md``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnknownNameError
from ..paper import REFERENCES

KINDS = ("figure", "table")
NEEDS = ("summary", "report")
TAKES = ("all", "one")

#: Flat selector fields (``RunResult.fields()``); anything else must be a dotted path under ``ROOTS``.
FIELDS = (
    "name", "role", "label", "model", "backbone", "num_classes", "dataset", "img_size", "in_chans",
    "pe_mode", "depth", "embed_dim", "num_heads", "patch_size", "mlp_ratio",
    # PEConfig fields (pe_probe.models.config.PEConfig), mirrored here to keep this layer torch-free
    "layerwise", "input_add", "layer0", "hierarchical", "last_ln_pe", "global_pool", "pe_type",
)
ROOTS = ("model_kwargs", "pe_config", "data", "recipe", "summary", "meta")
#: Operators of an inline-table condition, e.g. ``last_ln_pe = { in = [0, 5] }``.
OPERATORS = ("in", "not_in", "ne", "null")
#: Reserved strings: ``"none"`` matches a null (or absent) field, ``"any"`` any non-null value.
NONE, ANY = "none", "any"

_TOP_KEYS = {"id", "title", "caption", "kind", "plot", "needs", "paper", "require", "series", "group", "options"}
_SERIES_KEYS = {"key", "label", "select", "prefer", "required", "take"}
_GROUP_KEYS = {"select", "by", "min_groups"}


@dataclass(frozen=True)
class SeriesSpec:
    """One named group of runs in a figure (a bar, a line, a row of maps)."""

    key: str
    label: str
    select: Mapping[str, Any]
    required: bool = True
    take: str = "all"
    prefer: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupSpec:
    """Series made from the data: the runs matching ``select``, grouped by the values of ``by``."""

    select: Mapping[str, Any]
    by: tuple[str, ...]
    min_groups: int = 1


@dataclass(frozen=True)
class Spec:
    """One figure or table: what it shows, which runs it needs and which plot draws it."""

    id: str
    title: str
    caption: str
    kind: str
    plot: str
    needs: tuple[str, ...] = ()
    paper: str | None = None
    require: str = "all"
    series: tuple[SeriesSpec, ...] = ()
    group: GroupSpec | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<memory>"


def default_spec_dir() -> Path:
    """The repository's ``analyses/specs`` folder."""
    return Path(__file__).resolve().parents[2] / "analyses" / "specs"


def load_specs(spec_dir: str | Path | None = None) -> list[Spec]:
    """Every ``*.toml`` spec in ``spec_dir`` (default: ``default_spec_dir()``), validated, in file order.

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` for duplicate ids.
    """
    spec_dir = Path(spec_dir) if spec_dir is not None else default_spec_dir()
    if not spec_dir.is_dir():
        raise FileNotFoundError(f"spec folder {spec_dir} does not exist")
    specs = [load_spec(p) for p in sorted(spec_dir.glob("*.toml"))]
    seen: dict[str, str] = {}
    for s in specs:
        if s.id in seen:
            raise ValueError(f"spec id {s.id!r} is used by both {seen[s.id]} and {s.source}")
        seen[s.id] = s.source
    return specs


def load_spec(path: str | Path) -> Spec:
    """Read and validate one spec file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Mapping[str, Any], source: str = "<memory>") -> Spec:
    """Validate a spec given as a dict (the parsed TOML). Errors name ``source`` and the bad key.

    Raises ``UnknownNameError`` for an unknown plot or paper reference, ``ValueError`` for anything else.
    """
    from .registry import plot_entry  # registry imports the builders, which import this module

    def fail(msg: str) -> ValueError:
        return ValueError(f"{source}: {msg}")

    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown key(s) {sorted(unknown)}; valid keys: {sorted(_TOP_KEYS)}")
    for key in ("id", "title", "caption", "kind", "plot"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise fail(f"{key!r} is required and must be a non-empty string")
    if raw["kind"] not in KINDS:
        raise fail(f"kind={raw['kind']!r} is not one of {KINDS}")
    try:
        entry = plot_entry(raw["plot"])
    except UnknownNameError as exc:
        raise UnknownNameError(f"{source}: {exc}") from None
    if entry.kind != raw["kind"]:
        raise fail(f"plot {raw['plot']!r} draws a {entry.kind}, but kind={raw['kind']!r}")
    needs = tuple(raw.get("needs", ()))
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise fail(f"needs {bad} unknown; valid values: {NEEDS}")
    paper = raw.get("paper")
    if paper is not None and paper not in REFERENCES:
        raise UnknownNameError(f"{source}: paper reference {paper!r} is unknown; valid names: {sorted(REFERENCES)}")
    require = raw.get("require", "all")
    if require not in ("all", "any"):
        raise fail(f"require={require!r} must be 'all' or 'any'")

    series = tuple(_parse_series(s, i, fail) for i, s in enumerate(raw.get("series", [])))
    keys = [s.key for s in series]
    if len(set(keys)) != len(keys):
        raise fail(f"series keys must be unique, got {keys}")
    group = _parse_group(raw["group"], fail) if "group" in raw else None
    if bool(series) == bool(group):
        raise fail("give either [[series]] (named run groups) or [group] (groups from the data), not both or neither")

    options = dict(raw.get("options", {}))
    bad = sorted(set(options) - set(entry.options))
    if bad:
        raise fail(f"option(s) {bad} unknown to plot {raw['plot']!r}; valid options: {sorted(entry.options)}")
    return Spec(
        id=raw["id"], title=raw["title"], caption=raw["caption"], kind=raw["kind"], plot=raw["plot"],
        needs=needs, paper=paper, require=require, series=series, group=group,
        options={**entry.options, **options}, source=source,
    )


def _parse_series(raw: Any, i: int, fail) -> SeriesSpec:
    if not isinstance(raw, Mapping):
        raise fail(f"series[{i}] must be a table")
    unknown = set(raw) - _SERIES_KEYS
    if unknown:
        raise fail(f"series[{i}]: unknown key(s) {sorted(unknown)}; valid keys: {sorted(_SERIES_KEYS)}")
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise fail(f"series[{i}]: 'key' is required")
    take = raw.get("take", "all")
    if take not in TAKES:
        raise fail(f"series {key!r}: take={take!r} must be one of {TAKES}")
    where = f"series {key!r}"
    return SeriesSpec(key=key, label=str(raw.get("label", key)),
                      select=validate_selector(raw.get("select", {}), fail, where),
                      required=bool(raw.get("required", True)), take=take,
                      prefer=validate_selector(raw.get("prefer", {}), fail, where + " prefer"))


def _parse_group(raw: Any, fail) -> GroupSpec:
    if not isinstance(raw, Mapping):
        raise fail("[group] must be a table")
    unknown = set(raw) - _GROUP_KEYS
    if unknown:
        raise fail(f"[group]: unknown key(s) {sorted(unknown)}; valid keys: {sorted(_GROUP_KEYS)}")
    by = raw.get("by")
    by = (by,) if isinstance(by, str) else tuple(by or ())
    if not by:
        raise fail("[group]: 'by' must name at least one field")
    for f in by:
        _check_field(f, fail, "[group] by")
    min_groups = raw.get("min_groups", 1)
    if not isinstance(min_groups, int) or min_groups < 1:
        raise fail(f"[group]: min_groups={min_groups!r} must be a positive integer")
    return GroupSpec(select=validate_selector(raw.get("select", {}), fail, "[group]"), by=by, min_groups=min_groups)


def _check_field(name: str, fail, where: str) -> None:
    if name in FIELDS:
        return
    head, dot, rest = name.partition(".")
    if dot and head in ROOTS and rest:
        return
    raise fail(f"{where}: selector field {name!r} is unknown; valid fields: {list(FIELDS)} "
               f"or a dotted path under {list(ROOTS)}")


def validate_selector(select: Any, fail=None, where: str = "select") -> dict[str, Any]:
    """Check a selector ``{field: condition}`` and return it as a dict. Raises ``ValueError``.

    A condition is a value (equality; ``"none"`` = null, ``"any"`` = not null), a list (any of), or an
    inline table of operators ``in``, ``not_in``, ``ne``, ``null`` (true/false).
    """
    fail = fail or (lambda msg: ValueError(msg))
    if not isinstance(select, Mapping):
        raise fail(f"{where}: 'select' must be a table of field = condition")
    for name, cond in select.items():
        _check_field(name, fail, where)
        if isinstance(cond, Mapping):
            bad = sorted(set(cond) - set(OPERATORS))
            if bad or not cond:
                raise fail(f"{where}: condition on {name!r} has unknown operator(s) {bad}; valid: {OPERATORS}")
            for op in ("in", "not_in"):
                if op in cond and not isinstance(cond[op], list):
                    raise fail(f"{where}: {name!r}.{op} must be a list")
            if "null" in cond and not isinstance(cond["null"], bool):
                raise fail(f"{where}: {name!r}.null must be true or false")
        elif isinstance(cond, list):
            if not cond:
                raise fail(f"{where}: condition on {name!r} is an empty list, which matches nothing")
        elif not isinstance(cond, (str, int, float, bool)):
            raise fail(f"{where}: condition on {name!r} has unsupported type {type(cond).__name__}")
    return dict(select)
