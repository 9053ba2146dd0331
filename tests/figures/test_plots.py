"""Each plot function draws exactly its input data (bar heights, line y-data, image arrays, texts)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pe_probe.figures import (  # noqa: E402
    accuracy_bars,
    correlation_lines,
    heatmap_grid,
    last_ln_channels,
    map_heatmap,
    markdown_table,
    pe_similarity_heatmap,
    pe_similarity_row,
    token_norm_grid,
)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _t_interval(values):
    """An independent 95% t interval (scipy's own interval function)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    return stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))


def _errorbar_ends(ax) -> list[tuple[float, float]]:
    """(low, high) of each error bar seaborn drew (an unlabelled line with caps; NaN where there is none)."""
    ends = []
    for ln in ax.lines:
        y = np.asarray(ln.get_ydata(), dtype=float)
        if ln.get_label().startswith("_") and np.isfinite(y).any():
            ends.append((float(np.nanmin(y)), float(np.nanmax(y))))
    return ends


def test_accuracy_bars_mean_interval_seeds_and_paper_overlay():
    data = pd.DataFrame({"label": ["A", "A", "A", "B", "C"], "top1": [70.0, 71.0, 73.0, np.nan, 74.5],
                         "paper": [72.14] * 3 + [72.40, np.nan]})
    _, ax = plt.subplots()
    assert accuracy_bars(data, ax) is ax
    heights = [p.get_height() for p in ax.patches if np.isfinite(p.get_height()) and p.get_height() > 0]
    np.testing.assert_allclose(heights, [np.mean([70.0, 71.0, 73.0]), 74.5])  # no bar for B (no value)
    (lo, hi), = _errorbar_ends(ax)  # one seed (C) has no interval
    np.testing.assert_allclose((lo, hi), _t_interval([70.0, 71.0, 73.0]))
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    np.testing.assert_allclose(sorted(dots), [70.0, 71.0, 73.0, 74.5])  # every seed is a dot
    (marker,) = [ln for ln in ax.lines if ln.get_label() == "paper"]
    np.testing.assert_allclose(marker.get_ydata(), [72.14, 72.40])
    np.testing.assert_allclose(marker.get_xdata(), [0, 1])
    assert {"71.33", "74.50", "72.14", "72.40"} <= set(_texts(ax))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C"]


def test_accuracy_bars_uses_current_axes_by_default():
    ax = accuracy_bars(pd.DataFrame({"label": ["x"], "top1": [50.0]}), paper=None)
    assert ax is plt.gca()
    assert [p.get_height() for p in ax.patches] == [50.0]


def test_map_heatmap_shows_the_array_and_caption():
    arr = np.arange(12.0).reshape(3, 4)
    _, ax = plt.subplots()
    map_heatmap(arr, ax, title="t", caption="r = -0.50")
    np.testing.assert_array_equal(ax.images[0].get_array(), arr)
    assert ax.get_xlabel() == "r = -0.50" and ax.get_title() == "t"
    with pytest.raises(ValueError, match="2-D"):
        map_heatmap(np.zeros(3), ax)


def test_heatmap_grid_places_each_panel():
    a, b, c = np.zeros((2, 3)), np.ones((2, 3)), np.full((2, 3), 2.0)
    panels = pd.DataFrame({"row": ["token", "PE", "token"], "column": ["L1", "L1", "L2"], "map": [a, b, c],
                           "caption": [None, "r = 0.10", None]})
    grid = heatmap_grid(panels)
    assert grid.shape == (2, 2)
    np.testing.assert_array_equal(grid[0, 0].images[0].get_array(), a)
    np.testing.assert_array_equal(grid[1, 0].images[0].get_array(), b)
    np.testing.assert_array_equal(grid[0, 1].images[0].get_array(), c)
    assert grid[1, 0].get_xlabel() == "r = 0.10"
    assert not grid[1, 1].axison  # empty cell is blank
    assert len(grid[0, 0].figure.axes) == 4 + 3  # the grid's axes, plus one colour bar per heatmap


def test_correlation_lines_mean_band_seeds_and_paper_line():
    data = pd.DataFrame({"series": ["a"] * 6 + ["b"] * 2, "run": ["a0", "a0", "a0", "a1", "a1", "a1", "b0", "b0"],
                         "layer": [3, 1, 2, 3, 1, 2, 1, 2], "value": [-0.3, -0.1, -0.2, -0.5, -0.3, -0.2, 0.5, 0.4]})
    _, ax = plt.subplots()
    correlation_lines(data, ax, paper={1: -0.37, 4: -0.67})
    legend = {ln.get_label(): ln.get_color() for ln in ax.lines if not ln.get_label().startswith("_")}
    drawn = [ln for ln in ax.lines if ln.get_label().startswith("_") and len(ln.get_xdata())]
    mean = {c: ln for c in ("C0", "C1") for ln in drawn if ln.get_color() == c and ln.get_linewidth() > 1}
    assert legend["a"] == "C0" and legend["b"] == "C1"
    np.testing.assert_allclose(mean["C0"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(mean["C0"].get_ydata(), [-0.2, -0.2, -0.4])  # the mean over the two seeds
    np.testing.assert_allclose(mean["C1"].get_ydata(), [0.5, 0.4])
    paper = next(ln for ln in ax.lines if ln.get_label() == "paper")
    np.testing.assert_allclose(paper.get_ydata(), [-0.37, -0.67])
    thin = [ln for ln in drawn if ln.get_color() == "C0" and ln.get_linewidth() < 1]
    assert sorted(tuple(ln.get_ydata()) for ln in thin) == [(-0.3, -0.2, -0.5), (-0.1, -0.2, -0.3)]  # each seed
    band = ax.collections[0].get_paths()[0].vertices  # seaborn's 95% band of series a, through each layer's interval
    for layer, seeds in ((1, [-0.1, -0.3]), (3, [-0.3, -0.5])):
        at = band[np.isclose(band[:, 0], layer), 1]
        np.testing.assert_allclose([at.min(), at.max()], _t_interval(seeds))


def test_last_ln_channels_lines_and_annotations():
    data = pd.DataFrame({"series": ["PVG"] * 3 + ["MPVG"] * 3, "channel": [0, 1, 2] * 2,
                         "gamma": [1.0, 1.1, 0.9, 1.0, 1.0, 1.0], "beta": [0.1, -0.2, 0.3, 0.0, 0.01, -0.01]})
    stats = pd.DataFrame({"series": ["PVG", "MPVG"], "var_beta": [0.2387, 0.0000193], "cosine": [0.4597, np.nan],
                          "var_beta_ci_low": [0.2, np.nan], "var_beta_ci_high": [0.28, np.nan],
                          "paper_var_beta": [0.2387, 0.0193], "paper_cosine": [0.2995, np.nan]})
    _, ax = plt.subplots()
    last_ln_channels(data, ax, param="beta", stats=stats)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.1, -0.2, 0.3])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.0, 0.01, -0.01])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "var(beta)=0.239 [0.2, 0.28] (paper 0.2387)" in legend[0] and "cos(before, after)=0.46 (paper 0.2995)" in legend[0]
    assert "var(beta)=1.93e-05 (paper 0.0193)" in legend[1] and "cos(before, after)=n/a" in legend[1]  # never 0.0000
    _, ax2 = plt.subplots()
    last_ln_channels(data, ax2, param="gamma")
    np.testing.assert_allclose(ax2.lines[0].get_ydata(), [1.0, 1.1, 0.9])


def test_token_norm_grid_images():
    rng = np.random.default_rng(0)
    maps = {(s, st, i): rng.random((2, 2)) for s in ("PVG", "MPVG") for st in ("before", "after") for i in (0, 1)}
    data = pd.DataFrame([dict(series=s, stage=st, image=i, map=m) for (s, st, i), m in maps.items()])
    grid = token_norm_grid(data)
    assert grid.shape == (2, 4)
    np.testing.assert_array_equal(grid[1, 0].images[0].get_array(), maps[("PVG", "before", 1)])
    np.testing.assert_array_equal(grid[0, 3].images[0].get_array(), maps[("MPVG", "after", 0)])
    assert "MPVG" in grid[0, 3].get_title() and "after" in grid[0, 3].get_title()
    # a shared range (as the analysis gives every panel of a stage) is used as is
    data["vmin"], data["vmax"] = np.where(data.stage == "before", -1.0, 0.0), np.where(data.stage == "before", 2.0, 5.0)
    grid = token_norm_grid(data)
    assert grid[1, 0].images[0].get_clim() == grid[0, 2].images[0].get_clim() == (-1.0, 2.0)
    assert grid[0, 3].images[0].get_clim() == (0.0, 5.0)


def test_pe_similarity_heatmap_and_row():
    sim = np.corrcoef(np.random.default_rng(1).normal(size=(6, 5)))
    _, (a1, a2) = plt.subplots(1, 2)
    pe_similarity_heatmap(sim, a1)
    np.testing.assert_allclose(a1.images[0].get_array(), sim)
    pe_similarity_row(sim, 4, (2, 3), a2)
    np.testing.assert_allclose(a2.images[0].get_array(), sim[4].reshape(2, 3))
    assert (a2.lines[0].get_xdata()[0], a2.lines[0].get_ydata()[0]) == (1, 1)  # token 4 on a 2x3 grid
    with pytest.raises(ValueError, match="grid"):
        pe_similarity_row(sim, 0, (4, 4), a2)
    with pytest.raises(ValueError, match="square"):
        pe_similarity_heatmap(sim[:3], a1)


def test_markdown_table_formats_numbers_and_missing():
    md = markdown_table(pd.DataFrame({"m": ["a|b", "c"], "v": [72.1, np.nan], "n": [1, None]}))
    lines = md.strip().splitlines()
    assert lines[0] == "| m | v | n |"
    assert lines[2] == "| a\\|b | 72.10 | 1.00 |" or lines[2] == "| a\\|b | 72.10 | 1 |"
    assert lines[3].endswith("| - | - |")
