"""Declarative figure/table specs: small TOML files, validated on load.

A spec says what a figure shows (title, caption), which runs it needs (a
:class:`~pe_probe.analysis.select.RunQuery`: named series of selectors or a group), which plot draws it
(:data:`pe_probe.figures.plots.PLOTS`) and the plot's options. The shipped specs are package data
(``pe_probe/figures/specs/*.toml``, read with :mod:`importlib.resources`, so they work from an installed
wheel); users pass their own files or folders. The format is documented in docs/figures.md.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ..analysis.claims import ClaimSpec, parse_claim
from ..analysis.paper import REFERENCES
from ..analysis.select import RunQuery, parse_query
from ..core.errors import UnknownNameError
from .plots import PLOTS

KINDS = ("figure", "table")
#: Spec keys: the figure's own, plus the run-query keys (``series``, ``group``, ``needs``, ``require``).
_TOP_KEYS = {"id", "title", "caption", "kind", "plot", "paper", "options", "claims", "series", "group", "needs",
             "require"}
#: Where the shipped specs live inside the package.
BUILTIN = "builtin"
#: A spec id names its output files: ASCII letters, digits, '_' and '-', starting with a letter or digit.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


@dataclass(frozen=True)
class Spec:
    """One figure or table: what it shows, which runs it needs and which plot draws it."""

    id: str
    title: str
    caption: str
    kind: str
    plot: str
    query: RunQuery
    paper: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    claims: tuple[ClaimSpec, ...] = ()
    source: str = "<memory>"


def builtin_specs_dir() -> Traversable:
    """The folder of the shipped specs (package data; a :class:`~importlib.resources.abc.Traversable`)."""
    return resources.files("pe_probe.figures").joinpath("specs")


def load_specs(spec_dir: str | os.PathLike | Traversable | None = None) -> list[Spec]:
    """Every ``*.toml`` spec in ``spec_dir`` (default: the shipped specs), validated, in file-name order.

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` for duplicate ids.
    """
    folder: Any = builtin_specs_dir() if spec_dir is None else spec_dir
    if isinstance(folder, (str, os.PathLike)):
        folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"spec folder {folder} does not exist")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    return unique([load_spec(f) for f in files])


def resolve_specs(items: Iterable[Spec | str | os.PathLike] | None) -> list[Spec]:
    """Specs from a mix of :class:`Spec` objects, ``.toml`` files, folders of them and ``"builtin"`` (the shipped
    specs); None means the shipped specs. Ids must be unique across all of them (``ValueError``)."""
    if items is None:
        return load_specs()
    out: list[Spec] = []
    for item in items:
        if isinstance(item, Spec):
            out.append(item)
        elif str(item) == BUILTIN:
            out.extend(load_specs())
        elif Path(item).is_dir():
            out.extend(load_specs(item))
        else:
            out.append(load_spec(item))
    return unique(out)


def unique(specs: list[Spec]) -> list[Spec]:
    """``specs`` unchanged, or ``ValueError`` naming the two sources of a duplicated id."""
    seen: dict[str, str] = {}
    for s in specs:
        if s.id in seen:
            raise ValueError(f"spec id {s.id!r} is used by both {seen[s.id]} and {s.source}")
        seen[s.id] = s.source
    return specs


def load_spec(path: str | os.PathLike | Traversable) -> Spec:
    """Read and validate one spec file."""
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"spec file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason})") from None
    return parse_spec(raw, source=str(path))


#: Spec ids that would name the render's own files (``index.md``, ``index.csv``, ``claims.csv``, ``claims.md``).
RESERVED_IDS = ("index", "claims")


def parse_spec(raw: Mapping[str, Any], source: str = "<memory>") -> Spec:
    """Validate a spec given as a dict (the parsed TOML). Errors name ``source`` and the bad key.

    Raises ``UnknownNameError`` for an unknown plot or paper reference, ``ValueError`` for anything else.
    """

    def fail(msg: str) -> ValueError:
        return ValueError(f"{source}: {msg}")

    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown key(s) {sorted(unknown)}; valid keys: {sorted(_TOP_KEYS)}")
    for key in ("id", "title", "caption", "kind", "plot"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise fail(f"{key!r} is required and must be a non-empty string")
    if not _ID.fullmatch(raw["id"]):
        raise fail(f"id={raw['id']!r} must be a file stem of letters, digits, '_' and '-' (it names the outputs)")
    if raw["id"].lower() in RESERVED_IDS:
        raise fail(f"id={raw['id']!r} is reserved: the render writes its own {raw['id']}.* files "
                   f"(reserved: {', '.join(RESERVED_IDS)})")
    if raw["kind"] not in KINDS:
        raise fail(f"kind={raw['kind']!r} is not one of {KINDS}")
    if raw["plot"] not in PLOTS:
        raise UnknownNameError(f"{source}: plot {raw['plot']!r} is unknown; valid plots: {sorted(PLOTS)}")
    entry = PLOTS[raw["plot"]]
    if entry.kind != raw["kind"]:
        raise fail(f"plot {raw['plot']!r} draws a {entry.kind}, but kind={raw['kind']!r}")
    paper = raw.get("paper")
    if paper is not None and paper not in REFERENCES:
        raise UnknownNameError(f"{source}: paper reference {paper!r} is unknown; valid names: {sorted(REFERENCES)}")
    query = parse_query(raw, fail)
    if entry.needs_group and query.group is None:
        raise fail(f"plot {raw['plot']!r} needs a [group] (its rows are the groups)")
    options = dict(raw.get("options", {}))
    bad = sorted(set(options) - set(entry.options))
    if bad:
        raise fail(f"option(s) {bad} unknown to plot {raw['plot']!r}; valid options: {sorted(entry.options)}")
    keys = [s.key for s in query.series]
    claims = tuple(parse_claim(c, i, keys, fail) for i, c in enumerate(raw.get("claims", [])))
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise fail(f"claim ids must be unique, got {ids}")
    if any(c.needs_report for c in claims) and "report" not in query.needs:
        raise fail("a claim measures probe reports: add \"report\" to needs")
    return Spec(id=raw["id"], title=raw["title"], caption=raw["caption"], kind=raw["kind"], plot=raw["plot"],
                query=query, paper=paper, options={**entry.options, **options}, claims=claims, source=source)
