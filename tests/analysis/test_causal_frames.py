"""The causal analyses' numbers (no torch): frames from results, saved and read back, and the data behind the
ablation and attribution figures checked against an independent computation over seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pe_probe.analysis.causal import (ablation_frame, attribution_of, read_ablation, read_attribution, save_ablation,
                                      save_attribution)
from pe_probe.analysis.figure_data import ablation_by_layer, attribution_by_layer, site_position
from pe_probe.analysis.select import RunQuery, SeriesSpec, select_runs
from pe_probe.core.causal import AblationResult, AttributionResult
from pe_probe.core.hook_points import INPUT, LAST, layer_label, pe_site_hook

from ..fakes import seeded_runs


def test_site_names_and_positions():
    assert [pe_site_hook(l) for l in (INPUT, 0, 3, LAST)] == ["hook_input_pe", "blocks.0.hook_pe",
                                                              "blocks.3.hook_pe", "hook_last_pe"]
    assert [layer_label(l) for l in (INPUT, 2, LAST)] == ["input", "block 2", "Last LN"]
    assert [site_position(l, 6) for l in (INPUT, 0, 5, LAST)] == [-1, 0, 5, 6]
    with pytest.raises(ValueError):
        pe_site_hook(-3)


def test_frames_round_trip_with_their_attrs(tmp_path):
    rows = [("hook_input_pe", "layerwise", -2, "zero", "agree", 0.25),
            ("blocks.1.hook_pe", "layerwise", 1, "mean", "kl", 1e-17 / 3)]
    frame = ablation_frame(AblationResult(rows, {"n_images": 4, "shuffle_perm": [1, 0], "intact_top1": None}))
    assert list(frame.columns) == ["site", "pe_kind", "layer", "intervention", "metric", "value"]
    save_ablation(frame, tmp_path)
    back = read_ablation(tmp_path)
    pd.testing.assert_frame_equal(back, frame)  # floats exact through the CSV
    assert back.attrs == {"n_images": 4, "shuffle_perm": [1, 0], "intact_top1": None}
    maps = {"blocks.1.hook_pe": np.arange(8.0).reshape(2, 2, 2)}
    att = attribution_of(AttributionResult([("blocks.1.hook_pe", "layerwise", 1, "pe_share", 0.5)], {"n_steps": 8},
                                           maps, {}))
    save_attribution(att, tmp_path)
    again = read_attribution(tmp_path)
    pd.testing.assert_frame_equal(again.frame, att.frame)
    np.testing.assert_array_equal(again.pe_maps["blocks.1.hook_pe"], maps["blocks.1.hook_pe"])
    assert again.meta == {"n_steps": 8} and "pe_maps" in json.loads((tmp_path / "attribution.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation.csv", "ablation.json", "attribution.csv",
                                                         "attribution.json"]


def _selection(runs):
    query = RunQuery(series=(SeriesSpec("pvg", "PVG", {"pe_mode": "pvg", "global_pool": "avg"}),
                             SeriesSpec("mpvg", "MPVG", {"pe_mode": "mpvg"})), needs=("ablation", "attribution"))
    return select_runs(query, runs)


def test_ablation_figure_data_is_the_mean_and_t_interval_over_seeds():
    runs = seeded_runs(3)
    sel = _selection(runs)
    fd = ablation_by_layer(sel, {"metric": "agree", "interventions": ["zero", "shuffle"]}, None)
    data = fd.data
    assert set(data.intervention) == {"zero", "shuffle"} and set(data.metric) == {"agree"}
    mpvg = [r for r in runs if r.name.startswith("mpvg")]
    assert set(data.loc[data.series == "mpvg", "layer"]) == {INPUT, 1, 2, 3, LAST}
    for hook, layer in (("hook_input_pe", INPUT), ("blocks.2.hook_pe", 2), ("hook_last_pe", LAST)):
        seeds = [float(f.value[(f.site == hook) & (f.intervention == "zero") & (f.metric == "agree")].iloc[0])
                 for f in (r.ablation for r in mpvg)]
        row = data[(data.series == "mpvg") & (data.hook == hook) & (data.intervention == "zero")]
        assert sorted(row.value) == sorted(seeds) and (row.n_seeds == 3).all()
        low, high = stats.t.interval(0.95, 2, loc=np.mean(seeds), scale=stats.sem(seeds))
        assert row["mean"].iloc[0] == pytest.approx(np.mean(seeds))
        assert (row.ci_low.iloc[0], row.ci_high.iloc[0]) == pytest.approx((low, high))
        assert (row.position == site_position(layer, 4)).all()
    worst = data[(data.series == "mpvg") & (data.intervention == "zero")].groupby("site")["value"].mean().idxmin()
    assert any(f.startswith("mpvg: largest effect on agree: zero at " + worst) for f in fd.findings)


def test_attribution_figure_data_flags_incomplete_sites():
    runs = seeded_runs(2)
    for r in runs:  # one site of one configuration does not converge
        if r.name.startswith("pvg-"):
            f = r.attribution
            f.loc[(f.site == "hook_input_pe") & (f.metric == "rel_delta"), "value"] = 0.7
    fd = attribution_by_layer(_selection(runs), {"max_rel_delta": 0.05}, None)
    share = fd.data[fd.data.metric == "pe_share"]
    assert set(share.series) == {"pvg", "mpvg"} and (share.n_seeds == 2).all()
    assert any("pvg, input: captum's relative delta up to 0.7" in n for n in fd.notes)
    assert not any(n.startswith("mpvg") for n in fd.notes)
    assert any("baseline mean" in n for n in fd.notes)
    assert all(math.isfinite(v) for v in share["mean"])
