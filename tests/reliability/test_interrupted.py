"""Killed writers: the temporary files of an interrupted write are removed by the next command that locks the
folder, a killed training run resumes, a report folder mixed by a killed re-probe is probed again; and every
output file follows the umask like any other tool's."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

import pe_probe
from pe_probe.cli import main
from pe_probe.core.locks import LOCK_FILE
from pe_probe.core.report import ProbeReport

from ..training.common import TINY_RUN
from .common import env, listing

#: A process that starts an atomic write of ``argv[1]``/``argv[2]`` and is killed (SIGKILL) half-way through.
KILLED_WRITE = """
import os, signal, sys
from pe_probe.core.io import atomic_path
with atomic_path(os.path.join(sys.argv[1], sys.argv[2])) as tmp:
    tmp.write_text("half of it")
    os.kill(os.getpid(), signal.SIGKILL)
"""

#: A re-probe of run ``argv[1]`` killed after it wrote the new arrays and before the new meta.json.
KILLED_REPROBE = """
import os, signal, sys
import pe_probe.core.report as report
def killed(path, obj):
    os.kill(os.getpid(), signal.SIGKILL)
report.write_json = killed
from pe_probe.pipeline.run import probe_run
probe_run(sys.argv[1], reprobe=True, max_images=16, progress=False)
"""


def _killed(script: str, *args) -> None:
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_temporary_files_of_a_killed_write_are_removed_by_the_next_writer(digits_run, capsys):
    before = listing(digits_run)
    _killed(KILLED_WRITE, digits_run, "eval.json")
    _killed(KILLED_WRITE, digits_run, "summary.json")
    temps = [p for p in listing(digits_run) if p not in before]
    assert len(temps) == 2 and all(p.startswith(".") and p.endswith(".tmp") for p in temps)
    assert json.loads((digits_run / "summary.json").read_text())["epochs"] == 2  # the old file is intact
    assert main(["eval", str(digits_run)]) == 0  # takes the run's lock: the stale temporary files go
    assert listing(digits_run) == sorted([*before, "eval.json"])


def test_a_killed_training_run_resumes(tmp_path):
    out = tmp_path / "run"
    script = ("import os, signal, sys\nfrom pe_probe import train\n"
              "def kill(epoch, **_):\n    if epoch == 2:\n        os.kill(os.getpid(), signal.SIGKILL)\n"
              f"train(out=sys.argv[1], callbacks=[kill], **{dict(TINY_RUN, epochs=3)!r})\n")
    _killed(script, out)
    assert (out / "config.json").is_file() and (out / "state.pt").is_file() and not (out / "summary.json").exists()
    assert (out / LOCK_FILE).exists()  # the killed holder's lock file: stale, blocks nothing
    pe_probe.train(out=out, resume=True, **dict(TINY_RUN, epochs=3))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "metrics.jsonl", "model.safetensors", "state.pt", "summary.json"]


def test_a_report_mixed_by_a_killed_reprobe_is_probed_again(digits_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    run = digits_run.rename(runs / "run")
    argv = ["figures", str(runs), "--out", str(tmp_path / "fig"), "--no-progress", "--max-images", "32"]
    assert main(argv) == 0
    first = ProbeReport.load(run / "probe").meta["report_id"]
    _killed(KILLED_REPROBE, run)  # new arrays (16 images) beside the old meta.json (32 images)
    with pytest.raises(pe_probe.DataError, match="come from different probe runs"):
        ProbeReport.load(run / "probe")
    assert main(argv) == 0  # the mixed folder is detected and probed again, not reused
    again = ProbeReport.load(run / "probe")
    assert again.meta["report_id"] == first and again.meta["n_images"] == 32
    assert sorted(p.name for p in (run / "probe").iterdir()) == ["arrays.npz", "meta.json", "metrics.csv"]


def _modes(root) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_files_follow_the_umask(umask, mode, tmp_path, capsys):
    old = os.umask(umask)
    try:
        runs = tmp_path / "runs"
        pe_probe.train(out=runs / "run", **TINY_RUN)
        assert main(["eval", str(runs / "run")]) == 0
        assert main(["probe", str(runs / "run"), "--out", str(tmp_path / "report"), "--no-progress",
                     "--max-images", "16"]) == 0
        assert main(["figures", str(runs), "--out", str(tmp_path / "fig"), "--no-progress", "--max-images",
                     "16"]) == 0
    finally:
        os.umask(old)
    modes = _modes(tmp_path)
    expected = {"runs/run/config.json", "runs/run/model.safetensors", "runs/run/state.pt", "runs/run/summary.json",
                "runs/run/metrics.jsonl", "runs/run/eval.json", "runs/run/probe/meta.json", "report/arrays.npz",
                "fig/index.md", "fig/claims.csv"}
    assert expected <= set(modes)
    assert {name: m for name, m in modes.items() if m != mode} == {}
