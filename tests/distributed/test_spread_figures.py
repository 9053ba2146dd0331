"""``torchrun --nproc-per-node 2 -m pe_probe figures RUNS``: each run measured by one rank, figures once."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

import pe_probe
from pe_probe.cli import main

from ..training.common import TINY_RUN
from .common import torchrun


@pytest.mark.slow
def test_torchrun_figures_spreads_the_runs_and_renders_once(tmp_path, capsys):
    runs = tmp_path / "runs"
    for i, mode in enumerate(("default", "mpvg", "pvg")):
        pe_probe.train(out=runs / f"{mode}-seed0", pe_mode=mode, global_pool="avg" if mode != "default" else "token",
                       seed=i, **dict(TINY_RUN, epochs=1))
    shutil.copytree(runs, tmp_path / "runs1")
    proc = torchrun("-m", "pe_probe", "figures", str(runs), "--out", str(tmp_path / "fig"), "--max-images", "32",
                    "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("rendered") == 1 and (tmp_path / "fig" / "index.md").is_file()
    assert main(["figures", str(tmp_path / "runs1"), "--out", str(tmp_path / "fig1"), "--max-images", "32",
                 "--no-progress"]) in (0, 1)
    for run in sorted(runs.iterdir()):
        one = tmp_path / "runs1" / run.name
        for f in ("probe/metrics.csv", "ablation.csv", "attribution.csv"):
            pd.testing.assert_frame_equal(pd.read_csv(run / f), pd.read_csv(one / f))
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == sorted(p.name for p in (tmp_path / "fig1").iterdir())


def test_reproduce_refuses_torchrun_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["reproduce", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--executor" in err[0]
