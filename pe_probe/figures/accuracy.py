"""Accuracy bars with the paper's reported numbers overlaid (Fig 1, Fig 5)."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
    """One bar per row of ``data`` (height ``data[y]``, our top-1), the paper's value as a marker over it.

    Rows whose ``y`` is NaN get no bar (paper-only rows still show their marker). Bars are labelled with
    their value and markers with the paper's. Returns ``ax``.
    """
    ax = current_ax(ax)
    labels = [str(v) for v in data[x]]
    pos = np.arange(len(labels))
    ours = pd.to_numeric(data[y], errors="coerce").to_numpy(dtype=float)
    has = ~np.isnan(ours)
    bars = ax.bar(pos[has], ours[has], width=0.6, color="C0", label="ours", zorder=2)
    values = [ours[has]]
    if annotate:
        for rect, v in zip(bars, ours[has]):
            ax.annotate(fmt_num(v, digits), (rect.get_x() + rect.get_width() / 2, v), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8)
    if paper is not None and paper in data:
        ref = pd.to_numeric(data[paper], errors="coerce").to_numpy(dtype=float)
        ok = ~np.isnan(ref)
        if ok.any():
            ax.plot(pos[ok], ref[ok], linestyle="none", marker="_", markersize=22, markeredgewidth=2.5,
                    color="C3", label=paper_label, zorder=3)
            values.append(ref[ok])
            if annotate:
                for p, v in zip(pos[ok], ref[ok]):
                    ax.annotate(fmt_num(v, digits), (p, v), xytext=(14, -3), textcoords="offset points",
                                ha="left", va="center", fontsize=7, color="C3")
    allv = np.concatenate(values) if values else np.array([])
    if allv.size:
        lo, hi = float(allv.min()), float(allv.max())
        pad = max(0.5, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - 3 * pad), hi + 2 * pad)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    return ax
