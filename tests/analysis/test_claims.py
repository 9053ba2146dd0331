"""Seeds, intervals and claim verdicts, checked against scipy's own tests and intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pe_probe.analysis.claims import MEASURES, ClaimSpec, evaluate_claim, judge
from pe_probe.analysis.select import SeriesSpec, RunQuery, select_runs
from pe_probe.analysis.stats import Interval, difference_interval, mean_interval, with_seed_summary
from pe_probe.figures import render_all

from ..fakes import seeded_runs


def test_mean_and_difference_intervals_match_scipy():
    a, b = [70.0, 70.5, 71.9, 70.2], [71.0, 73.5, 72.0]
    iv = mean_interval(a)
    assert (iv.low, iv.high) == pytest.approx(stats.t.interval(0.95, 3, loc=np.mean(a), scale=stats.sem(a)))
    d = difference_interval(b, a)
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (d.mean, d.low, d.high, d.n) == pytest.approx((np.mean(b) - np.mean(a), ci.low, ci.high, 3))
    one = mean_interval([3.0, float("nan")])  # NaN is not a seed; one seed has no interval
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.low)
    frame = with_seed_summary(pd.DataFrame({"g": ["x", "x", "y"], "v": [1.0, 3.0, 5.0]}), ["g"], "v")
    assert list(frame.n_seeds) == [2, 2, 1] and list(frame["mean"]) == [2.0, 2.0, 5.0]


@pytest.mark.parametrize("iv, expect, verdict", [
    (Interval(-0.5, -0.9, -0.1, 3), "negative", "supported"),
    (Interval(-0.5, -0.9, -0.1, 3), "positive", "contradicted"),
    (Interval(0.5, 0.1, 0.9, 3), "positive", "supported"),
    (Interval(0.1, -0.2, 0.4, 3), "positive", "inconclusive"),
    (Interval(-2.0, math.nan, math.nan, 1), "negative", "inconclusive"),
])
def test_the_rule(iv, expect, verdict):
    assert judge(iv, expect, [iv.n, iv.n])[0] == verdict


def test_claims_on_seeded_runs_match_independent_numbers():
    runs = seeded_runs(3)
    q = RunQuery(series=(SeriesSpec("gap", "GAP", {"layerwise": False, "global_pool": "avg", "last_ln_pe": "none"}),
                         SeriesSpec("default", "Default", {"layerwise": False, "global_pool": "token"}),
                         SeriesSpec("lape", "LaPE", {"layerwise": True, "layer0": True, "global_pool": "token"})),
                 needs=("summary", "report"))
    sel = select_runs(q, runs)
    assert [r.name for r in sel.runs["gap"]] == ["gap-seed0", "gap-seed1", "gap-seed2"]
    top = {k: [r.top1 for r in sel.runs[k]] for k in ("gap", "default")}
    res = evaluate_claim(ClaimSpec("c", "GAP beats Default", "top1", ("gap", "default"), "positive"), sel)
    ci = stats.ttest_ind(top["gap"], top["default"], equal_var=False).confidence_interval(0.95)
    assert (res.interval.low, res.interval.high) == pytest.approx((ci.low, ci.high))
    assert res.verdict == ("supported" if ci.low > 0 else "contradicted" if ci.high < 0 else "inconclusive")
    # a report measure: the mean over blocks of r, per seed, from the maps themselves
    per_seed = []
    for r in sel.runs["lape"]:
        rs = [np.corrcoef(*(m.ravel() for m in r.report.mean_maps(l)))[0, 1] for l in r.report.meta["receiving_blocks"]]
        per_seed.append(np.mean(rs))
    res = evaluate_claim(ClaimSpec("n", "negative", "corr_mean", ("lape",), "negative"), sel)
    assert res.interval.mean == pytest.approx(np.mean(per_seed))
    assert (res.interval.low, res.interval.high) == pytest.approx(
        stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed)))
    assert set(MEASURES) >= {"top1", "corr_mean", "corr_slope", "beta_var", "cos_before_after", "corr_last_ln"}


def test_figures_of_seeded_runs_carry_intervals_and_the_claims_table(tmp_path):
    runs = seeded_runs(3)
    result = render_all(runs, tmp_path, strict=True, dpi=30)
    fig1 = pd.read_csv(tmp_path / "fig1.csv")
    gap = fig1[fig1.series == "gap"]
    vals = [r.top1 for r in runs if r.name.startswith("gap-")]
    assert list(gap.top1) == vals and set(gap.n_seeds) == {3}
    assert gap["mean"].iloc[0] == pytest.approx(np.mean(vals))
    assert (gap.ci_low.iloc[0], gap.ci_high.iloc[0]) == pytest.approx(
        stats.t.interval(0.95, 2, loc=np.mean(vals), scale=stats.sem(vals)))
    fig4 = pd.read_csv(tmp_path / "fig4.csv")
    assert {"n_seeds", "mean", "ci_low", "ci_high"} <= set(fig4.columns) and set(fig4.n_seeds) == {3}
    claims = pd.read_csv(tmp_path / "claims.csv")
    assert len(claims) == sum(len(r.spec.claims) for r in result.rendered) >= 13
    assert set(claims.verdict) <= {"supported", "contradicted", "inconclusive"}
    index = result.index.read_text()
    assert index.index("## Claims") < index.index("## Figures")
    for row in claims.itertuples():
        assert row.claim in index
