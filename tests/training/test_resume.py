"""A run killed with SIGKILL mid-epoch and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from .common import cli_args

FLAGS = {"--epochs": "2", "--batch-size": "32", "--deterministic": True, "--checkpoint-every": "5", "--seed": "3", "--augment": True,
         "--mixup": "0.8", "--cutmix": "1.0", "--drop-path-rate": "0.1", "--pe-mode": "pvg"}


def _cmd(out) -> list[str]:
    return [sys.executable, "-m", "pe_probe", "train", "--out", str(out), *cli_args(**FLAGS)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _mid_epoch_state(out):
    """The saved (epoch, batch) once the run has checkpointed inside its second epoch, else None."""
    try:
        state = torch.load(out / "state.pt", weights_only=True)
    except Exception:  # noqa: BLE001 - not written yet
        return None
    return (state["epoch"], state["batch"]) if state["epoch"] >= 1 and state["batch"] > 0 else None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.Popen(_cmd(ref_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_cmd(run_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while _mid_epoch_state(run_dir) is None:
            assert victim.poll() is None, "the run ended before it could be killed mid-epoch"
            assert time.monotonic() < deadline, "no mid-epoch checkpoint appeared"
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    assert torch.load(run_dir / "state.pt", weights_only=True)["epoch"] < 2

    resumed = subprocess.run([*_cmd(run_dir), "--resume"], env=_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(timeout=240) == 0, ref.stderr.read().decode()

    a, b = load_file(str(ref_dir / "model.safetensors")), load_file(str(run_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    keys = ("epoch", "train_loss", "val_loss", "top1", "top5", "lr", "step")
    rows = [[{k: r[k] for k in keys} for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
            for d in (ref_dir, run_dir)]
    assert rows[0] == rows[1]
    assert json.loads((run_dir / "summary.json").read_text())["top1"] == rows[0][-1]["top1"]
