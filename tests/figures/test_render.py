"""render_all on fake runs: every promised file, an index listing them, skipped and failed specs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pe_probe.analysis import last_ln_params
from pe_probe.figures import builtin_specs_dir, load_spec, render_all

from ..fakes import make_run, paper_runs

FIGURES = ["ablation", "attention_distance", "attention_logits", "attribution", "fig1", "fig2", "fig4", "fig5",
           "fig6", "fig7", "fig8", "history", "lape_pe_similarity", "patch_shuffle", "pe_logit_share",
           "position_decoding", "position_variance", "resolution"]
TABLES = ["table1", "table5", "table6"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    runs = paper_runs()
    return render_all(runs, out, strict=True, dpi=40), runs


def test_every_promised_file_exists(rendered):
    result, _ = rendered
    assert result.ok and not result.failed
    assert [r.spec.id for r in result.rendered] == FIGURES + TABLES
    assert [s.spec.id for s in result.skipped] == ["table2"]  # no Swin/CeiT/T2T/ViT-Lite runs
    out = result.out_dir
    for fid in FIGURES:
        assert (out / f"{fid}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{fid}.pdf").read_bytes()[:4] == b"%PDF"
        assert len(pd.read_csv(out / f"{fid}.csv")) > 0
    for tid in TABLES:
        assert len(pd.read_csv(out / f"{tid}.csv")) > 0
        assert (out / f"{tid}.md").read_text().startswith("# Table")
    assert all(p.exists() for p in result.files())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_index_lists_everything(rendered):
    result, runs = rendered
    index = result.index.read_text()
    for fid in FIGURES:
        assert f"![{fid}]({fid}.png)" in index and f"({fid}.pdf)" in index and f"({fid}.csv)" in index
    for r in result.rendered:
        assert r.spec.caption in index and r.spec.title in index
    for tid in TABLES:
        assert f"({tid}.csv)" in index
    assert "| Default | 72.14 | 79.81 | 81.85 | 70.00 |" in index  # table 1 inline, paper beside ours
    skipped = index.split("## Skipped", 1)[1]
    assert "**table2**" in skipped and "backbone=Swin-Ti" in skipped
    assert all(f"`{r.name}`" in index for r in runs)


def test_figure_data_matches_runs(rendered):
    result, runs = rendered
    by_name = {r.name: r for r in runs}
    out = result.out_dir
    fig1 = pd.read_csv(out / "fig1.csv").set_index("series")
    assert fig1.loc["mpvg", "top1"] == 74.0 and fig1.loc["mpvg", "paper"] == 73.51
    assert np.isnan(fig1.loc["gap_layerwise", "paper"])

    fig4 = pd.read_csv(out / "fig4.csv").set_index(["run", "layer", "metric"])
    tok, pe = by_name["pvg"].report.mean_maps(2)
    assert fig4.loc[("pvg", 2, "tok_pe_corr"), "value"] == pytest.approx(np.corrcoef(tok.ravel(), pe.ravel())[0, 1])
    tc, pc = tok - tok.mean(0), pe - pe.mean(0)
    assert fig4.loc[("pvg", 2, "tok_pe_corr_position"), "value"] == pytest.approx(np.corrcoef(tc.ravel(), pc.ravel())[0, 1])
    assert fig4.loc[("pvg", 2, "tok_pe_corr_channel"), "value"] == pytest.approx(np.corrcoef(tok.mean(0), pe.mean(0))[0, 1])
    assert fig4.reset_index().run.notna().all()  # the paper's 12-block values are not drawn beside 4-block runs

    fig6 = pd.read_csv(out / "fig6.csv")
    pvg = fig6[fig6.run == "pvg"]
    beta = last_ln_params(by_name["pvg"].report)["beta"].to_numpy()
    np.testing.assert_allclose(pvg.beta, beta)
    assert pvg.var_beta.iloc[0] == pytest.approx(np.var(beta))
    assert pvg.cosine.iloc[0] == pytest.approx(by_name["pvg"].report.arrays["last_cos"][1])
    assert pvg.paper_var_beta.iloc[0] == 0.2387 and pvg.paper_cosine.iloc[0] == 0.2995

    fig7 = pd.read_csv(out / "fig7.csv")
    before = fig7[(fig7.run == "mpvg") & (fig7.stage == "before") & (fig7.image == 1)]
    np.testing.assert_allclose(before.value.to_numpy().reshape(3, 3),
                               by_name["mpvg"].report.token_norm_maps()["before"][1])

    table5 = pd.read_csv(out / "table5.csv")
    assert table5.set_index("run").loc["mpvg_pos2", "top1"] == 73.5
    assert set(table5.paper_top1.dropna()) == {73.30, 73.38, 73.39, 73.51}
    table6 = pd.read_csv(out / "table6.csv")
    assert table6.set_index("run").loc["mpvg", "paper_top1"] == 73.51


def test_missing_runs_are_skipped_not_crashed(tmp_path):
    result = render_all([make_run("default", "default")], tmp_path, strict=True)
    assert [r.spec.id for r in result.rendered] == ["ablation", "attention_distance", "attention_logits", "attribution",
                                                    "patch_shuffle", "pe_logit_share", "position_decoding",
                                                    "position_variance", "resolution", "table1"]
    skipped = {s.spec.id: s for s in result.skipped}
    assert "fig5" in skipped and any("last_ln_pe=0" in n for n in skipped["fig5"].needs)
    assert "fig2" in skipped and any("probe report" in n for n in skipped["fig2"].needs)
    assert not (tmp_path / "fig5.png").exists()
    index = result.index.read_text()
    assert "**fig5**" in index and "**lape_pe_similarity**" in index

    empty = render_all([], tmp_path / "none")
    assert [r.spec.id for r in result.rendered] == ["ablation", "attention_distance", "attention_logits", "attribution",
                                                    "patch_shuffle", "pe_logit_share", "position_decoding",
                                                    "position_variance", "resolution", "table1"]
    assert "## Skipped" in empty.index.read_text()


class _BrokenArrays(dict):
    def __getitem__(self, key):
        raise RuntimeError("corrupt probe file")


def test_failing_plot_is_recorded_or_raised(tmp_path):
    runs = [make_run(n, p) for n, p in (("pvg", "pvg"), ("mpvg", "mpvg"))]
    runs[0].report.arrays = _BrokenArrays(runs[0].report.arrays)
    spec = load_spec(builtin_specs_dir() / "fig6.toml")
    result = render_all(runs, tmp_path, specs=[spec])
    assert not result.ok and result.failed[0].error == "RuntimeError: corrupt probe file"
    assert "## Failed" in result.index.read_text()
    with pytest.raises(RuntimeError, match="corrupt"):
        render_all(runs, tmp_path, specs=[spec], strict=True)


def test_a_new_figure_is_just_a_spec(tmp_path):
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    (spec_dir / "lape_vs_pvg.toml").write_text('''
id = "lape_vs_pvg"
title = "LaPE vs PVG"
caption = "Accuracy of two layer-wise schemes."
kind = "figure"
plot = "accuracy_bars"
needs = ["summary"]

[[series]]
key = "lape"
select = { pe_mode = "lape", global_pool = "token" }

[[series]]
key = "pvg"
select = { pe_mode = "pvg", global_pool = "avg" }
''')
    result = render_all(paper_runs(), tmp_path / "out", spec_dir=spec_dir, strict=True, dpi=40)
    assert [r.spec.id for r in result.rendered] == ["lape_vs_pvg"]
    data = pd.read_csv(tmp_path / "out" / "lape_vs_pvg.csv")
    assert list(data.run) == ["lape", "pvg"] and list(data.top1) == [72.0, 73.0]
