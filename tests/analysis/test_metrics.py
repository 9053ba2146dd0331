"""Analyses on hand-sized statistics whose right answers are worked out by hand; report save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pe_probe.analysis import (
    cosine_matrix, last_ln_params, pe_similarity_grid, pe_similarity_matrix, pearson, save_report, summary_frame,
)
from pe_probe.core.report import ProbeReport
from pe_probe.analysis.metrics import std_from_moments
from pe_probe.core.errors import DataError, UnknownNameError



def test_pearson_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # centred: (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5): sum of products 4, sums of squares 5 and 5 -> 0.8
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        pearson([1, 2], [1, 2, 3])


def test_pearson_skips_nan_rows():
    tok = np.array([[5.0, -5.0], [1.0, 2.0], [3.0, 5.0]])
    pe = np.array([[np.nan, np.nan], [2.0, 4.0], [6.0, 10.0]])
    assert pearson(tok, pe) == pytest.approx(np.corrcoef([1, 2, 3, 5], [2, 4, 6, 10])[0, 1])
    assert np.isnan(pearson(np.ones((2, 2)), np.arange(4.0).reshape(2, 2)))


def test_cosine_matrix_and_std_by_hand():
    sim = cosine_matrix(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(sim, [[1, 0, r], [0, 1, r], [r, r, 1]])
    assert std_from_moments(2.0, 5.0) == pytest.approx(1.0)  # values 1 and 3
    assert std_from_moments(1.0, 1.0 - 1e-18) == 0.0  # never sqrt of a negative rounding error


def hand_report(pe_prefix_nan: bool = False) -> ProbeReport:
    """depth 1, T = 3 (class token + a 1x2 patch grid), D = 2. Layer 0 and the Last LN have a PE."""
    tok0 = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    pe0 = -tok0.copy()  # perfectly opposite maps: correlation -1
    if pe_prefix_nan:
        pe0[0] = np.nan
    tokl = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    pel = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    arrays = {
        "tok_map@0": tok0, "pe_map@0": pe0,
        "tok_norm@0": np.array([1.0, 2.0, 3.0]), "resid_norm@0": np.array([4.0, 4.0, 7.0]),
        "pe_norm@0": np.array([np.nan if pe_prefix_nan else 6.0, 1.0, 2.0]),
        "tok_pe_cos@0": np.array([-1.0, -1.0, -1.0]),
        "corr_img@0": np.array([4.0, -0.5, 0.5, -1.0, 0.0]),  # images -1, -1, 0, 0: mean -.5, mean sq .5
        "cos_moments@0": np.array([12.0, -1.0, 1.0]),
        "tok_map@-1": tokl, "pe_map@-1": pel,
        "tok_norm@-1": np.array([2.0, 2.0, 2.0]), "resid_norm@-1": np.array([1.0, 2.0, 3.0]),
        "pe_norm@-1": np.array([0.0, 1.0, 1.0]), "tok_pe_cos@-1": np.zeros(3),
        "corr_img@-1": np.array([2.0, 0.25, 0.0625, 0.25, 0.25]), "cos_moments@-1": np.array([6.0, 0.5, 0.5]),
        "out_norm@-1": np.array([3.0, 3.0, 6.0]),
        "last_cos": np.array([4.0, 0.5, 0.5]),  # e.g. images 0, 1, 0, 1: std 0.5
        "last_cos_ln": np.array([4.0, 0.75, 0.6]),
        "norm_before": np.arange(4.0).reshape(2, 1, 2), "norm_after": np.ones((2, 1, 2)),
        "last_ln_gamma": np.array([1.0, 3.0]), "last_ln_beta": np.array([1.0, -1.0]),
        "pos_embed": np.zeros((3, 2)),
    }
    meta = dict(run="r", model="toy", pe_mode="mpvg", global_pool="token", num_prefix_tokens=1, grid=[1, 2],
                depth=1, embed_dim=2, n_images=4, pe_derived=False, receiving_blocks=[0], last_ln_pe=0)
    return ProbeReport(meta, arrays)


def values(report: ProbeReport) -> dict:
    f = summary_frame(report)
    return {(int(l), m): v for l, m, v in zip(f.layer, f.metric, f.value)}


def test_every_metric_on_a_hand_report():
    v = values(hand_report())
    # layer 0: Tok and PE are exact opposites on every row
    assert v[(0, "tok_pe_corr")] == pytest.approx(-1.0)
    assert v[(0, "tok_pe_corr_patch")] == pytest.approx(-1.0)
    assert v[(0, "tok_pe_corr_img_mean")] == pytest.approx(-0.5)
    assert v[(0, "tok_pe_corr_img_std")] == pytest.approx(0.5)
    assert (v[(0, "tok_pe_corr_img_min")], v[(0, "tok_pe_corr_img_max")]) == (-1.0, 0.0)
    assert v[(0, "tok_pe_cos_mean")] == pytest.approx(-1.0) and v[(0, "tok_pe_cos_std")] == pytest.approx(0.0)
    assert v[(0, "tok_norm_mean")] == pytest.approx(2.0)
    assert v[(0, "resid_norm_mean")] == pytest.approx(5.0)
    assert v[(0, "pe_norm_mean")] == pytest.approx(3.0)
    # patch PE rows (0,-1) and (-2,-2): cosine 1/sqrt(2)
    assert v[(0, "pe_sim_offdiag_mean")] == pytest.approx(1 / np.sqrt(2))
    # Last LN: Tok flattened (1,2,1,2,3,4), PE (0,0,1,0,1,1)
    assert v[(-1, "tok_pe_corr")] == pytest.approx(pearson([1, 2, 1, 2, 3, 4], [0, 0, 1, 0, 1, 1]))
    # patch rows only: (1,2,3,4) vs (1,0,1,1): centred (-1.5,-.5,.5,1.5) . (.25,-.75,.25,.25) = .5;
    # sums of squares 5 and .75 -> .5 / sqrt(3.75)
    assert v[(-1, "tok_pe_corr_patch")] == pytest.approx(0.5 / np.sqrt(3.75))
    # its two parts, by hand. Channel means over the 3 rows: Tok (5/3, 8/3), PE (2/3, 1/3): two points per
    # vector, one going down, one up -> r_channel = -1. Positional part: Tok - means = (-2/3,-2/3,-2/3,-2/3,4/3,4/3)
    # and PE - means = (-2/3,-1/3,1/3,-1/3,1/3,2/3): dot = (4+2-2+2+4+8)/9 = 2, sums of squares 48/9 and 12/9
    assert v[(-1, "tok_pe_corr_channel")] == pytest.approx(-1.0)
    assert v[(-1, "tok_pe_corr_position")] == pytest.approx(0.75)  # 2 / sqrt(48/9 * 12/9)
    # layer 0: exact opposites on every row: the positional part is -1 too; both channel means are (1, 1) and
    # (-1, -1), constant vectors, so their correlation is undefined (NaN), not a number made up
    assert v[(0, "tok_pe_corr_position")] == pytest.approx(-1.0) and np.isnan(v[(0, "tok_pe_corr_channel")])
    assert v[(-1, "tok_pe_corr_img_std")] == pytest.approx(0.0)
    assert v[(-1, "pe_norm_mean")] == pytest.approx(2 / 3)
    assert v[(-1, "last_ln_out_norm_mean")] == pytest.approx(4.0)
    assert v[(-1, "last_ln_gamma_mean")] == 2.0 and v[(-1, "last_ln_beta_mean")] == 0.0
    assert v[(-1, "last_ln_beta_var")] == pytest.approx(1.0)  # beta (1, -1): population variance 1
    assert v[(-1, "last_ln_cos_before_after")] == 0.5
    assert v[(-1, "last_ln_cos_before_after_std")] == pytest.approx(0.5)
    assert v[(-1, "last_ln_cos_before_after_ln")] == 0.75
    # the patch-grid view of the PE similarity
    np.testing.assert_allclose(pe_similarity_grid(hand_report(), 0, 1), [[1 / np.sqrt(2), 1.0]])


def test_nan_prefix_pe_rows_are_left_out():
    v = values(hand_report(pe_prefix_nan=True))
    assert v[(0, "tok_pe_corr")] == pytest.approx(-1.0)
    assert v[(0, "pe_norm_mean")] == pytest.approx(1.5)
    assert all(np.isfinite(x) for x in v.values())


def test_frame_schema_and_layer_order():
    f = summary_frame(hand_report())
    assert list(f.columns) == ["run", "model", "pe_mode", "global_pool", "site", "pe_kind", "layer", "metric", "value"]
    assert list(dict.fromkeys(f.layer)) == [0, -1]
    assert set(f.run) == {"r"} and set(f.model) == {"toy"}
    for name in ("tok_pe_corr", "tok_pe_corr_img_mean", "tok_pe_corr_img_std", "tok_pe_cos_mean",
                 "tok_pe_cos_std", "tok_norm_mean", "pe_norm_mean", "resid_norm_mean", "last_ln_beta_var",
                 "last_ln_cos_before_after"):
        assert name in set(f.metric), name
    assert not f.duplicated(["layer", "metric"]).any()


def test_views():
    r = hand_report()
    tok, pe = r.mean_maps(0)
    assert tok.shape == pe.shape == (3, 2)
    tok, pe = r.mean_maps(-1)
    assert pe is not None and tok.shape == (3, 2)
    with pytest.raises(UnknownNameError):
        r.mean_maps(5)
    with pytest.raises(UnknownNameError):
        r.mean_maps(True)
    assert pe_similarity_matrix(r, 0).shape == (2, 2)
    params = last_ln_params(r)
    assert list(params.columns) == ["channel", "gamma", "beta"] and params.beta.tolist() == [1.0, -1.0]
    maps = r.token_norm_maps()
    assert maps["before"].shape == maps["after"].shape == (2, 1, 2)
    # a layer without a PE
    r.arrays.pop("pe_map@0")
    assert r.mean_maps(0)[1] is None
    with pytest.raises(ValueError, match="no PE"):
        pe_similarity_matrix(r, 0)


def test_save_load_roundtrip(tmp_path):
    r = hand_report(pe_prefix_nan=True)
    out = save_report(r, tmp_path / "rep")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["arrays.npz", "meta.json", "metrics.csv"]  # no temporary files left behind
    back = ProbeReport.load(out)
    assert back.meta == json.loads(json.dumps(r.meta)) and "report_id" in back.meta
    assert set(back.arrays) == set(r.arrays)
    for k in r.arrays:
        np.testing.assert_array_equal(back.arrays[k], r.arrays[k])
    assert back.meta["report_id"] == r.report_id()
    pd.testing.assert_frame_equal(summary_frame(back), summary_frame(r))
    csv = pd.read_csv(out / "metrics.csv")
    np.testing.assert_allclose(csv.value.to_numpy(), summary_frame(r).value.to_numpy())
    with np.load(out / "arrays.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert "tok_map@0" in z.files
    r.save(out)  # overwriting works
    with pytest.raises(DataError, match="meta.json"):
        ProbeReport.load(tmp_path / "nothing")


def test_report_needs_contract_meta():
    with pytest.raises(ValueError, match="meta lacks"):
        ProbeReport({"run": "x"}, {})
