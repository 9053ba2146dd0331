"""Per-token norm maps on the patch grid, before and after the Last LN, per image (Fig 7)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._axes import axes_grid


def token_norm_grid(data: pd.DataFrame, axes=None, *, figure=None, cmap: str = "magma",
                    colorbar: bool = True) -> np.ndarray:
    """Rows = images, columns = ``series`` x ``stage`` (before/after); ``data`` has columns ``series``,
    ``stage``, ``image`` and ``map`` (an (h, w) array), and optionally the colour range ``vmin`` / ``vmax`` of
    each panel (the analysis gives every panel of a stage the same range, so series are compared on one
    scale); without them each column uses its own range. Each column gets a colour bar. Returns the
    (images, columns) axes array."""
    cols = list(dict.fromkeys(zip(data["series"], data["stage"])))
    images = list(dict.fromkeys(data["image"]))
    grid = axes_grid(len(images), len(cols), axes, figure, panel_size=(1.9, 1.7))
    used = np.zeros(grid.shape, dtype=bool)
    for j, (series, stage) in enumerate(cols):
        part = data[(data["series"] == series) & (data["stage"] == stage)]
        stack = np.stack([np.asarray(m, dtype=float) for m in part["map"]])
        vmin, vmax = float(stack.min()), float(stack.max())
        if "vmin" in part and "vmax" in part and part["vmin"].notna().all() and part["vmax"].notna().all():
            vmin, vmax = float(part["vmin"].min()), float(part["vmax"].max())
        im = None
        for rec in part.to_dict("records"):
            i = images.index(rec["image"])
            ax = grid[i, j]
            im = ax.imshow(np.asarray(rec["map"], dtype=float), cmap=cmap, vmin=vmin, vmax=vmax,
                           interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{series}\n{stage} Last LN", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"image {rec['image']}", fontsize=8)
            used[i, j] = True
        if colorbar and im is not None:
            ax.figure.colorbar(im, ax=list(grid[:, j]), shrink=0.8, label="token norm")
    for ax in grid[~used]:
        ax.set_axis_off()
    return grid
