"""Which runs a figure gets: run queries (named series of selectors, or groups from the data) and their matching.

A figure spec (:mod:`pe_probe.figures.spec`) carries a :class:`RunQuery`; :func:`select_runs` answers it over
a list of :class:`~pe_probe.analysis.runs.RunResult` with a :class:`Selection` (the runs of each series, and
what is missing). Selector fields are the flat fields of :meth:`RunResult.fields` (the PE fields come from
:class:`~pe_probe.core.pe.PEConfig`) or dotted paths under :data:`ROOTS`. No torch, no matplotlib.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.pe import PEConfig
from .runs import RunResult

NEEDS = ("summary", "report", "history", "ablation", "attribution", "attention", "shuffle", "resolution")
TAKES = ("all", "one")

#: Flat selector fields (``RunResult.fields()``); anything else must be a dotted path under ``ROOTS``.
FIELDS: tuple[str, ...] = (
    "name", "role", "label", "seed", "model", "backbone", "num_classes", "dataset", "img_size", "in_chans",
    "pe_mode", "depth", "embed_dim", "num_heads", "patch_size", "mlp_ratio",
    *(f.name for f in dataclasses.fields(PEConfig)),
)
ROOTS = ("model_kwargs", "pe_config", "data", "recipe", "summary", "meta")
#: Operators of an inline-table condition, e.g. ``last_ln_pe = { in = [0, 5] }``.
OPERATORS = ("in", "not_in", "ne", "null")
#: Reserved strings: ``"none"`` matches a null (or absent) field, ``"any"`` any non-null value.
NONE, ANY = "none", "any"

_SERIES_KEYS = {"key", "label", "select", "prefer", "required", "take"}
_GROUP_KEYS = {"select", "by", "min_groups"}

Fail = Callable[[str], Exception]


@dataclass(frozen=True)
class SeriesSpec:
    """One named group of runs in a figure (a bar, a line, a row of maps)."""

    key: str
    label: str
    select: Mapping[str, Any]
    required: bool = True
    take: str = "all"  #: "all" matching runs, or "one" configuration (the first match's, with all its seeds)
    prefer: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupSpec:
    """Series made from the data: the runs matching ``select``, grouped by the values of ``by``."""

    select: Mapping[str, Any]
    by: tuple[str, ...]
    min_groups: int = 1


@dataclass(frozen=True)
class RunQuery:
    """The runs a figure needs: named ``series`` or a ``group``; every selected run must have ``needs``
    (``"summary"``: finished training, ``"report"``: probed); ``require`` = ``"all"`` required series or
    ``"any"`` series."""

    series: tuple[SeriesSpec, ...] = ()
    group: GroupSpec | None = None
    needs: tuple[str, ...] = ()
    require: str = "all"


def parse_query(raw: Mapping[str, Any], fail: Fail) -> RunQuery:
    """A :class:`RunQuery` from a spec's ``series`` / ``group`` / ``needs`` / ``require`` keys (``fail(msg)``
    builds the exception to raise, naming the spec file)."""
    needs = tuple(raw.get("needs", ()))
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise fail(f"needs {bad} unknown; valid values: {NEEDS}")
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
    return RunQuery(series=series, group=group, needs=needs, require=require)


def _parse_series(raw: Any, i: int, fail: Fail) -> SeriesSpec:
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


def _parse_group(raw: Any, fail: Fail) -> GroupSpec:
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
        check_field(f, fail, "[group] by")
    min_groups = raw.get("min_groups", 1)
    if not isinstance(min_groups, int) or min_groups < 1:
        raise fail(f"[group]: min_groups={min_groups!r} must be a positive integer")
    return GroupSpec(select=validate_selector(raw.get("select", {}), fail, "[group]"), by=by, min_groups=min_groups)


def check_field(name: str, fail: Fail, where: str) -> None:
    """Raise ``fail(...)`` unless ``name`` is a selector field: one of :data:`FIELDS` or a dotted path under
    :data:`ROOTS`."""
    if name in FIELDS:
        return
    head, dot, rest = name.partition(".")
    if dot and head in ROOTS and rest:
        return
    raise fail(f"{where}: selector field {name!r} is unknown; valid fields: {list(FIELDS)} "
               f"or a dotted path under {list(ROOTS)}")


def validate_selector(select: Any, fail: Fail | None = None, where: str = "select") -> dict[str, Any]:
    """Check a selector ``{field: condition}`` and return it as a dict. Raises ``ValueError``.

    A condition is a value (equality; ``"none"`` = null, ``"any"`` = not null), a list (any of), or an
    inline table of operators ``in``, ``not_in``, ``ne``, ``null`` (true/false).
    """
    fail = fail or (lambda msg: ValueError(msg))
    if not isinstance(select, Mapping):
        raise fail(f"{where}: 'select' must be a table of field = condition")
    for name, cond in select.items():
        check_field(name, fail, where)
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

_ABSENT = object()


def _value(run: RunResult, name: str) -> Any:
    try:
        return run.lookup(name)
    except KeyError:
        return _ABSENT


def _equal(a: Any, b: Any) -> bool:
    """Equality that keeps bools apart from ints (``True != 1`` here) and strings case-insensitive."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b


def condition_holds(value: Any, cond: Any) -> bool:
    """Whether a run's field ``value`` satisfies one selector condition (see :func:`validate_selector`)."""
    is_null = value is None or value is _ABSENT
    if isinstance(cond, Mapping):
        ok = True
        if "null" in cond:
            ok &= is_null == cond["null"]
        if "in" in cond:
            ok &= any(condition_holds(value, c) for c in cond["in"])
        if "not_in" in cond:
            ok &= not any(condition_holds(value, c) for c in cond["not_in"])
        if "ne" in cond:
            ok &= not condition_holds(value, cond["ne"])
        return ok
    if isinstance(cond, list):
        return any(condition_holds(value, c) for c in cond)
    if isinstance(cond, str) and cond.lower() == NONE:
        return is_null
    if isinstance(cond, str) and cond.lower() == ANY:
        return not is_null
    return not is_null and _equal(value, cond)


def matches(run: RunResult, select: Mapping[str, Any]) -> bool:
    """Whether ``run`` satisfies every condition of ``select``."""
    return all(condition_holds(_value(run, name), cond) for name, cond in select.items())


def _fmt(v: Any) -> str:
    if v is None:
        return NONE
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k} {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return " | ".join(_fmt(x) for x in v)
    return str(v)


def describe(select: Mapping[str, Any]) -> str:
    """A selector as one readable line, e.g. ``layerwise=true, last_ln_pe=none``."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in select.items()) or "any run"


def _has(run: RunResult, need: str) -> bool:
    if need == "summary":
        return run.top1 is not None
    if need == "report":
        return run.report is not None
    if need in ("history", "ablation", "attribution", "attention", "shuffle", "resolution"):
        frame = getattr(run, need)
        return frame is not None and len(frame) > 0
    raise ValueError(f"unknown need {need!r}")


@dataclass
class Selection:
    """The runs chosen for each series of a spec, in series order, and why anything is missing."""

    series: list[SeriesSpec] = field(default_factory=list)
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    group_by: tuple[str, ...] = ()  #: the ``[group] by`` fields when the series came from the data

    @property
    def ok(self) -> bool:
        """True when the spec can be drawn."""
        return not self.missing

    def present(self) -> list[SeriesSpec]:
        """The series that got at least one run."""
        return [s for s in self.series if self.runs.get(s.key)]

    def all_runs(self) -> list[RunResult]:
        """Every selected run once, in series order."""
        seen: dict[int, RunResult] = {}
        for s in self.series:
            for r in self.runs.get(s.key, []):
                seen.setdefault(id(r), r)
        return list(seen.values())


def _needs_text(needs: Sequence[str]) -> str:
    what = {"summary": "a summary (finished training)", "report": "a probe report",
            "history": "a probe history (trained with --probe-every)",
            "ablation": "a PE ablation (ablation.csv)", "attribution": "a PE attribution (attribution.csv)",
            "attention": "attention statistics (attention.csv)", "shuffle": "a patch-shuffle test (shuffle.csv)",
            "resolution": "a resolution sweep (resolution.csv)"}
    return (" with " + " and ".join(what[n] for n in needs)) if needs else ""


def _pick(query: RunQuery, series: SeriesSpec, runs: Sequence[RunResult], sel: Selection) -> None:
    matched = [r for r in runs if matches(r, series.select)]
    usable = [r for r in matched if all(_has(r, n) for n in query.needs)]
    if series.prefer:  # runs matching ``prefer`` first, otherwise in the given order
        usable.sort(key=lambda r: not matches(r, series.prefer))
    for r in matched:
        if r not in usable:
            lacking = [n for n in query.needs if not _has(r, n)]
            sel.notes.append(f"run {r.name!r} matches series {series.key!r} but has no {' or '.join(lacking)}")
    if series.take == "one" and usable:  # one configuration: the first run's, with all its seeds
        chosen = [r for r in usable if r.config_key == usable[0].config_key]
        others = [r for r in usable if r.config_key != usable[0].config_key]
        if others:
            sel.notes.append(f"series {series.key!r}: used run {usable[0].name!r}"
                             + (f" and its {len(chosen) - 1} other seed(s)" if len(chosen) > 1 else "")
                             + "; also matched " + ", ".join(repr(r.name) for r in others))
        usable = chosen
    sel.runs[series.key] = usable


def _group_series(query: RunQuery, runs: Sequence[RunResult]) -> list[SeriesSpec]:
    """One series per distinct value tuple of ``query.group.by`` among the runs that match its select."""
    group = query.group
    assert group is not None
    keys: dict[tuple, SeriesSpec] = {}
    for r in runs:
        if not matches(r, group.select):
            continue
        values = tuple(None if (v := _value(r, f)) is _ABSENT else v for f in group.by)
        if values not in keys:
            select = {**group.select, **{f: (NONE if v is None else v) for f, v in zip(group.by, values)}}
            key = ", ".join(f"{f}={_fmt(v)}" for f, v in zip(group.by, values))
            keys[values] = SeriesSpec(key=key, label=key, select=select, required=False, take="all")
    def order(v: Any) -> tuple:
        if v is None:
            return (2, 0, "")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, v, "")
        return (1, 0, str(v))

    return [keys[k] for k in sorted(keys, key=lambda t: tuple(order(v) for v in t))]


def select_runs(query: RunQuery, runs: Sequence[RunResult]) -> Selection:
    """Choose the runs of every series of ``query``; ``Selection.missing`` says what would be needed."""
    sel = Selection()
    needs = _needs_text(query.needs)
    if query.group is not None:
        sel.group_by = query.group.by
        sel.series = _group_series(query, runs)
        for s in sel.series:
            _pick(query, s, runs, sel)
        have = len(sel.present())
        if have < query.group.min_groups:
            by = ", ".join(query.group.by)
            sel.missing.append(
                f"runs matching {describe(query.group.select)}{needs}, in at least {query.group.min_groups} "
                f"different combinations of {by} (found {have})"
            )
        return sel
    sel.series = list(query.series)
    for s in sel.series:
        _pick(query, s, runs, sel)
    absent = [s for s in sel.series if not sel.runs[s.key]]
    if query.require == "all":
        lacking = [s for s in absent if s.required]
    else:
        lacking = absent if len(absent) == len(sel.series) else []
    wants = [f"{s.label} ({s.key}): a run with {describe(s.select)}{needs}" for s in lacking]
    if query.require == "any" and wants:
        wants = ["at least one of: " + "; ".join(wants)]
    sel.missing.extend(wants)
    if query.require == "all" and not lacking and not sel.present():
        sel.missing.append("at least one run" + needs)
    return sel
