"""One writer per folder: a second train, eval, probe, ablate, attribute, figures or reproduce of a folder another
process is writing exits 2 at once with one line naming that process, and changes nothing; a killed holder blocks
no one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pe_probe.cli import main
from pe_probe.core.locks import LOCK_FILE, FolderLockedError, folder_lock

from ..training.common import TINY_RUN, cli_args
from .common import env, listing, pe_probe_cmd

#: A real training process that pauses after its first epoch until the file ``argv[2]`` exists.
PAUSED_TRAIN = """
import sys, time
from pathlib import Path
def pause(epoch, **_):
    if epoch == 1:
        print("paused", flush=True)
        while not Path(sys.argv[2]).exists():
            time.sleep(0.05)
from pe_probe import train
train(out=sys.argv[1], callbacks=[pause], **{opts})
""".replace("{opts}", repr(TINY_RUN))


def _one_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert all(n in lines[0] for n in needles), err
    return lines[0]


def test_second_train_of_a_run_in_progress_exits_2_and_the_first_is_not_disturbed(tmp_path, capsys):
    out, go = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", PAUSED_TRAIN, str(out), str(go)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env())
    try:
        assert first.stdout.readline().strip() == "paused", first.stderr.read()
        config = (out / "config.json").read_text()
        before = listing(out)
        t0 = time.perf_counter()
        second = subprocess.run(pe_probe_cmd("train", "--out", out, *cli_args()), env=env(), capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        _one_line(second.stderr, f"{out} is in use by process {first.pid}", "train")
        assert time.perf_counter() - t0 < 60
        assert main(["train", "--out", str(out), "--resume", "--no-progress", "--quiet"]) == 2  # nor a resume
        _one_line(capsys.readouterr().err, f"{out} is in use by process {first.pid}")
        assert listing(out) == before and (out / "config.json").read_text() == config
        go.touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one run's epochs, once each
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "metrics.jsonl", "model.safetensors", "state.pt", "summary.json"]  # no lock file left


def _figures_runs(tmp_path, digits_run):
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.move(digits_run, runs / "run")
    return runs


#: What each command does first once it holds its lock: called here, it did not stop at once.
FIRST_WORK = {"train": ("pe_probe.training.loop", "plan_run"), "eval": ("pe_probe", "load_run"),
              "probe": ("pe_probe", "load_checkpoint"), "ablate": ("pe_probe", "load_checkpoint"),
              "attribute": ("pe_probe", "load_checkpoint"), "figures-out": ("pe_probe.pipeline.run", "find_runs"),
              "figures-run": ("pe_probe.pipeline.run", "load_run"), "reproduce": ("pe_probe.pipeline.run", "plan_runs")}


@pytest.mark.parametrize("command", list(FIRST_WORK))
def test_every_writer_stops_at_once_when_its_folder_is_held(command, digits_run, tmp_path, holder, capsys,
                                                             monkeypatch):
    import importlib

    def started(*args, **kwargs):
        raise AssertionError(f"{command} started working on a folder another process holds")

    module, name = FIRST_WORK[command]
    monkeypatch.setattr(importlib.import_module(module), name, started)
    run, out = digits_run, tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone else's")
    if command == "train":
        held, argv = run, ["train", "--out", str(run), "--resume", "--no-progress", "--quiet"]
        (run / "summary.json").unlink()  # an unfinished run, so --resume would train
    elif command == "eval":
        held, argv = run, ["eval", str(run)]
    elif command in ("probe", "ablate", "attribute"):
        held, argv = out, [command, str(run), "--out", str(out), "--no-progress"]
    elif command == "figures-out":
        held, argv = out, ["figures", str(_figures_runs(tmp_path, run)), "--out", str(out), "--no-progress"]
    elif command == "figures-run":  # the run to probe is held (e.g. being evaluated): figures stops, writes nothing
        runs = _figures_runs(tmp_path, run)
        held, argv = runs / "run", ["figures", str(runs), "--out", str(tmp_path / "fig"), "--no-progress"]
    else:
        held, argv = out, ["reproduce", "--out", str(out), "--no-progress"]
    proc = holder(held)
    before = {p: listing(p) for p in (tmp_path,)}
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 60
    _one_line(capsys.readouterr().err, f"{held} is in use by process {proc.pid}", "the test holder")
    assert {p: listing(p) for p in (tmp_path,)} == before  # nothing written, nothing removed, no folder made


def test_a_killed_holder_blocks_no_one(digits_run, holder, capsys):
    proc = holder(digits_run)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (digits_run / LOCK_FILE).exists()  # the killed holder's lock file is left behind ...
    assert main(["eval", str(digits_run)]) == 0  # ... and blocks nothing
    assert not (digits_run / LOCK_FILE).exists()
    assert "top1" in capsys.readouterr().out


def test_lock_is_free_within_one_process_and_leaves_no_trace(tmp_path):
    folder = tmp_path / "a" / "b"
    with folder_lock(folder, "outer"):
        with folder_lock(folder):  # an API call inside a command that holds the lock
            assert (folder / LOCK_FILE).exists()
        info = json.loads((folder / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "outer"
    assert not (tmp_path / "a").exists()  # created by the lock, left empty: removed
    (tmp_path / "kept").mkdir()
    with folder_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "f").write_text("x")
    assert listing(tmp_path / "kept") == ["f"]


def test_lock_refused_in_another_process_names_the_holder(tmp_path, holder):
    proc = holder(tmp_path)
    with pytest.raises(FolderLockedError, match=f"in use by process {proc.pid} .*the test holder"):
        with folder_lock(tmp_path):
            pass
