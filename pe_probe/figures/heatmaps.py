"""Token/PE heatmaps (tokens x channels) and grids of them with a caption under each (Fig 2, Fig 8)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._axes import axes_grid, current_ax


def map_heatmap(array: np.ndarray, ax=None, *, title: str | None = None, caption: str | None = None,
                cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
                colorbar: bool = False, xlabel: str | None = "channel", ylabel: str | None = "token"):
    """Draw a 2-D array as an image (rows = tokens, columns = channels); ``caption`` goes under it."""
    ax = current_ax(ax)
    arr = np.asarray(array, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"a heatmap needs a 2-D array, got shape {arr.shape}")
    im = ax.imshow(arr, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.ax.tick_params(labelsize=6)
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_xlabel(caption if caption is not None else (xlabel or ""), fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.locator_params(nbins=4, integer=True)
    return ax


def heatmap_grid(panels: pd.DataFrame, axes=None, *, figure=None, row: str = "row", col: str = "column",
                 value: str = "map", caption: str = "caption", title: str | None = "title",
                 cmap: str = "RdBu_r", colorbar: bool = True, panel_size=(2.2, 2.2),
                 xlabel: str | None = "channel", ylabel: str | None = "token") -> np.ndarray:
    """A grid of heatmaps, one per row of ``panels`` (columns ``row``, ``column``, ``map`` (2-D array),
    optional ``caption``, ``title`` and the colour range ``vmin`` / ``vmax``, which panels meant to be compared
    share). Every heatmap gets a colour bar (``colorbar``). Grid rows/columns follow first appearance; empty
    cells are blank. Returns the (rows, columns) array of axes."""
    rows = list(dict.fromkeys(panels[row]))
    cols = list(dict.fromkeys(panels[col]))
    grid = axes_grid(len(rows), len(cols), axes, figure, panel_size)
    used = np.zeros(grid.shape, dtype=bool)
    for rec in panels.to_dict("records"):
        i, j = rows.index(rec[row]), cols.index(rec[col])
        cap = rec.get(caption) if caption in panels else None
        ttl = rec.get(title) if title and title in panels else f"{rec[row]} | {rec[col]}"
        lo, hi = rec.get("vmin"), rec.get("vmax")
        map_heatmap(rec[value], grid[i, j], title=ttl, caption=None if _blank(cap) else str(cap), cmap=cmap,
                    vmin=None if _blank(lo) else lo, vmax=None if _blank(hi) else hi,
                    colorbar=colorbar, xlabel=xlabel, ylabel=ylabel if j == 0 else None)
        used[i, j] = True
    for ax in grid[~used]:
        ax.set_axis_off()
    return grid


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))
