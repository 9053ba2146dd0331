"""``reproduce`` interrupted or asked for other options: its workers die with it (SIGTERM, SIGKILL, Ctrl-C to
the group) within seconds, the rerun reuses the complete runs and resumes the others; complete runs trained with
other options are refused by name; ``--plan`` checks the numbers; bad data leaves nothing (cases RP03, RP07-RP10,
RP12, R06)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import pe_probe
from pe_probe.cli import main
from pe_probe.core import signals
from pe_probe.pipeline.run import plan_runs

from .common import env, pe_probe_cmd

#: A tiny reproduction: one seed, one epoch, 16-dim models, no causal tests.
OPTS = ["--seeds", "1", "--epochs", "1", "--model-kwargs", "embed_dim=16", "depth=2", "num_heads=2",
        "--probe-every", "1", "--probe-images", "16", "--max-images", "32", "--no-causal", "--no-progress",
        "--device", "cpu"]


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pids) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _complete(out: Path) -> list[str]:
    return sorted(p.parent.name for p in (out / "runs").glob("*/summary.json"))


@pytest.mark.slow
@pytest.mark.parametrize("how", [pytest.param("SIGTERM", id="RP09"), pytest.param("SIGKILL", id="RP07-RP12"),
                                 pytest.param("SIGINT-group", id="RP08-RP08b")])
def test_stopping_reproduce_stops_its_workers_and_the_rerun_finishes(how, tmp_path):
    """RP09 (SIGTERM to the parent), RP07 / RP12 (SIGKILL to the parent, then the rerun), RP08 / RP08b (Ctrl-C:
    SIGINT to the group): within seconds no worker is left, the parent exits 143 / 130 in one line, no run
    that was pending is trained after the signal (only the ones in flight may finish), and the rerun reuses
    the complete runs unchanged and trains the rest."""
    out = tmp_path / "o"
    argv = pe_probe_cmd("reproduce", "--out", out, *OPTS, "--jobs", "2")
    proc = subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        t0 = time.monotonic()
        while not _complete(out):  # once one run is complete, the workers are busy with the next ones
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 240, "no run completed"
            time.sleep(0.05)
        workers = _descendants(proc.pid)
        assert workers
        before = set(_complete(out))
        if how == "SIGINT-group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=30)
        t_stop = time.monotonic()
        while _alive(workers) and time.monotonic() - t_stop < 15:
            time.sleep(0.1)
        assert _alive(workers) == set(), f"workers outlived reproduce ({how})"
        if how == "SIGTERM":
            assert proc.returncode == 143 and err.splitlines() == ["pe-probe reproduce: terminated"]
        elif how == "SIGINT-group":
            assert proc.returncode == 130 and err.splitlines() == ["pe-probe reproduce: interrupted"]
        complete = _complete(out)
        assert len(complete) < 8  # stopped: the pending runs were not all trained anyway
        assert len(set(complete) - before) <= 2  # RP08b: at most the runs in flight (--jobs 2) finished after it
        stamps = {n: (out / "runs" / n / "summary.json").stat().st_mtime_ns for n in complete}
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _alive(_descendants(proc.pid)):
            os.kill(pid, signal.SIGKILL)
    rerun = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{8 - len(complete)} trained, {len(complete)} reused" in rerun.stdout
    assert {n: (out / "runs" / n / "summary.json").stat().st_mtime_ns for n in complete} == stamps  # unchanged
    assert len(_complete(out)) == 8


def test_complete_runs_trained_with_other_options_are_refused_by_name(tmp_path, capsys):
    """RP10: complete runs trained with ``--epochs 1`` are not reused for ``--epochs 2``: one line naming the run
    and the option, nothing trained."""
    out = tmp_path / "o"
    first = plan_runs(out, seeds=1, epochs=1, model_kwargs=dict(embed_dim=16, depth=2, num_heads=2),
                      probe_every=1, probe_images=16)[0]
    pe_probe.train(first.config.replace(progress=False, verbose=False, num_threads=1))
    before = sorted(p.name for p in first.run.path.iterdir())
    assert main(["reproduce", "--out", str(out), *[o if o != "1" or i != 3 else "2" for i, o in enumerate(OPTS)],
                 "--jobs", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and first.run.name in err[0] and "epochs=1" in err[0] and "asked: 2" in err[0], err
    assert sorted(p.name for p in first.run.path.iterdir()) == before
    assert sorted(p.name for p in (out / "runs").iterdir()) == [first.run.name]  # nothing else trained


def test_plan_checks_the_numbers(tmp_path, capsys):
    """RP03: ``reproduce --lr nan --plan``: one line, no command printed, nothing written."""
    assert main(["reproduce", "--out", str(tmp_path / "o"), *OPTS, "--lr", "nan", "--plan"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and "lr=nan" in captured.err
    assert not (tmp_path / "o").exists()


def test_an_empty_image_folder_leaves_nothing(tmp_path, capsys):
    """R06: ``reproduce --dataset imagefolder --data-dir EMPTY``: one line, no output folder left."""
    (tmp_path / "empty").mkdir()
    assert main(["reproduce", "--out", str(tmp_path / "o"), "--dataset", "imagefolder", "--data-dir",
                 str(tmp_path / "empty"), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "empty" in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sig, exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, signals.Terminated)])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_swallowed_where_it_was_raised_is_raised_again(sig, exc):
    """RP08 / RP09: a Ctrl-C or SIGTERM whose exception is raised inside a ``__del__`` is swallowed by Python
    ("Exception ignored"); the command remembers it, and raise_if_interrupted raises it again."""

    class Victim:
        def __del__(self):
            os.kill(os.getpid(), sig)
            for _ in range(10_000):  # the handler runs here, inside __del__
                pass

    with signals.terminate_as_interrupt():
        signals.raise_if_interrupted()  # nothing received yet
        v = Victim()
        del v  # the exception is printed as ignored, not raised
        with pytest.raises(exc):
            signals.raise_if_interrupted()
    signals.raise_if_interrupted()  # forgotten once the command ends
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("jobs", [1, 2])
def test_reproduce_stops_on_an_interrupt_it_did_not_see_raised(jobs, tmp_path, monkeypatch):
    """RP08: reproduce checks for a swallowed interrupt while it waits on its workers (and between runs with one
    job): it stops within a second with KeyboardInterrupt, trains nothing and leaves no worker."""
    monkeypatch.setattr(signals, "_received", KeyboardInterrupt())
    out = tmp_path / "o"
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pe_probe.reproduce(out, seeds=1, epochs=1, model_kwargs=dict(embed_dim=16, depth=2, num_heads=2),
                           probe_every=1, probe_images=16, max_images=32, causal_tests=False, progress=False,
                           device="cpu", jobs=jobs)
    assert time.monotonic() - t0 < 60
    assert _complete(out) == []
    workers = [pid for pid in _alive(_descendants(os.getpid()))
               if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # not the resource tracker
    assert workers == [], "a worker outlived reproduce"
