"""The plots a spec can name: each turns the selected runs into data and draws it (or tabulates it).

A new kind of figure is one function decorated with ``@register_plot(name, kind, options)`` (see
``builders.py``); its ``options`` dict holds the defaults and is the list of options specs may set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .select import Selection
    from .specs import Spec


@dataclass
class Output:
    """What a plot produced: the tidy ``data`` behind it, and a ``figure`` or a Markdown ``table``."""

    data: pd.DataFrame
    figure: "Figure | None" = None
    table: str | None = None
    notes: list[str] = field(default_factory=list)


Builder = Callable[["Spec", "Selection"], Output]


@dataclass(frozen=True)
class PlotEntry:
    """A registered plot: its builder, whether it makes a figure or a table, and its option defaults."""

    name: str
    build: Builder
    kind: str
    options: Mapping[str, Any]
    doc: str = ""


PLOTS: dict[str, PlotEntry] = {}


def register_plot(name: str, kind: str = "figure", options: Mapping[str, Any] | None = None):
    """Decorator registering ``fn(spec, selection) -> Output`` as the plot ``name``."""
    if kind not in ("figure", "table"):
        raise ValueError(f"kind={kind!r} must be 'figure' or 'table'")

    def deco(fn: Builder) -> Builder:
        if name in PLOTS:
            raise ValueError(f"plot {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        PLOTS[name] = PlotEntry(name=name, build=fn, kind=kind, options=dict(options or {}), doc=doc)
        return fn

    return deco


def plot_entry(name: str) -> PlotEntry:
    """The registered plot ``name``; raises ``UnknownNameError`` listing the valid names."""
    from . import builders  # noqa: F401  (registers the built-in plots)

    try:
        return PLOTS[name]
    except KeyError:
        raise UnknownNameError(f"plot {name!r} is unknown; valid plots: {sorted(PLOTS)}") from None
