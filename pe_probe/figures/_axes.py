"""Small shared helpers for plot functions: default axes, axes grids, number formatting."""

from __future__ import annotations

import numpy as np

from ..analysis.figure_data import fmt_num  # noqa: F401  (re-exported: one number format for captions and plots)


def current_ax(ax=None):
    """``ax``, or pyplot's current axes when None (seaborn's convention)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.gca()


def axes_grid(nrows: int, ncols: int, axes=None, figure=None, panel_size: tuple[float, float] = (2.2, 2.2)) -> np.ndarray:
    """A (nrows, ncols) array of axes: ``axes`` reshaped, new subplots on ``figure``, or a new pyplot figure."""
    if axes is not None:
        arr = np.asarray(axes, dtype=object)
        if arr.size != nrows * ncols:
            raise ValueError(f"got {arr.size} axes for a {nrows}x{ncols} grid")
        return arr.reshape(nrows, ncols)
    size = (panel_size[0] * ncols, panel_size[1] * nrows)
    if figure is None:
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size)
    else:
        figure.set_size_inches(*size)
    return np.asarray(figure.subplots(nrows, ncols, squeeze=False), dtype=object)




def integer_ticks(ax, axis: str = "x"):
    """Ticks at whole numbers only on ``axis`` (a layer or epoch axis: block 1.5 does not exist). Returns ``ax``."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))
    return ax


def clipped(errorbar, low: float, high: float):
    """An error-bar function like ``errorbar`` whose interval is cut to ``[low, high]``: for quantities that
    cannot leave that range (agreement, accuracy, a share), where a t interval can."""

    def bounds(values):
        lo, hi = errorbar(values)
        return max(lo, low), min(hi, high)

    return bounds
