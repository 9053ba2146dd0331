"""Correlation of the token and PE maps per layer, one line per configuration: the mean over seeds with its 95%
band, each seed as a thin line (Fig 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import seaborn as sns

from ..analysis.stats import ci_bounds
from ._axes import current_ax, integer_ticks


def correlation_lines(data: pd.DataFrame, ax=None, *, x: str = "layer", y: str = "value",
                      hue: str = "series", units: str | None = "run", paper: Mapping[int, float] | None = None,
                      paper_label: str = "paper", ylabel: str = "Pearson r (token map vs PE map)",
                      xlabel: str = "layer (block index)", ylim: tuple[float, float] | None = (-1.05, 1.05),
                      zero_line: bool = True):
    """One line per ``hue`` value through the mean of ``y`` per ``x`` (rows: one per seed), with the 95% t band
    (:func:`pe_probe.analysis.stats.ci_bounds`, drawn by seaborn) and each ``units`` value (seed run) as a thin
    line; ``paper`` ({layer: r}) as black dashed markers. ``ylim`` None: matplotlib's own range; ``zero_line``:
    a grey line at 0. Returns ``ax``."""
    ax = current_ax(ax)
    order = list(dict.fromkeys(data[hue]))
    palette = {name: f"C{i}" for i, name in enumerate(order)}
    if len(data):
        if units is not None and data.groupby(hue)[units].nunique().max() > 1:
            sns.lineplot(data=data, x=x, y=y, hue=hue, units=units, estimator=None, palette=palette,
                         hue_order=order, linewidth=0.6, alpha=0.35, legend=False, ax=ax)
        sns.lineplot(data=data, x=x, y=y, hue=hue, hue_order=order, palette=palette, errorbar=ci_bounds,
                     marker="o", ax=ax)
    if paper:
        layers = sorted(paper)
        ax.plot(layers, [paper[k] for k in layers], linestyle="--", marker="s", color="black", label=paper_label)
    if zero_line:
        ax.axhline(0.0, color="0.7", linewidth=0.8, zorder=0)
    ax.set_xlabel(xlabel)
    if x == "layer":
        integer_ticks(ax)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7)
    return ax
