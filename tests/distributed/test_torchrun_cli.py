"""``torchrun --nproc-per-node 2 -m pe_probe probe|eval`` on CPU (gloo) writes what one process writes, once."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import pe_probe
from pe_probe.cli import main
from pe_probe.core.locks import LOCK_FILE

from ..training.common import TINY_RUN
from .common import ROOT, torchrun


def test_python_m_pe_probe_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "pe_probe", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0 and "reproduce" in proc.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tr") / "run"
    pe_probe.train(out=out, **dict(TINY_RUN, epochs=1))
    return out


@pytest.mark.slow
def test_torchrun_probe_writes_the_single_process_report_once(run, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["probe", str(run), "--out", str(one), "--max-images", "333", "--no-progress"]) == 0
    proc = torchrun("-m", "pe_probe", "probe", str(run), "--out", str(two), "--max-images", "333", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("probed 333 images") == 1  # rank 0 alone prints (and writes)
    a, b = pe_probe.ProbeReport.load(one), pe_probe.ProbeReport.load(two)
    assert a.meta["n_images"] == b.meta["n_images"] == 333  # 333 does not divide by 2
    for key, want in a.arrays.items():
        np.testing.assert_allclose(b.arrays[key], want, rtol=1e-12, atol=0, err_msg=key)
    assert not (two / LOCK_FILE).exists() and sorted(p.name for p in two.iterdir()) == sorted(
        p.name for p in one.iterdir())


@pytest.mark.slow
def test_torchrun_eval_is_exact_and_recorded_once(run, capsys):
    assert main(["eval", str(run), "--batch-size", "64"]) == 0
    single = json.loads((run / "eval.json").read_text())
    (run / "eval.json").unlink()
    proc = torchrun("-m", "pe_probe", "eval", str(run), "--batch-size", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" n 360") == 1
    [got] = json.loads((run / "eval.json").read_text())
    [want] = single
    assert got["n"] == want["n"] == 360 and got["top1"] == want["top1"] and got["top5"] == want["top5"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)
