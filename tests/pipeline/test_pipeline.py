"""End to end: reproduce on tiny digits runs, the figures command, presets, CLI errors."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pe_probe
from pe_probe import ProbeReport
from pe_probe.analysis import summary_frame
from pe_probe.cli import main
from pe_probe.pipeline import QUICK, ablation_plans, preset_plans, table5_layers

TINY_RUN = dict(model_kwargs={"embed_dim": 16, "depth": 3, "num_heads": 2}, epochs=1, seeds=2)
RUN_NAMES = sorted(f"{p.name}-seed{k}" for p in QUICK for k in range(2))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    res = pe_probe.reproduce(out, progress=False, max_images=96, **TINY_RUN)
    return out, res


@pytest.mark.slow
def test_reproduce_writes_every_promised_file_and_an_index(quick):
    out, res = quick
    assert sorted(res.trained) == RUN_NAMES and not res.reused
    fig = res.figures
    assert not fig.failed
    rendered = {r.spec.id for r in fig.rendered}
    assert {"fig1", "fig2", "fig4", "fig5", "fig6", "fig7", "fig8", "history", "lape_pe_similarity",
            "table1", "ablation", "attribution", "position_variance", "position_decoding", "pe_logit_share"} <= rendered
    decoded = summary_frame(ProbeReport.load(out / "runs" / "mpvg-seed1" / "probe"))
    assert {"pos_r2", "pos_acc", "pos_share", "pe_logit_share"} <= set(decoded.metric)  # reproduce decodes
    # two seeds per run: intervals everywhere, a verdict for every claim of a rendered figure
    assert set(pd.read_csv(out / "figures" / "fig1.csv").n_seeds) == {2}
    claims = pd.read_csv(out / "figures" / "claims.csv")
    assert len(claims) >= 13 and set(claims.verdict) <= {"supported", "contradicted", "inconclusive"}
    assert (out / "runs" / "mpvg-seed1" / "probe_history.csv").is_file()
    for name in ("ablation.csv", "ablation.json", "attribution.csv", "attribution.json"):  # cached per run
        assert (out / "runs" / "mpvg-seed1" / name).is_file()
    index = (out / "figures" / "index.md").read_text()
    for r in fig.rendered:
        exts = ("csv", "md") if r.spec.kind == "table" else ("png", "pdf", "csv")
        for ext in exts:
            f = out / "figures" / f"{r.spec.id}.{ext}"
            assert f.is_file() and f.stat().st_size > 0, f
        assert f"{r.spec.id}" in index
    # figures the quick runs cannot support are reported as skipped, with what they need
    skipped = {s.spec.id: s for s in fig.skipped}
    assert {"table5", "table6"} <= set(skipped)
    assert "Skipped" in index and "table5" in index and all(skipped[k].needs for k in skipped)
    assert not list((out / "figures").glob("*.tmp"))


@pytest.mark.slow
def test_figure_data_come_from_the_runs(quick):
    out, _ = quick
    runs = out / "runs"
    fig1 = pd.read_csv(out / "figures" / "fig1.csv")
    for _, row in fig1.iterrows():
        summary = json.loads((runs / row["run"] / "summary.json").read_text())
        assert row["top1"] == pytest.approx(summary["top1"])
    fig4 = pd.read_csv(out / "figures" / "fig4.csv")
    fig4 = fig4[fig4.run.notna() & (fig4.metric == "tok_pe_corr")]
    for run, part in fig4.groupby("run"):
        report = ProbeReport.load(runs / run / "probe")
        frame = summary_frame(report)
        ours = frame[(frame.metric == "tok_pe_corr") & frame.layer.isin(part.layer)].set_index("layer")["value"]
        np.testing.assert_allclose(part.set_index("layer")["value"].sort_index(), ours.sort_index(), rtol=1e-6)
        # and the correlation is the Pearson r of the saved mean maps (independent numpy computation)
        layer = int(part.layer.iloc[-1])
        tok, pe = report.mean_maps(layer)
        assert ours[layer] == pytest.approx(np.corrcoef(tok.ravel(), pe.ravel())[0, 1], abs=1e-6)
    # the causal figures show each run's cached ablation / attribution
    ablation = pd.read_csv(out / "figures" / "ablation.csv")
    for run, part in ablation.groupby("run"):
        saved = pd.read_csv(runs / run / "ablation.csv")
        saved = saved[saved.metric == "agree"].set_index(["site", "intervention"])["value"]
        # the figure data name the site in their column hook (their column site is its label, e.g. "block 2")
        np.testing.assert_allclose(part.set_index(["hook", "intervention"])["value"], saved.loc[
            list(zip(part.hook, part.intervention))])
        meta = json.loads((runs / run / "ablation.json").read_text())
        assert meta["n_images"] == 96 and meta["effect"] == "direct"
    assert set(ablation.run) == {f"{k}-seed{i}" for k in ("default", "lape", "pvg", "mpvg") for i in range(2)}
    attribution = json.loads((runs / "mpvg-seed0" / "attribution.json").read_text())
    assert attribution["n_images"] == 16 and attribution["baseline"] == "mean"


@pytest.mark.slow
def test_rerun_reuses_complete_runs(quick):
    out, _ = quick
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.safetensors")}
    res = pe_probe.reproduce(out, progress=False, max_images=96, **TINY_RUN)
    assert not res.trained and sorted(res.reused) == RUN_NAMES
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.safetensors")}


@pytest.mark.slow
def test_figures_cli_on_runs_dir(quick, tmp_path, capsys):
    out, _ = quick
    rc = main(["figures", str(out / "runs"), "--out", str(tmp_path / "figs"), "--no-progress"])
    assert rc == 0
    assert (tmp_path / "figs" / "index.md").exists() and (tmp_path / "figs" / "fig4.png").exists()
    assert "rendered" in capsys.readouterr().out


def test_figures_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["figures", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a directory" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["figures", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no complete run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_plan_prints_the_commands_reproduce_runs(quick, tmp_path, capsys):
    out, _ = quick
    args = ["reproduce", "--out", str(tmp_path), "--seeds", "2", "--epochs", "1", "--model-kwargs", "embed_dim=16",
            "depth=3", "num_heads=2", "--plan"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(RUN_NAMES) + 1 and lines[-1].startswith("pe-probe figures")
    assert not (tmp_path / "runs").exists()  # a plan writes nothing
    # the command of one run, executed, trains exactly what reproduce trained
    cmd = next(line for line in lines if "/mpvg-seed1 " in line)
    assert main(shlex.split(cmd)[1:] + ["--no-progress", "--quiet"]) == 0
    capsys.readouterr()  # pe-probe train prints its run directory
    ours, theirs = (json.loads((d / "mpvg-seed1" / "config.json").read_text()) for d in (tmp_path / "runs", out / "runs"))
    ours["data"].pop("data_dir"), theirs["data"].pop("data_dir")
    assert ours == theirs
    assert main(args + ["--nproc-per-node", "4"]) == 0
    assert capsys.readouterr().out.startswith("torchrun --nproc-per-node 4 -m pe_probe train")


@pytest.mark.slow
def test_parallel_jobs_train_the_same_runs(tmp_path, monkeypatch):
    """Two worker processes (one torch thread each) train, probe and ablate exactly what one process does."""
    import torch

    import pe_probe.pipeline.run as run_module

    # four schemes of the quick preset, one seed (class token, layer-wise, PVG, MPVG): each worker takes two
    # runs in turn; the plan is made in this process, so the patch reaches the workers through their configs
    plans = tuple(p for p in QUICK if p.name in ("default", "lape", "pvg", "mpvg"))
    monkeypatch.setattr(run_module, "preset_plans", lambda preset, depth: plans)
    # rendering (25 of each reproduce's 33 s here) happens in this process after the runs whatever ``jobs`` is,
    # and the quick fixture's test checks it: here only the runs are compared
    rendered = []
    monkeypatch.setattr(run_module, "render_figures", lambda runs_dir, out, **kw: rendered.append(runs_dir))
    opts = dict(model_kwargs={"embed_dim": 16, "depth": 2, "num_heads": 2}, epochs=1, seeds=1, max_images=32,
                progress=False)
    par = pe_probe.reproduce(tmp_path / "par", jobs=2, **opts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = pe_probe.reproduce(tmp_path / "seq", jobs=1, **opts)
    finally:
        torch.set_num_threads(threads)
    assert par.trained == seq.trained == [f"{p.name}-seed0" for p in plans]
    assert rendered == [tmp_path / "par" / "runs", tmp_path / "seq" / "runs"]
    for name in par.trained:
        a, b = (tmp_path / d / "runs" / name for d in ("par", "seq"))
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
        pd.testing.assert_frame_equal(pd.read_csv(a / "probe" / "metrics.csv"), pd.read_csv(b / "probe" / "metrics.csv"))
        assert (a / "ablation.csv").read_text() == (b / "ablation.csv").read_text()


def test_reproduce_cli_rejects_paper_preset_on_digits(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "o"), "--preset", "paper"]) == 2
    assert "paper preset" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--out", str(tmp_path / "o"), "--preset", "nope"])
    assert exc.value.code == 2


def test_presets_cover_the_paper_comparisons():
    # Table 5: pos_5, pos_8, pos_11 of a 12-block model
    assert table5_layers(12) == (5, 8, 11)
    assert all(1 <= k <= 5 for k in table5_layers(6))
    abl = ablation_plans(12)
    combos = {(p.options.get("pe_layer0", False), p.options.get("pe_hierarchical", True),
               p.options.get("pe_input_add", True)) for p in abl if "pe_layer0" in p.options}
    assert len(combos) == 7 and (False, True, True) not in combos  # the 8th is MPVG itself, in QUICK
    assert preset_plans("quick", 6) == QUICK
    names = [p.name for p in preset_plans("ablations", 6)]
    assert len(names) == len(set(names))
    # every quick run builds (the knob combination is valid)
    for p in QUICK:
        kw = {k: v for k, v in p.options.items()}
        pe_probe.PEVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, **kw)
