"""Correlation of the token and PE maps per layer, one line per model (Fig 4)."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ._axes import current_ax


def correlation_lines(data: pd.DataFrame, ax=None, *, x: str = "layer", y: str = "correlation",
                      hue: str = "series", paper: Mapping[int, float] | None = None,
                      paper_label: str = "paper"):
    """One line per ``hue`` value through (``x``, ``y``) points sorted by ``x``; ``paper`` ({layer: r})
    is drawn as black dashed markers. Returns ``ax``."""
    ax = current_ax(ax)
    for i, (name, df) in enumerate(data.groupby(hue, sort=False)):
        df = df.sort_values(x)
        ax.plot(df[x].to_numpy(), df[y].to_numpy(dtype=float), marker="o", color=f"C{i}", label=str(name))
    if paper:
        layers = sorted(paper)
        ax.plot(layers, [paper[k] for k in layers], linestyle="--", marker="s", color="black", label=paper_label)
    ax.axhline(0.0, color="0.7", linewidth=0.8, zorder=0)
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("Pearson r (token map vs PE map)")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=8)
    return ax
