"""DistributedDataParallel through torchrun: two CPU processes with the gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pe_probe

from .common import cli_args


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pe_probe",
           "train", "--out", str(out), *cli_args(**{"--epochs": "1", "--checkpoint-every": "5", "--pe-mode": "mpvg"})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["top1"] > 30, summary  # chance is 10 %
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # 1437 images, batch 16 on each of 2 processes -> 44 steps per epoch
    assert [m["step"] for m in metrics] == [44]
    res = pe_probe.evaluate(out)
    assert res["n"] == 360 and res["top1"] == pytest.approx(summary["top1"])
