"""The causal figures draw exactly their data: the mean over seeds at each PE site in forward order, the 95% t
interval as error bars, each seed as a thin line, the sites named on the axis."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from pe_probe.analysis.figure_data import FigureData  # noqa: E402
from pe_probe.figures import site_lines  # noqa: E402
from pe_probe.figures.causal import draw_ablation, draw_attribution  # noqa: E402


def _data() -> pd.DataFrame:
    # series a: two seeds at input (-1), block 1, Last LN (4); series b: one seed at the input only
    return pd.DataFrame({
        "series": ["a"] * 6 + ["b"], "run": ["a0", "a0", "a0", "a1", "a1", "a1", "b0"],
        "position": [-1, 1, 4, -1, 1, 4, -1], "site": ["input", "block 1", "Last LN"] * 2 + ["input"],
        "value": [0.2, 0.6, 1.0, 0.4, 0.8, 1.0, 0.9]})


def test_site_lines_mean_error_bars_seeds_and_site_ticks():
    _, ax = plt.subplots()
    site_lines(_data(), ax, ylabel="agree")
    mean = [ln for ln in ax.lines if ln.get_color() == "C0" and ln.get_linewidth() > 1 and len(ln.get_xdata()) == 3]
    np.testing.assert_allclose(mean[0].get_xdata(), [-1, 1, 4])
    np.testing.assert_allclose(mean[0].get_ydata(), [0.3, 0.7, 1.0])  # the mean over the two seeds
    thin = sorted(tuple(ln.get_ydata()) for ln in ax.lines if ln.get_color() == "C0" and ln.get_linewidth() < 1)
    assert thin == [(0.2, 0.6, 1.0), (0.4, 0.8, 1.0)]
    want = stats.t.interval(0.95, 1, loc=0.3, scale=stats.sem([0.2, 0.4]))
    bars = [seg for coll in ax.collections for seg in coll.get_segments() if len(seg) == 2]
    at_input = [(min(s[:, 1]), max(s[:, 1])) for s in bars if np.allclose(s[:, 0], -1)]
    assert any(np.allclose(b, want) for b in at_input)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["input", "1", "Last LN"]
    assert ax.get_ylabel() == "agree"


def test_draw_functions_make_one_panel_per_intervention_and_two_for_attribution():
    abl = _data().assign(intervention=["zero", "zero", "zero", "mean", "mean", "mean", "zero"])
    fig = draw_ablation(FigureData(data=abl), {"metric": "agree", "interventions": ["zero", "mean", "shuffle"]}, "T")
    assert [ax.get_title() for ax in fig.axes] == ["zero PE", "mean PE"]
    att = pd.concat([_data().assign(metric="pe_share"), _data().assign(metric="rel_delta")])
    fig = draw_attribution(FigureData(data=att), {"max_rel_delta": 0.05}, "T")
    assert fig.axes[1].get_yscale() == "log" and fig.axes[0].get_ylim()[1] > 1


def test_intervals_of_a_fraction_stay_in_0_1_and_layer_ticks_are_whole():
    import matplotlib.pyplot as plt
    import pandas as pd

    from pe_probe.analysis.stats import ci_bounds
    from pe_probe.figures.causal import site_lines
    from pe_probe.figures.correlation import correlation_lines

    # agreement 1.0, 0.9, 0.2 over three seeds: the t interval runs far past 1 and below 0
    data = pd.DataFrame({"position": [0, 0, 0], "site": ["input"] * 3, "value": [1.0, 0.9, 0.2],
                         "series": ["a"] * 3, "run": ["s0", "s1", "s2"]})
    lo, hi = ci_bounds(data["value"])
    assert lo < 0 and hi > 1
    _, ax = plt.subplots()
    site_lines(data, ax, bounds=(0.0, 1.0))
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    assert min(ys) >= 0.0 and max(ys) <= 1.0
    _, ax = plt.subplots()
    layers = pd.DataFrame({"layer": [1, 2, 3, 1, 2, 3], "value": [-0.1, -0.2, -0.3, -0.2, -0.3, -0.4],
                           "series": ["a"] * 6, "run": ["s0"] * 3 + ["s1"] * 3})
    correlation_lines(layers, ax)
    ax.figure.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
