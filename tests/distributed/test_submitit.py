"""reproduce through submitit: the local executor runs a tiny study to its figures, a preempted run job is
requeued and resumes to bit-identical weights, and the SLURM submission asks for what it is given."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
import time

import pytest

pytest.importorskip("submitit")

import pe_probe  # noqa: E402
from pe_probe.cli import main  # noqa: E402
from pe_probe.pipeline.executors import Resources, RunJob, make_executor, submit_study  # noqa: E402
from pe_probe.training import TrainConfig  # noqa: E402

from ..training.common import TINY_MODEL  # noqa: E402

def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat_file.parent.name))
    return out


STUDY = dict(model_kwargs={"embed_dim": 16, "depth": 2, "num_heads": 2}, epochs=1, seeds=1, max_images=16)


@pytest.mark.slow
def test_local_executor_runs_a_study_to_its_figures(tmp_path, monkeypatch):
    import pe_probe.pipeline.run as run_module
    from pe_probe.pipeline import QUICK

    # two runs of the quick preset (a job per run: each starts an interpreter, trains, probes, ablates), one
    # per worker, then the figures job
    monkeypatch.setattr(run_module, "preset_plans", lambda preset, depth: QUICK[:2])
    out = tmp_path / "study"
    sub = submit_study(out, executor="local", jobs=2, **STUDY)
    assert len(sub.runs) == 2 and sub.figures is not None
    assert sorted(sub.runs) == sorted(p.name for p in (out / "runs").iterdir())
    for name in sub.runs:
        run = out / "runs" / name
        for f in ("summary.json", "model.safetensors", "probe/meta.json", "ablation.csv", "attribution.csv"):
            assert (run / f).exists(), (name, f)
    assert sub.figures.result() == str(out / "figures" / "index.md") and (out / "figures" / "index.md").is_file()
    again = submit_study(out, executor="local", jobs=2, **STUDY)  # every run complete: only the figures job
    assert again.runs == {} and sorted(again.reused) == sorted(sub.runs)


@pytest.mark.slow
def test_a_preempted_run_job_is_requeued_and_ends_with_the_uninterrupted_weights(tmp_path):
    opts = dict(dataset="digits", recipe="digits", model_kwargs=TINY_MODEL, epochs=4, batch_size=16, lr=5e-3,
                warmup_epochs=0.5, num_threads=1, checkpoint_every=10, deterministic=True, progress=False,
                verbose=False)
    ex = make_executor("local", tmp_path / "jobs")
    ex.update_parameters(timeout_min=20, tasks_per_node=1)
    job = ex.submit(RunJob(TrainConfig(out=str(tmp_path / "a"), **opts), causal_tests=False, max_images=16))
    metrics = tmp_path / "a" / "metrics.jsonl"
    deadline = time.time() + 240
    while not metrics.exists() and time.time() < deadline:  # the first epoch is saved: preempt the second
        time.sleep(0.05)
    assert not (tmp_path / "a" / "summary.json").exists(), "training ended before it could be preempted"
    for pid in _children(int(job.job_id)):  # the job's task: what SLURM sends it at the time limit or on preemption
        os.kill(pid, signal.SIGUSR2)
    assert job.result() == "a"
    log = job.paths.stdout.read_text() + job.paths.stderr.read_text()
    assert "Calling checkpoint method" in log and "Requeued" in log, log[-2000:]
    pe_probe.train(out=tmp_path / "b", **opts)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert (tmp_path / "a" / "probe" / "meta.json").is_file()


def test_resources_map_to_submitit_parameters():
    r = Resources(partition="gpu", nodes=2, gpus_per_node=4, cpus_per_task=10, mem_gb=64, timeout_min=2880)
    p = r.run_parameters("pe-probe-x")
    assert p["tasks_per_node"] == 4 and p["gpus_per_node"] == 4 and p["nodes"] == 2  # one task per GPU
    assert p["slurm_partition"] == "gpu" and p["timeout_min"] == 2880 and p["cpus_per_task"] == 10
    assert Resources().run_parameters("x")["tasks_per_node"] == 1
    with pytest.raises(ValueError, match="nodes"):
        Resources(nodes=0)


def test_slurm_submits_one_job_per_run_and_a_dependent_figures_job(tmp_path, monkeypatch, capsys):
    """A fake ``sbatch`` on PATH records each script and answers with a job id, as SLURM's does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\nn=$(ls \"$FAKE_SLURM\" | wc -l)\ncp \"$1\" \"$FAKE_SLURM/$((n + 100)).sh\"\n"
                      "echo \"Submitted batch job $((n + 100))\"\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that SLURM's tools are there
    for tool in (sbatch, bin_dir / "srun"):
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "scripts").mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(tmp_path / "scripts"))
    out = tmp_path / "study"
    rc = main(["reproduce", "--out", str(out), "--executor", "slurm", "--partition", "gpu", "--nodes", "2",
               "--gpus-per-node", "4", "--cpus-per-task", "10", "--mem-gb", "64", "--time-min", "600",
               "--seeds", "1", "--epochs", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    scripts = sorted((tmp_path / "scripts").iterdir(), key=lambda p: int(p.stem))
    assert len(scripts) == 9  # 8 runs (quick preset, 1 seed) and the figures
    for s in scripts[:-1]:
        text = s.read_text()
        for flag in ("--partition=gpu", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4",
                     "--cpus-per-task=10", "--mem=64GB", "--time=600", "--signal=USR2@120"):
            assert flag in text, (flag, text)
    figures = scripts[-1].read_text()
    assert "--dependency=afterok:" + ":".join(str(100 + i) for i in range(8)) in figures
    assert "--gpus-per-node" not in figures and "--ntasks-per-node=1" in figures
    assert "108" in printed and not (out / "runs").exists()  # nothing trained here: the jobs will
