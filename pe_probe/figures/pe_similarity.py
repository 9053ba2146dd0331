"""LaPE-style PE self-similarity: the N x N cosine matrix and one token's row on the patch grid."""

from __future__ import annotations

import numpy as np

from ._axes import current_ax


def pe_similarity_heatmap(sim: np.ndarray, ax=None, *, title: str | None = None, cmap: str = "RdBu_r"):
    """The (N, N) cosine similarity between PE rows, on a fixed [-1, 1] colour scale. Returns ``ax``."""
    ax = current_ax(ax)
    sim = np.asarray(sim, dtype=float)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"a PE similarity matrix must be square, got shape {sim.shape}")
    ax.imshow(sim, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_xlabel("patch token", fontsize=7)
    ax.set_ylabel("patch token", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.locator_params(nbins=4, integer=True)
    return ax


def pe_similarity_row(sim: np.ndarray, token: int, grid: tuple[int, int], ax=None, *, title: str | None = None,
                      cmap: str = "RdBu_r"):
    """Row ``token`` of ``sim`` reshaped to the (h, w) patch ``grid``; the token itself is marked. Returns ``ax``."""
    ax = current_ax(ax)
    sim = np.asarray(sim, dtype=float)
    h, w = grid
    if h * w != sim.shape[1]:
        raise ValueError(f"grid {h}x{w} does not hold {sim.shape[1]} tokens")
    if not 0 <= token < sim.shape[0]:
        raise ValueError(f"token {token} is outside 0..{sim.shape[0] - 1}")
    ax.imshow(sim[token].reshape(h, w), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.plot([token % w], [token // w], marker="x", color="black", markersize=6)
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax
