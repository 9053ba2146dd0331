"""``pe-probe reproduce --out DIR``: train, probe and render the paper's evidence in one command (or, with
``--plan``, print the commands that do it, for a cluster's scheduler)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex

from ..core.vocab import EXECUTORS, VERDICTS
from ._fields import add_fields, field_values, to_flags

#: Hyperparameters reproduce passes through to every run (flags generated from the training config).
_HYPER = "hyperparameters for every run (unset: the recipe's)"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` subcommand."""
    from ..pipeline.presets import PRESET_NAMES
    from ..pipeline.presets import DEFAULT_SEEDS, PROBE_EVERY, PROBE_IMAGES
    from ..training import HyperparameterOverrides

    p = sub.add_parser(
        "reproduce",
        help="train the runs the paper's figures need, probe them and render every figure",
        description="Quick preset: 8 tiny ViTs on scikit-learn's digits, each with 3 seeds (CPU, minutes), probed "
                    "and rendered into OUT/figures/index.md with a claims table. 'ablations' adds the Table 5/6 runs; "
                    "'paper' runs the paper's recipes (GPU; --dataset cifar100 or imagefolder with --data-dir). Runs "
                    "already complete under OUT/runs are reused; interrupted ones resume. --plan prints one "
                    "command per run instead (then run `pe-probe figures OUT/runs --out OUT/figures`).",
    )
    p.add_argument("--out", required=True, help="output directory (runs/ and figures/ go inside)")
    p.add_argument("--preset", choices=PRESET_NAMES, default="quick")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per run (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_SEEDS.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="the first seed (runs use SEED, SEED+1, ...)")
    p.add_argument("--dataset", default="digits", help="digits (embedded), cifar10, cifar100 or imagefolder")
    p.add_argument("--data-dir", help="data directory (not needed for digits)")
    p.add_argument("--recipe", help="training recipe name (default: chosen by data set)")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    p.add_argument("--model-kwargs", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="model constructor kwargs for every run (VALUE parsed as JSON when possible)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--probe-every", type=int, default=PROBE_EVERY,
                   help=f"record each run's probe history every N epochs (default {PROBE_EVERY})")
    p.add_argument("--probe-images", type=int, default=PROBE_IMAGES,
                   help=f"validation images probed during training (default {PROBE_IMAGES})")
    p.add_argument("--max-images", type=int, help="probe at most this many validation images per run for the figures")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, each in its own process (default: one per CPU core on CPU, one on GPU)")
    p.add_argument("--plan", action="store_true", help="print one pe-probe train command per run and exit")
    p.add_argument("--nproc-per-node", type=int, metavar="K",
                   help="with --plan: launch each run with torchrun --nproc-per-node K")
    # [issue 22] a scheduler through submitit: one job per run, then a dependent figures job
    ex = p.add_argument_group("scheduler (submitit; pip install 'pe-probe[slurm]')")
    ex.add_argument("--executor", choices=EXECUTORS,
                    help="submit one job per run and a figures job after them: slurm, or local (submitit's "
                         "LocalExecutor on this machine, at most --jobs at a time); a job that reaches its time "
                         "limit or is preempted is requeued and resumes")
    ex.add_argument("--partition", help="SLURM partition")
    ex.add_argument("--account", help="SLURM account")
    ex.add_argument("--qos", help="SLURM quality of service")
    ex.add_argument("--constraint", help="SLURM node constraint")
    ex.add_argument("--nodes", type=int, default=1, help="nodes per run job (default 1)")
    ex.add_argument("--gpus-per-node", type=int, default=0,
                    help="GPUs per node; each GPU is one task (DDP), as submitit expects (default 0: CPU)")
    ex.add_argument("--cpus-per-task", type=int, help="CPU cores per task")
    ex.add_argument("--mem-gb", type=float, help="memory per node in GB")
    ex.add_argument("--time-min", type=int, default=60, help="time limit per job in minutes (default 60)")
    ex.add_argument("--max-timeouts", type=int, default=3,
                    help="times a job that hit its time limit or was preempted is requeued (default 3)")
    ex.add_argument("--wait", action="store_true", help="with slurm: wait for every job (local always waits)")
    ex.add_argument("--logs", help="submitit's folder for job scripts and logs (default OUT/jobs)")
    p.add_argument("--no-causal", action="store_true",
                   help="skip the causal tests (PE ablation and attribution per run) and their figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_fields(p.add_argument_group(_HYPER), HyperparameterOverrides, defaults_none=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``pe-probe reproduce`` (or print its plan)."""
    from ..training import HyperparameterOverrides, TrainConfig

    hyper = field_values(args, HyperparameterOverrides, skip_none=True)
    options = dict(preset=args.preset, seeds=args.seeds, seed=args.seed, dataset=args.dataset, data_dir=args.data_dir,
                   recipe=args.recipe, model=args.model, model_kwargs=field_values(args, _KW)["model_kwargs"],
                   device=args.device, probe_every=args.probe_every, probe_images=args.probe_images, **hyper)
    if args.plan:
        from ..pipeline.run import plan_runs

        launcher = (["torchrun", "--nproc-per-node", str(args.nproc_per_node), "-m", "pe_probe"]
                    if args.nproc_per_node else ["pe-probe"])
        names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("progress", "verbose", "resume")]
        for p in plan_runs(args.out, **options):
            print(shlex.join([*launcher, "train", *to_flags(TrainConfig, p.config, names), "--resume"]))
        print(shlex.join(["pe-probe", "figures", str(p.run.path.parent), "--out", f"{args.out}/figures"]))
        return 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # [issue 22]
        raise ValueError("reproduce does not run under torchrun: use --executor slurm|local (one job per run), "
                         "or --plan --nproc-per-node K; `torchrun ... -m pe_probe figures RUNS` spreads the probing "
                         "of finished runs over the ranks")
    if args.executor:  # [issue 22]
        return _submit(args, options)
    if args.nproc_per_node:
        raise ValueError("--nproc-per-node only applies with --plan (reproduce itself trains one run at a time)")
    from .. import reproduce

    res = reproduce(args.out, max_images=args.max_images, progress=not args.no_progress,
                    causal_tests=not args.no_causal, jobs=args.jobs, **options)
    fig = res.figures
    verdicts = [c.verdict for c in fig.claims]
    print(f"reproduce: {len(res.trained)} trained, {len(res.reused)} reused, {len(fig.rendered)} figures/tables, "
          f"{len(fig.skipped)} skipped, {len(fig.failed)} failed in {res.seconds:.0f} s; claims: "
          + ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS)
          + f" -> {fig.index}")
    return 1 if fig.failed else 0


def _submit(args: argparse.Namespace, options: dict) -> int:
    """[issue 22] ``--executor``: submit the study through submitit and print the jobs."""
    from ..pipeline.executors import Resources, submit_study

    res = Resources(partition=args.partition, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                    cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, timeout_min=args.time_min,
                    max_timeouts=args.max_timeouts, account=args.account, qos=args.qos, constraint=args.constraint)
    sub = submit_study(args.out, executor=args.executor, resources=res, jobs=args.jobs, wait=args.wait,
                       max_images=args.max_images, causal_tests=not args.no_causal, logs=args.logs, **options)
    for name, job in sub.runs.items():
        print(f"{job.job_id}  {name}")
    print(f"{sub.figures.job_id}  figures -> {args.out}/figures/index.md (after the runs)")
    print(f"reproduce: {len(sub.runs)} run job(s) and a figures job submitted ({args.executor}), "
          f"{len(sub.reused)} run(s) reused; logs in {sub.logs}")
    return 0


@dataclasses.dataclass
class _KW:
    """The one run option reproduce parses with the generated helpers (so ``--model-kwargs`` parses as in train)."""

    model_kwargs: dict = dataclasses.field(default_factory=dict)
