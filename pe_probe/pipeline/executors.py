"""``reproduce`` on a scheduler through submitit (the launcher of DeiT's and LaPE's ``run_with_submitit.py``).

One job per run (:class:`RunJob`: train or resume the run, then probe, ablate and attribute it, all cached in
its directory) and one job that renders the figures once every run job is done (:class:`FiguresJob`; on
SLURM a dependent job, ``afterok`` on every run job). A run job that reaches its time limit or is preempted
is checkpointed by submitit (``checkpoint()`` returns a ``DelayedSubmission`` of the same run with
``resume=True``) and requeued; training continues from the run's last saved state (``state.pt``, written at
every epoch end and every ``checkpoint_every`` steps), so the final weights equal an uninterrupted run's.

A multi-GPU run is launched the way submitit expects: ``tasks_per_node = gpus_per_node`` on each of ``nodes``
nodes, every task one process; submitit's ``JobEnvironment`` gives rank, world size and the first host
(:class:`submitit.helpers.TorchDistributedEnvironment`), and training joins that group (DDP). The run's probe,
ablation and attribution then run on rank 0.

``executor="local"`` uses submitit's ``LocalExecutor`` (jobs are processes on this machine, at most ``jobs`` at
a time); it is what the tests use. submitit is an optional dependency (``pip install pe-probe[slurm]``),
imported only here, when a study is submitted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import PEProbeError
from ..core.vocab import EXECUTORS
from ..training import TrainConfig


class JobFailedError(PEProbeError, RuntimeError):
    """A submitted job failed; the message names it and its log."""


@dataclass(frozen=True)
class Resources:
    """What each run job asks the scheduler for. ``gpus_per_node`` 0: a CPU job with one task per node.
    ``timeout_min``: the time limit; ``max_timeouts``: how often a job that hit it (or was preempted) is
    requeued. ``partition``, ``account``, ``qos``, ``constraint``: SLURM's (ignored by the local executor)."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 60
    max_timeouts: int = 3
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    figures_timeout_min: int = 60
    extra: dict = field(default_factory=dict)  # more submitit parameters (e.g. slurm_exclude)

    def __post_init__(self) -> None:
        for name in ("nodes", "timeout_min", "figures_timeout_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        for name in ("gpus_per_node", "max_timeouts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}={v!r} must be an integer >= 0")
        if self.cpus_per_task is not None and (not isinstance(self.cpus_per_task, int) or self.cpus_per_task < 1):
            raise ValueError(f"cpus_per_task={self.cpus_per_task!r} must be a positive integer")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ValueError(f"mem_gb={self.mem_gb!r} must be positive")

    @property
    def tasks_per_node(self) -> int:
        """One task (process) per GPU, as submitit and DDP expect; one on a CPU node."""
        return max(1, self.gpus_per_node)

    def run_parameters(self, name: str) -> dict[str, Any]:
        """submitit ``update_parameters`` keywords of a run job (generic names, ``slurm_``-prefixed extras)."""
        p: dict[str, Any] = dict(name=name, timeout_min=self.timeout_min, nodes=self.nodes,
                                 tasks_per_node=self.tasks_per_node, stderr_to_stdout=True)
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.cpus_per_task is not None:
            p["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb is not None:
            p["mem_gb"] = self.mem_gb
        p.update(self._slurm())
        return {**p, **self.extra}

    def figures_parameters(self, name: str) -> dict[str, Any]:
        """submitit keywords of the figures job: one task, no GPU, its own time limit."""
        p: dict[str, Any] = dict(name=name, timeout_min=self.figures_timeout_min, nodes=1, tasks_per_node=1,
                                 stderr_to_stdout=True)
        if self.cpus_per_task is not None:
            p["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb is not None:
            p["mem_gb"] = self.mem_gb
        p.update(self._slurm())
        return p

    def _slurm(self) -> dict[str, Any]:
        p: dict[str, Any] = {"slurm_signal_delay_s": 120}
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key) is not None:
                p[f"slurm_{key}"] = getattr(self, key)
        return p


def _submitit():
    try:
        import submitit
    except ImportError:  # pragma: no cover - depends on the environment
        raise PEProbeError("--executor needs submitit: pip install 'pe-probe[slurm]' (or pip install submitit)") \
            from None
    return submitit


def _export_torch_distributed() -> tuple[int, int]:
    """In a submitit job with several tasks: export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from submitit's
    ``JobEnvironment`` so that training joins one process group (env:// initialisation). Returns (rank, world)."""
    submitit = _submitit()
    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return 0, 1
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return job.global_rank, job.num_tasks


class RunJob:
    """One run of a study as a submitit job: train it (resuming what a previous attempt saved), then on rank 0
    probe, ablate and attribute it (:func:`pe_probe.pipeline.run.run_one`). Returns the run's name.

    ``checkpoint()`` is submitit's hook on a time-out or preemption: it returns the same job with
    ``resume=True``, which submitit requeues."""

    def __init__(self, config: TrainConfig, *, data_dir: str | None = None, max_images: int | None = None,
                 causal_tests: bool = True, threads: int | None = None, resume: bool = False) -> None:
        self.config, self.resume = config, resume
        self.work = dict(data_dir=data_dir, max_images=max_images, causal_tests=causal_tests, threads=threads)

    def __call__(self) -> str:
        """Run in the job (every task)."""
        from ..core.rundir import RunDir
        from .training import train
        from .run import run_one

        rank, world = _export_torch_distributed()
        run = RunDir(self.config.out)
        if world > 1:  # DDP over the job's tasks; then rank 0 alone measures the run
            if not run.is_complete():
                train(self.config.replace(resume=self.resume or run.is_run(), progress=False, verbose=False))
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                os.environ.pop(key, None)
            if rank != 0:
                return run.name
        return run_one(self.config.replace(resume=self.resume or run.is_run()), **self.work)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on a time-out or preemption: requeue the same run, resuming its saved state."""
        submitit = _submitit()
        return submitit.helpers.DelayedSubmission(RunJob(self.config, resume=True, **self.work))

    def __repr__(self) -> str:
        return f"RunJob({self.config.out!r})"


class FiguresJob:
    """The job that renders the figures once every run is done (:func:`pe_probe.render_figures`); returns the
    path of ``index.md``. It is cheap to redo (every run's measurements are cached), so a time-out requeues it."""

    def __init__(self, runs_dir: str, out: str, **options: Any) -> None:
        self.runs_dir, self.out, self.options = runs_dir, out, options

    def __call__(self) -> str:
        """Run in the job."""
        from .run import render_figures

        result = render_figures(self.runs_dir, self.out, progress=False, **self.options)
        return str(result.index)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Requeue as it is (the cached measurements make the second attempt quick)."""
        return _submitit().helpers.DelayedSubmission(FiguresJob(self.runs_dir, self.out, **self.options))


@dataclass
class Submitted:
    """What :func:`submit_study` submitted: the run jobs (name -> job), the figures job, where the logs are."""

    runs: dict[str, Any]
    figures: Any
    logs: Path
    reused: list[str] = field(default_factory=list)

    def job_ids(self) -> list[str]:
        """Every job id, the figures job last."""
        return [str(j.job_id) for j in self.runs.values()] + ([str(self.figures.job_id)] if self.figures else [])


def make_executor(kind: str, folder: str | os.PathLike, max_timeouts: int = 3):
    """A submitit executor: ``slurm`` (``AutoExecutor(cluster="slurm")``) or ``local`` (``LocalExecutor``);
    ``max_timeouts``: how often a job is requeued after a time-out or preemption."""
    if kind not in EXECUTORS:
        raise ValueError(f"executor={kind!r} is unknown; valid values: {EXECUTORS}")
    submitit = _submitit()
    try:
        return submitit.AutoExecutor(folder=str(folder), cluster=kind, **{f"{kind}_max_num_timeout": max_timeouts})
    except RuntimeError as exc:  # e.g. no srun on this machine
        raise PEProbeError(f"executor {kind!r}: {exc}") from None


def _result(job, name: str) -> Any:
    try:
        return job.result()
    except Exception as exc:  # submitit's FailedJobError carries the whole log: keep its first lines out
        log = getattr(getattr(job, "paths", None), "stdout", None)
        last = [ln for ln in str(exc).splitlines() if ln.strip()]
        cause = last[-1].strip() if last else type(exc).__name__
        raise JobFailedError(f"job {job.job_id} ({name}) failed: {cause}" + (f"; log: {log}" if log else "")) \
            from None


def submit_study(out: str | os.PathLike, *, executor: str = "slurm", resources: Resources | None = None,
                 jobs: int | None = None, wait: bool | None = None, data_dir: str | os.PathLike | None = None,
                 max_images: int | None = None, causal_tests: bool = True, logs: str | os.PathLike | None = None,
                 **options: Any) -> Submitted:
    """Submit the runs of a study (:func:`pe_probe.pipeline.run.plan_runs` with ``options``) as one job each, and a
    figures job after them. Runs already complete are not submitted (the figures use them).

    ``executor``: ``slurm`` (the figures job depends on every run job, ``afterok``; returns after submitting
    unless ``wait``) or ``local`` (submitit's LocalExecutor: at most ``jobs`` run jobs at a time, default 1;
    the figures job is submitted when all are done; always waits). ``logs``: submitit's folder (default
    ``OUT/jobs``). Waiting, a failed job raises :class:`JobFailedError` naming it and its log.
    """
    from .run import plan_runs

    resources = resources or Resources()
    planned = plan_runs(out, data_dir=data_dir, **options)
    logs = Path(logs) if logs is not None else Path(out) / "jobs"
    logs.mkdir(parents=True, exist_ok=True)
    ex = make_executor(executor, logs, resources.max_timeouts)
    wait = executor == "local" if wait is None else wait or executor == "local"
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    work = dict(data_dir=None if data_dir is None else str(data_dir), max_images=max_images,
                causal_tests=causal_tests)
    pending = [p for p in planned if not p.run.is_complete()]
    reused = [p.run.name for p in planned if p.run.is_complete()]
    labels = {p.run.name: p.label for p in planned}
    submitted: dict[str, Any] = {}
    parallel = jobs or (1 if executor == "local" else len(pending) or 1)
    if executor == "local":  # the local jobs share this machine's cores
        from .run import _cores

        work["threads"] = max(1, _cores() // parallel)
    running: list[tuple[str, Any]] = []
    for p in pending:
        if executor == "local":
            while len(running) >= parallel:  # the local executor starts every job at once: keep `jobs` running
                running = _drain(running)
        ex.update_parameters(**resources.run_parameters(f"pe-probe-{p.run.name}"))
        job = ex.submit(RunJob(p.config, **work))
        submitted[p.run.name] = job
        running.append((p.run.name, job))
    figures_opts = dict(data_dir=work["data_dir"], labels=labels, max_images=max_images, only=list(labels),
                        causal_tests=causal_tests)
    runs_dir, figures_dir = str(Path(out) / "runs"), str(Path(out) / "figures")
    fig_params = resources.figures_parameters("pe-probe-figures")
    if executor == "slurm" and submitted and not wait:
        fig_params["slurm_dependency"] = "afterok:" + ":".join(str(j.job_id) for j in submitted.values())
    if wait or executor != "slurm":
        for name, job in submitted.items():
            _result(job, name)
    fig_ex = make_executor(executor, logs, resources.max_timeouts)  # fresh: none of the run jobs' GPUs
    fig_ex.update_parameters(**fig_params)
    figures = fig_ex.submit(FiguresJob(runs_dir, figures_dir, **figures_opts))
    if wait:
        _result(figures, "figures")
    return Submitted(submitted, figures, logs, reused)


def _drain(running: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Wait until a job of ``running`` finishes (raising if it failed); the jobs still running."""
    while True:
        left = []
        for name, job in running:
            if job.done():
                _result(job, name)
            else:
                left.append((name, job))
        if len(left) < len(running):
            return left
        time.sleep(0.5)
