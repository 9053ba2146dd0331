"""Accuracy bars: the mean over seeds with its 95% interval, each seed as a dot, the paper's value as a marker
(Fig 1, Fig 5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from ..analysis.stats import ci_bounds
from ._axes import current_ax, fmt_num


def accuracy_bars(
    data: pd.DataFrame,
    ax=None,
    *,
    x: str = "label",
    y: str = "top1",
    paper: str | None = "paper",
    annotate: bool = True,
    paper_label: str = "paper",
    digits: int = 2,
):
    """One bar per ``x`` value: the mean of ``data[y]`` over its rows (one row per seed), with the 95% t interval
    (:func:`pe_probe.analysis.stats.ci_bounds`, drawn by seaborn as an error bar) and each row as a dot; the
    paper's value (column ``paper``) as a red marker. Labels whose values are all NaN get no bar (their paper
    marker still shows). Bars are labelled with the mean, markers with the paper's value. Returns ``ax``."""
    ax = current_ax(ax)
    order = list(dict.fromkeys(str(v) for v in data[x]))
    frame = data.assign(**{x: data[x].astype(str), y: pd.to_numeric(data[y], errors="coerce")})
    ours = frame.dropna(subset=[y])
    pos = {label: i for i, label in enumerate(order)}
    values = [ours[y].to_numpy(dtype=float)]
    if len(ours):
        sns.barplot(data=ours, x=x, y=y, order=order, errorbar=ci_bounds, color="C0", capsize=0.25,
                    err_kws={"linewidth": 1.2, "color": "black"}, ax=ax, label="ours (mean, 95% CI)")
        sns.stripplot(data=ours, x=x, y=y, order=order, color="0.15", size=3, jitter=0.12, ax=ax, legend=False)
        ax.plot([], [], linestyle="none", marker="o", markersize=3, color="0.15", label="seeds")
        for label, part in ours.groupby(x, sort=False):
            lo, hi = ci_bounds(part[y].to_numpy())
            values.append(np.array([lo, hi]))
            if annotate:
                mean = float(part[y].mean())
                top = hi if np.isfinite(hi) else float(part[y].max())
                ax.annotate(fmt_num(mean, digits), (pos[label], top), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=8)
    if paper is not None and paper in frame:
        ref = frame.drop_duplicates(x).set_index(x)[paper].reindex(order)
        ref = pd.to_numeric(ref, errors="coerce")
        ok = ref.notna().to_numpy()
        if ok.any():
            px = np.arange(len(order))[ok]
            ax.plot(px, ref.to_numpy()[ok], linestyle="none", marker="_", markersize=22, markeredgewidth=2.5,
                    color="C3", label=paper_label, zorder=3)
            values.append(ref.to_numpy()[ok])
            if annotate:
                for p, v in zip(px, ref.to_numpy()[ok]):
                    ax.annotate(fmt_num(v, digits), (p, v), xytext=(17, 0), textcoords="offset points",
                                ha="left", va="center", fontsize=7, color="C3",
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    allv = np.concatenate(values) if values else np.array([])
    allv = allv[np.isfinite(allv)]
    if allv.size:
        lo, hi = float(allv.min()), float(allv.max())
        pad = max(0.5, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - 3 * pad), hi + 2 * pad)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=20, ha="right")
    ax.set_xlabel("")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(loc="lower right", fontsize=7)
    return ax
