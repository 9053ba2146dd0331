"""Orchestration: train the runs a preset needs, probe them, render every figure the runs support.

This is the top layer: it only calls the public API of the layers below (train, probe, figures).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from ..analysis import save_report
from ..analysis.runs import RunResult
from ..core import signals
from ..core.errors import CheckpointError, DataError
from ..core.io import contained
from ..core.locks import LOCK_FILE, locked_on
from ..core.report import ProbeReport
from ..core.rundir import RunDir
from ..figures.render import RenderResult, render_all
from ..figures.spec import resolve_specs
from ..probing import probe
from ..probing.distributed import is_main  # [issue 22]
from ..training import Run, TrainConfig, load_run, resolve_run
from ..training.config import check_run_options
from .attention import position_tests
from .causal import RUN_ATTRIBUTION_IMAGES, ablate_run, attribute_run
from .presets import DEFAULT_SEEDS, PROBE_EVERY, PROBE_IMAGES, QUICK_DIGITS_EPOCHS, RunPlan, preset_plans
from .spread import main_locked_on, spread_over_ranks  # [issue 22]
from .training import train

log = logging.getLogger(__name__)


@dataclass
class ReproduceResult:
    """What ``reproduce`` did: the runs it trained or reused, and the rendered figures."""

    runs_dir: Path
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    figures: RenderResult | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a reproduction: its run directory, its label in the figures and its TrainConfig."""

    run: RunDir
    label: str
    config: TrainConfig


def plan_runs(
    out: str | os.PathLike,
    *,
    preset: str = "quick",
    seeds: int | None = None,
    seed: int = 0,
    dataset: str = "digits",
    data_dir: str | os.PathLike | None = None,
    recipe: str | None = None,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: str | None = None,
    probe_every: int = PROBE_EVERY,
    probe_images: int = PROBE_IMAGES,
    **overrides: Any,
) -> list[PlannedRun]:
    """Every run ``reproduce`` trains: each run of ``preset`` once per seed (``seed``, ``seed + 1``, ...), in
    ``out/runs/<name>-seed<k>``, with the same options; ``overrides`` are TrainConfig hyperparameters (e.g.
    ``epochs``). The recipe, model and depth are the training code's own
    (:func:`~pe_probe.training.resolve_run`), asked once for the preset (the Table 5 runs are placed on the
    model's blocks) and once for each planned run, so every run is checked before any is trained. Writes
    nothing."""
    if preset == "paper" and dataset == "digits":
        raise DataError("the paper preset runs the paper's recipes: pass --dataset cifar100 or imagefolder "
                        "with --data-dir")
    n = DEFAULT_SEEDS.get(preset, 1) if seeds is None else seeds
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"seeds={seeds!r} must be a positive integer")
    model_kwargs = dict(model_kwargs or {})
    common = dict(dataset=dataset, data_dir=data_dir, recipe=recipe, model=model, model_kwargs=model_kwargs,
                  device=device, probe_every=probe_every, probe_images=probe_images)
    base = resolve_run(TrainConfig(out=str(out), **common, **overrides))
    if preset == "quick" and base.dataset == "digits" and base.recipe.name == "digits":
        overrides.setdefault("epochs", QUICK_DIGITS_EPOCHS)
    if base.depth is None:
        raise ValueError(f"{base.model} is not a pe-probe model: reproduce trains the pe_* models (--model)")
    plans: Sequence[RunPlan] = preset_plans(preset, base.depth)
    runs_dir = Path(out) / "runs"
    planned = []
    for plan in plans:
        for k in range(seed, seed + n):
            cfg = TrainConfig(out=str(runs_dir / f"{plan.name}-seed{k}"), seed=k, **common, **overrides, **plan.options)
            check_run_options(cfg)  # every number checked here, so that --plan prints no command that fails
            if k == seed:
                try:
                    resolve_run(cfg)  # the run as the training code will build it
                except ValueError as exc:
                    raise ValueError(f"preset {preset!r} run {plan.name}: {exc}") from None
            planned.append(PlannedRun(RunDir(cfg.out), plan.label, cfg))
    return planned


@locked_on("out")  # one reproduction per folder (each run and the figures folder are locked too)
def reproduce(
    out: str | os.PathLike,
    *,
    preset: str = "quick",
    seeds: int | None = None,
    data_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    progress: bool = True,
    causal_tests: bool = True,
    jobs: int | None = None,
    **options: Any,
) -> ReproduceResult:
    """Train (or reuse) every run of ``preset`` under ``out/runs``, once per seed, probe them and render
    ``out/figures`` (every figure, its claims table and ``index.md``).

    ``preset``: ``quick`` (the runs behind every figure; 3 seeds by default), ``ablations`` (adds Table 5/6
    runs) or ``paper`` (the ablations run list with the paper's recipes: needs ``dataset`` ``cifar100`` or
    ``imagefolder``). ``seeds``: seeds per run (default :data:`DEFAULT_SEEDS`). Every run also records its probe
    history (``probe_every``, ``probe_images``). ``options`` are those of :func:`plan_runs` (``dataset``,
    ``recipe``, ``model``, ``model_kwargs``, ``device``, ``seed``, and hyperparameters such as ``epochs``),
    applied to every run. Runs already complete are reused; interrupted ones resume. ``causal_tests``: also
    ablate and attribute every run for the causal figures (:func:`render_figures`). ``jobs``: runs trained (and
    probed, ablated, attributed) at once in worker processes (default :func:`default_jobs`: one per CPU core
    on CPU, one on a GPU).
    """
    t0 = time.perf_counter()
    planned = plan_runs(out, preset=preset, seeds=seeds, data_dir=data_dir, **options)
    check_reused(planned)
    result = ReproduceResult(runs_dir=Path(out) / "runs")
    pending = [p for p in planned if not p.run.is_complete()]
    result.reused = [p.run.name for p in planned if p.run.is_complete()]
    jobs = default_jobs(len(pending), planned[0].config.device if planned else None) if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} must be a positive integer")
    work = dict(data_dir=data_dir, max_images=max_images, causal_tests=causal_tests)
    bar = tqdm(total=len(planned), initial=len(result.reused), desc=f"reproduce[{preset}]", unit="run",
               disable=not progress)
    made_runs_dir = not result.runs_dir.exists()
    new_runs = [p.run for p in pending if not p.run.path.exists()]
    try:
        if jobs == 1:
            for p in pending:
                signals.raise_if_interrupted()
                bar.set_postfix_str(p.run.name)
                result.trained.append(run_one(p.config, verbose=progress, **work))
                bar.update(1)
        else:
            threads = max(1, _cores() // jobs)
            ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
            # workers die with this process (SIGTERM on its death, Linux) and leave Ctrl-C to it
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=signals.worker_init,
                                       initargs=(os.getpid(),))
            try:
                waiting = {pool.submit(signals.in_worker, run_one, p.config, threads=threads, **work)
                           for p in pending}
                while waiting:
                    done, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
                    signals.raise_if_interrupted()  # a Ctrl-C / SIGTERM swallowed where it was raised
                    for fut in done:
                        result.trained.append(fut.result())
                        bar.update(1)
            except BaseException:  # an interrupt, SIGTERM or a failed run: stop every worker now
                _stop_workers(pool)
                raise
            pool.shutdown(wait=True)
    except BaseException:
        for run in new_runs:  # a worker stopped while it held a new run's lock leaves only the lock file
            with contextlib.suppress(OSError):
                if {p.name for p in run.path.iterdir()} <= {LOCK_FILE}:
                    (run.path / LOCK_FILE).unlink(missing_ok=True)
                    run.path.rmdir()
        if made_runs_dir:  # every run failed before it saved anything (bad data): leave no empty folder
            with contextlib.suppress(OSError):
                result.runs_dir.rmdir()
        raise
    finally:
        bar.close()
    result.trained.sort(key=[p.run.name for p in planned].index)
    labels = {p.run.name: p.label for p in planned}
    result.figures = render_figures(result.runs_dir, Path(out) / "figures", data_dir=data_dir, labels=labels,
                                    max_images=max_images, progress=progress, only=list(labels),
                                    causal_tests=causal_tests)
    result.seconds = time.perf_counter() - t0
    return result


def _stop_workers(pool: ProcessPoolExecutor, grace_s: float = 10.0) -> None:
    """Cancel the runs not started and end the pool's worker processes: SIGTERM (a run's clean-up runs: a fresh
    run that saved nothing removes what it wrote, a saved state stays for ``--resume``), SIGKILL after
    ``grace_s`` seconds for any still alive."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # the executor has no public handle on them
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    with contextlib.suppress(Exception):  # the workers are gone: let the executor release its queues
        pool.shutdown(wait=True)


def check_reused(planned: Sequence[PlannedRun]) -> None:
    """Refuse runs already under the output folder that were trained with other options than the ones asked
    for (``reproduce --epochs 2`` over runs of ``--epochs 1``): a ``ValueError`` naming the first run and the
    options that differ. Runs without a readable ``config.json`` are left to training to report."""
    for p in planned:
        if not p.run.config_path.is_file():
            continue
        try:
            stored = p.run.read_config().get("recipe", {}).get("args")
        except Exception:  # noqa: BLE001 - reported by the run's own training, in one line
            continue
        if not isinstance(stored, dict):
            continue
        wanted = json.loads(json.dumps(p.config.args(), default=str))
        differ = [f"{k}={stored[k]!r} (asked: {wanted[k]!r})" for k in sorted(wanted)
                  if k in stored and stored[k] != wanted[k]]
        if differ:
            raise ValueError(f"{p.run.path} was trained with other options: {', '.join(differ)}; choose another "
                             "--out, or remove the run to train it again")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_jobs(pending: int, device: str | None) -> int:
    """Runs trained at once by ``reproduce``: one per usable CPU core on CPU (each with one torch thread: the small
    models train faster side by side than one after the other on all threads), one on a GPU."""
    import torch

    on_gpu = device != "cpu" and (device is not None and device.startswith("cuda") or torch.cuda.is_available())
    return 1 if on_gpu else max(1, min(_cores(), pending))


def run_one(config: TrainConfig, *, data_dir: str | os.PathLike | None = None, max_images: int | None = None,
            causal_tests: bool = True, threads: int | None = None, verbose: bool = False) -> str:
    """Everything ``reproduce`` does for one run, cached in its directory: train it (or resume it), probe it and,
    with ``causal_tests``, ablate and attribute it. ``threads``: torch CPU threads (``reproduce``'s worker
    processes use one per core). Returns the run's name."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    run = RunDir(config.out)
    if not run.is_complete():
        train(config.replace(resume=run.is_run(), progress=False, verbose=verbose))
    load = functools.cache(functools.partial(load_run, run.path))  # the model is loaded once, if at all
    probe_run(run, data_dir=data_dir, max_images=max_images, progress=False, load=load)
    if causal_tests:
        _causal(run, data_dir, max_images, recompute=False, load=load)
    return run.name


def _causal(run: RunDir, data_dir, max_images: int | None, recompute: bool,
            load: Callable[[], Run] | None = None) -> dict:
    """The run's ablation and attribution frames, and its attention, patch-shuffle and resolution frames
    (:func:`~pe_probe.pipeline.attention.position_tests`), each computed once, then read from the run directory;
    ``load``: the caller's loader of the run (its model is loaded once, if at all)."""
    return {
        **position_tests(run, data_dir, max_images, recompute, load=load),
        "ablation": ablate_run(run, data_dir=data_dir, max_images=max_images, recompute=recompute, progress=False,
                               load=load),
        "attribution": attribute_run(
            run, data_dir=data_dir, recompute=recompute, progress=False, load=load,
            max_images=RUN_ATTRIBUTION_IMAGES if max_images is None else min(max_images, RUN_ATTRIBUTION_IMAGES),
        ).frame,
    }


def find_runs(runs_dir: str | os.PathLike) -> tuple[list[RunDir], list[RunDir]]:
    """Run directories under ``runs_dir`` (any depth): ``(complete, incomplete)``, sorted by path."""
    if not Path(runs_dir).is_dir():
        raise DataError(f"{runs_dir} is not a directory of runs")
    runs = RunDir.find(runs_dir)
    return [r for r in runs if r.is_complete()], [r for r in runs if not r.is_complete()]


@locked_on("run_dir")  # the run is not trained or evaluated while its probe is read or written
def probe_run(
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    batch_size: int = 64,
    reprobe: bool = False,
    progress: bool = True,
    decode: bool = True,
    load: Callable[[], Run] | None = None,
) -> ProbeReport:
    """The probe report of a run: loaded from ``RUN/probe`` if saved, else probed on the run's
    validation data and saved there (with its ``metrics.csv``). ``decode``: also the position decoders
    (``pe_probe.probe(decode=True)``), which the ``position_decoding`` figure shows. ``load``: returns the
    loaded run (default: :func:`~pe_probe.training.load_run`)."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    probe_dir = contained(rd.path, RunDir.PROBE)  # never read or written through a link out of the run
    if probe_dir.is_dir() and not reprobe:
        try:
            return ProbeReport.load(probe_dir)
        except Exception as exc:  # a stale, damaged or mixed (interrupted) report is rebuilt, not fatal
            log.warning("re-probing %s: saved probe results unreadable (%s)", rd.path, exc)
    run = load() if load is not None else load_run(rd.path)
    data = run.config["data"]
    report = probe(
        run.model, data["dataset"], data_dir=data_dir or data.get("data_dir"), mean=data.get("mean"),
        std=data.get("std"), batch_size=batch_size, max_images=max_images, run=rd.name, progress=progress,
        trained_on=data, decode=decode,
    )
    save_report(report, probe_dir)
    return report


@main_locked_on("out")  # a second writer of the folder stops at once, before any probing ([issue 22] rank 0's)
def render_figures(
    runs_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    labels: dict[str, str] | None = None,
    max_images: int | None = None,
    reprobe: bool = False,
    specs: Sequence[str | os.PathLike] | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    causal_tests: bool = True,
) -> RenderResult | None:
    """Probe (or reuse the saved probe of) every complete run under ``runs_dir`` and render every figure the
    runs support into ``out`` (PNG, PDF, CSV per figure, Markdown tables, ``index.md``). With ``causal_tests``
    each run's PE ablation and attribution (:func:`~pe_probe.pipeline.causal.ablate_run`,
    :func:`~pe_probe.pipeline.causal.attribute_run`) are computed (or read back) too; ``reprobe`` recomputes them.

    Under a process group of several ranks (``torchrun ... -m pe_probe figures``) each run is measured by one
    rank (:func:`~pe_probe.pipeline.spread.spread_over_ranks`) and rank 0 alone renders; the other ranks
    return None."""
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise DataError(f"max_images must be a positive int or None, got {max_images!r}")
    if specs is not None:  # a bad spec is reported before any run is probed, ablated or attributed
        specs = resolve_specs(specs)
    complete, incomplete = find_runs(runs_dir)
    if only is not None:
        wanted = set(only)
        complete = [d for d in complete if d.name in wanted]
    if not complete:  # the error alone, without a warning line per incomplete run before it
        raise DataError(f"no complete run (a directory with {RunDir.CONFIG} and {RunDir.SUMMARY}) under {runs_dir}")
    for d in incomplete:
        log.warning("skipping %s: training not complete (no %s)", d.path, RunDir.SUMMARY)
    # [issue 22] under a process group each rank measures its share of the runs; rank 0 then reads them back
    spread = spread_over_ranks(complete, lambda d: (
        probe_run(d, data_dir=data_dir, max_images=max_images, reprobe=reprobe, progress=False),
        causal_tests and _causal(d, data_dir, max_images, recompute=reprobe)))
    if spread and not is_main():
        return None
    reprobe = reprobe and not spread
    runs = []
    for d in tqdm(complete, desc="probe runs", unit="run", disable=not progress):
        load = functools.cache(functools.partial(load_run, d.path))  # the model is loaded once, if at all
        report = probe_run(d, data_dir=data_dir, max_images=max_images, reprobe=reprobe, progress=False, load=load)
        causal = {}
        if causal_tests:  # RUN/ablation.csv and RUN/attribution.csv, computed once like the probe report
            try:
                causal = _causal(d, data_dir, max_images, recompute=reprobe, load=load)
            except CheckpointError as exc:  # e.g. a copied run with its saved probe but without its weights
                log.warning("%s: no causal tests (%s); the figures that need them skip this run", d.path, exc)
        runs.append(RunResult.from_dir(d, report=report, label=(labels or {}).get(d.name), **causal))
    return render_all(runs, out, specs=specs)
