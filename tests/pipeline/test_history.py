"""Probing during training: RUN/probe_history.csv, its last epoch against a fresh probe, resume without duplicates."""

from __future__ import annotations

import pandas as pd
import pytest

import pe_probe
from pe_probe.analysis import summary_frame
from pe_probe.training import checkpoints

from ..training.common import TINY_RUN

PROBE = dict(probe_every=2, probe_images=24)


def fresh_probe(run_dir, images: int) -> pd.DataFrame:
    """What ``pe-probe probe RUN --max-images K`` measures on the final weights."""
    run = pe_probe.load_run(run_dir)
    data = run.config["data"]
    report = pe_probe.probe(run.model, data["dataset"], mean=data["mean"], std=data["std"], max_images=images,
                            progress=False)
    return summary_frame(report)[["layer", "metric", "value"]]


def test_history_every_n_epochs_and_the_last_equals_a_fresh_probe(tmp_path):
    out = pe_probe.train(out=tmp_path / "run", pe_mode="pvg", **{**TINY_RUN, "epochs": 3}, **PROBE)
    history = pd.read_csv(out / "probe_history.csv")
    assert list(history.columns) == ["epoch", "layer", "metric", "value"]
    assert sorted(set(history.epoch)) == [2, 3]  # every 2 epochs, and the last
    last = history[history.epoch == 3].drop(columns="epoch").reset_index(drop=True)
    pd.testing.assert_frame_equal(last, fresh_probe(out, PROBE["probe_images"]), check_exact=False, rtol=1e-6, atol=1e-7)
    assert {"tok_pe_corr", "tok_pe_corr_position", "tok_pe_corr_channel"} <= set(history.metric)
    metrics = [r["callback_time_s"] for r in pe_probe.load_run(out).metrics if "callback_time_s" in r]
    assert len(metrics) == 3  # the probing time is recorded per epoch (BENCHMARKS.md reads it)


def test_resume_after_a_kill_between_history_and_state_keeps_each_epoch_once(tmp_path, monkeypatch):
    save = checkpoints.save_state
    calls = {"n": 0}

    def dies_at_epoch_2(run, state):  # the history of epoch 2 is written, its resume state is not
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        save(run, state)

    monkeypatch.setattr("pe_probe.training.loop.save_state", dies_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pe_probe.train(out=tmp_path / "run", pe_mode="mpvg", **{**TINY_RUN, "epochs": 3}, probe_every=1,
                       probe_images=24)
    assert sorted(set(pd.read_csv(tmp_path / "run" / "probe_history.csv").epoch)) == [1, 2]
    monkeypatch.setattr("pe_probe.training.loop.save_state", save)
    out = pe_probe.train(out=tmp_path / "run", resume=True, progress=False, verbose=False, probe_every=1,
                         probe_images=24)
    history = pd.read_csv(out / "probe_history.csv")
    assert not history.duplicated(["epoch", "layer", "metric"]).any()
    assert sorted(set(history.epoch)) == [1, 2, 3]
    last = history[history.epoch == 3].drop(columns="epoch").reset_index(drop=True)
    pd.testing.assert_frame_equal(last, fresh_probe(out, 24), check_exact=False, rtol=1e-6, atol=1e-7)


def test_probe_every_needs_the_public_train_and_valid_numbers(tmp_path):
    from pe_probe.training import run_training

    with pytest.raises(ValueError, match="pe_probe.train"):
        run_training(out=tmp_path / "a", **TINY_RUN, probe_every=1)
    with pytest.raises(ValueError, match="probe_images=0"):
        pe_probe.train(out=tmp_path / "b", **TINY_RUN, probe_every=1, probe_images=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_figures_load_each_runs_model_once(tmp_path, monkeypatch):
    # probing, ablating and attributing a run for the figures all need its model: it is read from disk once
    import pe_probe.pipeline.causal as causal_mod
    import pe_probe.pipeline.run as run_mod
    from pe_probe.training import load_run

    run = pe_probe.train(out=tmp_path / "runs" / "pvg", pe_mode="pvg", **{**TINY_RUN, "epochs": 1})
    loads = []

    def counting(path, *args, **kwargs):
        loads.append(str(path))
        return load_run(path, *args, **kwargs)

    monkeypatch.setattr(run_mod, "load_run", counting)
    monkeypatch.setattr(causal_mod, "load_run", counting)
    result = pe_probe.render_figures(tmp_path / "runs", tmp_path / "figs", max_images=16, progress=False)
    assert loads == [str(run)] and not result.failed
    assert (run / "probe").is_dir() and (run / "ablation.csv").is_file() and (run / "attribution.csv").is_file()
    loads.clear()
    pe_probe.render_figures(tmp_path / "runs", tmp_path / "figs2", max_images=16, progress=False)
    assert loads == []  # everything read back from the run directory
