"""The attention and input-side figures (issue 20) draw exactly their runs' numbers: head means per block,
seed means with t intervals, one line per scheme; the shipped specs render from per-run frames."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from pe_probe.core.attention import ATTENTION_COLUMNS, RESOLUTION_COLUMNS, SHUFFLE_COLUMNS, WHOLE_MODEL  # noqa: E402
from pe_probe.figures.render import render_spec  # noqa: E402
from pe_probe.figures.spec import load_specs  # noqa: E402

from ..fakes import DEPTH, seeded_runs  # noqa: E402


def _attention(seed: int) -> pd.DataFrame:
    rows = []
    for l in range(DEPTH):
        for h in range(2):
            rows.append((f"blocks.{l}.attn", "none", l, h, "attn_distance", 1.0 + l + h + 0.1 * seed))
            rows.append((f"blocks.{l}.attn", "none", l, h, "logit_pos_share", 0.1 * (h + 1)))
    return pd.DataFrame(rows, columns=list(ATTENTION_COLUMNS))


def _shuffle(seed: int) -> pd.DataFrame:
    return pd.DataFrame([(1, "agree", 1.0), (2, "agree", 0.9 - 0.1 * seed), (4, "agree", 0.5)],
                        columns=list(SHUFFLE_COLUMNS))


def _resolution(seed: int) -> pd.DataFrame:
    rows = []
    for size in (8, 12, 16):
        rows.append((size, "", "none", WHOLE_MODEL, "top1", 0.5 + 0.01 * size + 0.01 * seed))
        for l in range(DEPTH):
            rows.append((size, f"blocks.{l}.hook_resid_pre", "none", l, "pos_share", 0.1 * l))
        rows.append((size, "hook_last_ln_in", "none", -1, "pos_share", 0.9))  # the Last LN: not averaged
    return pd.DataFrame(rows, columns=list(RESOLUTION_COLUMNS))


@pytest.fixture
def runs():
    out = seeded_runs(3)
    for r in out:
        seed = int(r.name[-1])
        r.attention, r.shuffle, r.resolution = _attention(seed), _shuffle(seed), _resolution(seed)
    return out


def _spec(name):
    return next(s for s in load_specs() if s.id == name)


def test_attention_distance_is_the_head_mean_with_a_seed_interval(runs, tmp_path):
    out = render_spec(_spec("attention_distance"), runs, tmp_path)
    data = pd.read_csv(tmp_path / "attention_distance.csv")
    mpvg = data[(data.series == "mpvg") & (data.layer == 2)].sort_values("seed")
    np.testing.assert_allclose(mpvg["value"], [1.0 + 2 + 0.5 + 0.1 * s for s in range(3)])  # heads 0, 1 averaged
    vals = mpvg["value"].to_numpy()
    lo, hi = stats.t.interval(0.95, 2, loc=vals.mean(), scale=stats.sem(vals))
    np.testing.assert_allclose(mpvg[["ci_low", "ci_high"]].iloc[0], [lo, hi])
    assert (tmp_path / "attention_distance.png").is_file() and "mpvg: attn_distance" in " ".join(out.findings)


def test_shuffle_and_resolution_figures(runs, tmp_path):
    render_spec(_spec("patch_shuffle"), runs, tmp_path)
    data = pd.read_csv(tmp_path / "patch_shuffle.csv")
    two = data[(data.series == "pvg") & (data.block == 2)]
    np.testing.assert_allclose(sorted(two["value"]), [0.7, 0.8, 0.9])
    np.testing.assert_allclose(two["mean"].iloc[0], 0.8)
    render_spec(_spec("resolution"), runs, tmp_path)
    res = pd.read_csv(tmp_path / "resolution.csv")
    top = res[(res.series == "lape") & (res.metric == "top1") & (res.img_size == 12)]
    np.testing.assert_allclose(sorted(top["value"]), [0.62, 0.63, 0.64])
    corr = res[(res.series == "lape") & (res.metric == "pos_share") & (res.img_size == 8)]
    np.testing.assert_allclose(corr["value"], 0.1 * np.mean(range(DEPTH)))  # averaged over the blocks only
    assert set(res.loc[res.native, "img_size"]) == {12}  # the runs were trained at 12 px
    assert (tmp_path / "resolution.png").is_file()


def test_a_run_without_the_measurement_is_skipped_with_a_reason(runs, tmp_path):
    for r in runs:
        r.shuffle = None
    out = render_spec(_spec("patch_shuffle"), runs, tmp_path)
    assert any("shuffle.csv" in n for n in out.needs + out.notes), out
