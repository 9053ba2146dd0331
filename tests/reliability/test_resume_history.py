"""A run remembers how it was trained, probe options included: killed at any point (SIGKILL at a training step,
just before a rename, at the start of a probe, half-way through a temp file; SIGTERM), ``train --resume`` writes
exactly the probe history an uninterrupted run writes, and a resume that asks for other probe options is refused
in one line (cases PH03-PH07, PH10, PH12, SG01)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from pe_probe.cli import main
from pe_probe.core.locks import LOCK_FILE

from ..training.common import cli_args
from .common import env, listing, pe_probe_cmd

pytestmark = pytest.mark.slow

#: A 4-epoch run probed after every epoch (deterministic: a resumed run is bit-identical).
ARGS = [*cli_args(**{"--epochs": "4"}), "--deterministic", "--probe-every", "1", "--probe-images", "32"]

#: ``python -c`` fault injector: ``argv[1]`` the fault, ``argv[2:]`` pe-probe's arguments.
#: ``step:N`` SIGKILL at optimizer step N; ``replace:NAME:N`` just before the N-th rename onto NAME;
#: ``probe:N`` at the start of epoch N's probe; ``half:NAME:N`` half-write the temp of the N-th NAME, then SIGKILL.
FAULT = r"""
import os, signal, sys
fault, argv = sys.argv[1].split(":"), sys.argv[2:]
kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
if fault[0] == "step":
    from pe_probe.training import loop
    step = loop._Trainer._step
    def _step(self, x, y):
        if self.global_step + 1 == int(fault[1]):
            kill()
        return step(self, x, y)
    loop._Trainer._step = _step
elif fault[0] in ("replace", "half"):
    real, seen = os.replace, {"n": 0}
    def replace(src, dst):
        if os.path.basename(str(dst)) == fault[1]:
            seen["n"] += 1
            if seen["n"] == int(fault[2]):
                if fault[0] == "half":
                    data = open(src, "rb").read()
                    open(src, "wb").write(data[: len(data) // 2])
                kill()
        return real(src, dst)
    os.replace = replace
elif fault[0] == "probe":
    from pe_probe.pipeline import history
    call = history.ProbeHistory.__call__
    def probe(self, **kw):
        if kw["epoch"] == int(fault[1]):
            kill()
        return call(self, **kw)
    history.ProbeHistory.__call__ = probe
from pe_probe.cli import main
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The probe history (bytes) and final weights of the run trained without a stop."""
    out = tmp_path_factory.mktemp("whole") / "R"
    assert main(["train", "--out", str(out), *ARGS]) == 0
    return (out / "probe_history.csv").read_bytes(), (out / "model.safetensors").read_bytes()


def _resume_and_compare(out, uninterrupted):
    proc = subprocess.run(pe_probe_cmd("train", "--out", out, "--resume", "--no-progress", "--quiet"), env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    history, weights = uninterrupted
    assert (out / "probe_history.csv").read_bytes() == history  # epochs 1-4 once each, the uninterrupted numbers
    assert (out / "model.safetensors").read_bytes() == weights
    assert [p for p in listing(out) if p.endswith(".tmp") or p == LOCK_FILE] == []


@pytest.mark.parametrize("fault", [pytest.param("step:25", id="PH03"),
                                   pytest.param("replace:probe_history.csv:2", id="PH04"),
                                   pytest.param("replace:state.pt:2", id="PH05"),
                                   pytest.param("probe:3", id="PH06"),
                                   pytest.param("half:probe_history.csv:3", id="PH07")])
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_history(fault, tmp_path, uninterrupted):
    """PH03 (SIGKILL mid epoch 3), PH04 (before the 2nd probe_history.csv rename), PH05 (after epoch 2's history,
    before its state), PH06 (at the start of epoch 3's probe), PH07 (a half-written history temp): ``--resume``
    writes the uninterrupted run's probe_history.csv (epochs 1-4 once each) and weights, and leaves no temps."""
    out = tmp_path / "R"
    proc = subprocess.run([sys.executable, "-c", FAULT, fault, "train", "--out", str(out), *ARGS], env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    recorded = json.loads((out / "config.json").read_text())["recipe"]["args"]
    assert (recorded["probe_every"], recorded["probe_images"]) == (1, 32)  # the run remembers its probe options
    _resume_and_compare(out, uninterrupted)


def _wait_for(path, proc, timeout=120):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def test_sigterm_mid_training_exits_143_in_one_line_and_resumes_to_the_uninterrupted_history(tmp_path, uninterrupted):
    """PH12: SIGTERM after the first history write stops the run (143, one line, nothing half-written); the
    resume gives the uninterrupted history."""
    out = tmp_path / "R"
    proc = subprocess.Popen(pe_probe_cmd("train", "--out", out, *ARGS), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # after the first history write and its epoch's state (before it, the fresh run saved nothing: it is removed,
    # as test_sigterm_on_a_fresh_run... checks)
    _wait_for(out / "state.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.splitlines() == ["pe-probe train: terminated"]
    assert [p for p in listing(out) if p.endswith(".tmp")] == []  # nothing half-written
    _resume_and_compare(out, uninterrupted)


def test_sigterm_on_a_fresh_run_before_its_first_state_leaves_nothing_that_blocks_a_rerun(tmp_path):
    """SG01: SIGTERM right after config.json appears: the fresh run removes what it wrote; the rerun works."""
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *cli_args(**{"--epochs": "40"})]
    proc = subprocess.Popen(pe_probe_cmd(*args), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "config.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.splitlines() == ["pe-probe train: terminated"]
    assert not out.exists()  # the fresh run removed what it wrote (and the folder it made)
    args[args.index("40")] = "1"
    rerun = subprocess.run(pe_probe_cmd(*args), env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr


def test_a_resume_asking_for_other_probe_options_is_refused_in_one_line(tmp_path, capsys):
    """PH10: ``--resume --probe-every 2`` (or other --probe-images) on a run recorded with 1: one line, nothing
    changed."""
    out = tmp_path / "R"
    assert main(["train", "--out", str(out), *cli_args(**{"--epochs": "1"}), "--probe-every", "1",
                 "--probe-images", "16"]) == 0
    (out / "summary.json").unlink()  # as if it was killed after its last epoch
    before = {p: (out / p).read_bytes() for p in listing(out)}
    capsys.readouterr()
    for flag, value in (("--probe-every", "2"), ("--probe-images", "32")):
        assert main(["train", "--out", str(out), "--resume", flag, value, "--no-progress", "--quiet"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and flag[2:].replace("-", "_") in err[0] and "keeps its configuration" in err[0], err
    assert {p: (out / p).read_bytes() for p in listing(out)} == before
