"""Causal tests of the PE, drawn: the effect of ablating each PE site, and the PE's share of the attribution,
one line per configuration over the sites in forward order (mean over seeds with its 95% interval)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..analysis.figure_data import FigureData
from ..analysis.stats import ci_bounds
from ._axes import clipped, current_ax

#: How each ablation metric is named on an axis.
ABLATION_YLABELS = {"agree": "predictions unchanged (fraction)", "top1": "top-1 accuracy (fraction)",
                    "kl": "KL(intact || ablated), mean over images"}
#: How each attribution metric is named on an axis.
ATTRIBUTION_YLABELS = {"pe_share": "PE share of |attribution|", "rel_delta": "captum relative delta (log)"}


def site_lines(data: pd.DataFrame, ax=None, *, y: str = "value", hue: str = "series", units: str | None = "run",
               ylabel: str = "", ylim: tuple[float, float] | None = None, log: bool = False,
               bounds: tuple[float, float] | None = None):
    """One line per ``hue`` value through the mean of ``y`` at each PE site (rows: one per seed; x: the
    ``position`` column, labelled with ``site``), with the 95% t interval as error bars
    (:func:`pe_probe.analysis.stats.ci_bounds`, drawn by seaborn) and each ``units`` value (seed run) as a thin
    line. ``bounds``: the range the quantity cannot leave (a fraction: ``(0, 1)``); the intervals are cut to it.
    Returns ``ax``."""
    ax = current_ax(ax)
    errorbar = ci_bounds if bounds is None else clipped(ci_bounds, *bounds)
    order = list(dict.fromkeys(data[hue]))
    palette = {name: f"C{i}" for i, name in enumerate(order)}
    if len(data):
        if units is not None and data.groupby(hue)[units].nunique().max() > 1:
            sns.lineplot(data=data, x="position", y=y, hue=hue, units=units, estimator=None, palette=palette,
                         hue_order=order, linewidth=0.6, alpha=0.35, legend=False, ax=ax)
        sns.lineplot(data=data, x="position", y=y, hue=hue, hue_order=order, palette=palette, errorbar=errorbar,
                     err_style="bars", err_kws={"capsize": 3}, marker="o", ax=ax)
        ticks = data.drop_duplicates("position").sort_values("position")
        ax.set_xticks(ticks["position"].to_numpy())
        ax.set_xticklabels([s.replace("block ", "") for s in ticks["site"]], fontsize=7)
        ax.legend(fontsize=7)
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("PE site (input, block index, Last LN)")
    ax.set_ylabel(ylabel)
    return ax


def _figure(width: float, height: float, title: str) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    chars = max(20, int(width * 72 / 7))
    fig.suptitle("\n".join(textwrap.wrap(title, chars)), fontsize=10)
    return fig


def draw_ablation(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """One panel per intervention: the ablation metric at each PE site, one line per configuration."""
    data = fd.data
    kinds = [k for k in options["interventions"] if k in set(data["intervention"])] or list(options["interventions"])
    fig = _figure(4.0 * len(kinds), 3.8, title)
    axes = np.atleast_1d(fig.subplots(1, len(kinds), sharey=True))
    metric = options["metric"]
    bounded = metric in ("agree", "top1")
    for ax, kind in zip(axes, kinds):
        site_lines(data[data["intervention"] == kind], ax, ylabel=ABLATION_YLABELS.get(metric, metric),
                   ylim=(-0.03, 1.03) if bounded else None, bounds=(0.0, 1.0) if bounded else None)
        ax.set_title(f"{kind} PE", fontsize=9)
    return fig


def draw_attribution(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """The PE share of the attribution at each PE site (left) and captum's relative delta (right, log scale)."""
    data = fd.data
    fig = _figure(8.4, 3.8, title)
    ax_share, ax_delta = fig.subplots(1, 2)
    site_lines(data[data["metric"] == "pe_share"], ax_share, ylabel=ATTRIBUTION_YLABELS["pe_share"], ylim=(-0.03, 1.03),
               bounds=(0.0, 1.0))
    ax_share.set_title("PE share", fontsize=9)
    delta = data[(data["metric"] == "rel_delta") & (data["value"] > 0)]
    site_lines(delta, ax_delta, ylabel=ATTRIBUTION_YLABELS["rel_delta"], log=True)
    ax_delta.axhline(float(options["max_rel_delta"]), color="0.5", linestyle="--", linewidth=0.8)
    ax_delta.set_title("convergence: sum |delta| / sum |f(x) - f(baseline)|", fontsize=9)
    return fig
