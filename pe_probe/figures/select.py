"""Matching runs against spec selectors: which runs each series of a figure gets, and what is missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..analysis.runs import RunResult
from .specs import ANY, NONE, SeriesSpec, Spec

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
    """Whether a run's field ``value`` satisfies one selector condition (see ``specs.validate_selector``)."""
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
    raise ValueError(f"unknown need {need!r}")


@dataclass
class Selection:
    """The runs chosen for each series of a spec, in series order, and why anything is missing."""

    series: list[SeriesSpec] = field(default_factory=list)
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
    return (" with " + " and ".join({"summary": "a summary (finished training)", "report": "a probe report"}[n]
                                    for n in needs)) if needs else ""


def _pick(spec: Spec, series: SeriesSpec, runs: Sequence[RunResult], sel: Selection) -> None:
    matched = [r for r in runs if matches(r, series.select)]
    usable = [r for r in matched if all(_has(r, n) for n in spec.needs)]
    if series.prefer:  # runs matching ``prefer`` first, otherwise in the given order
        usable.sort(key=lambda r: not matches(r, series.prefer))
    for r in matched:
        if r not in usable:
            lacking = [n for n in spec.needs if not _has(r, n)]
            sel.notes.append(f"run {r.name!r} matches series {series.key!r} but has no {' or '.join(lacking)}")
    if series.take == "one" and len(usable) > 1:
        sel.notes.append(f"series {series.key!r}: used run {usable[0].name!r}; also matched "
                         + ", ".join(repr(r.name) for r in usable[1:]))
        usable = usable[:1]
    sel.runs[series.key] = usable


def _group_series(spec: Spec, runs: Sequence[RunResult]) -> list[SeriesSpec]:
    """One series per distinct value tuple of ``spec.group.by`` among the runs that match its select."""
    group = spec.group
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


def select_runs(spec: Spec, runs: Sequence[RunResult]) -> Selection:
    """Choose the runs of every series of ``spec``; ``Selection.missing`` says what would be needed."""
    sel = Selection()
    needs = _needs_text(spec.needs)
    if spec.group is not None:
        sel.series = _group_series(spec, runs)
        for s in sel.series:
            _pick(spec, s, runs, sel)
        have = len(sel.present())
        if have < spec.group.min_groups:
            by = ", ".join(spec.group.by)
            sel.missing.append(
                f"runs matching {describe(spec.group.select)}{needs}, in at least {spec.group.min_groups} "
                f"different combinations of {by} (found {have})"
            )
        return sel
    sel.series = list(spec.series)
    for s in sel.series:
        _pick(spec, s, runs, sel)
    absent = [s for s in sel.series if not sel.runs[s.key]]
    if spec.require == "all":
        lacking = [s for s in absent if s.required]
    else:
        lacking = absent if len(absent) == len(sel.series) else []
    wants = [f"{s.label} ({s.key}): a run with {describe(s.select)}{needs}" for s in lacking]
    if spec.require == "any" and wants:
        wants = ["at least one of: " + "; ".join(wants)]
    sel.missing.extend(wants)
    if spec.require == "all" and not lacking and not sel.present():
        sel.missing.append("at least one run" + needs)
    return sel
