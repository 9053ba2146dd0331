"""``pe-probe reproduce --out DIR``: train, probe and render the paper's evidence in one command."""

from __future__ import annotations

import argparse

from ..pipeline import PRESET_NAMES
from ._args import parse_kv


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` subcommand."""
    p = sub.add_parser(
        "reproduce",
        help="train the runs the paper's figures need, probe them and render every figure",
        description="Quick preset: 8 tiny ViTs on scikit-learn's digits (CPU, a few minutes), probed and "
                    "rendered into OUT/figures/index.md. 'ablations' adds the Table 5/6 runs; 'paper' runs the "
                    "paper's recipes (GPU; --dataset cifar100 or imagefolder with --data-dir). Runs already "
                    "complete under OUT/runs are reused; interrupted ones resume.",
    )
    p.add_argument("--out", required=True, help="output directory (runs/ and figures/ go inside)")
    p.add_argument("--preset", choices=PRESET_NAMES, default="quick")
    p.add_argument("--dataset", default="digits", help="digits (embedded), cifar10, cifar100 or imagefolder")
    p.add_argument("--data-dir", help="data directory (not needed for digits)")
    p.add_argument("--recipe", help="training recipe name (default: chosen by data set)")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model constructor kwargs for every run (VALUE parsed as JSON when possible)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, help="probe at most this many validation images per run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``pe-probe reproduce``."""
    from .. import reproduce

    res = reproduce(
        args.out, preset=args.preset, dataset=args.dataset, data_dir=args.data_dir, recipe=args.recipe,
        model=args.model, model_kwargs=parse_kv(args.model_kwargs), epochs=args.epochs, device=args.device,
        seed=args.seed, max_images=args.max_images, progress=not args.no_progress,
    )
    fig = res.figures
    print(f"reproduce: {len(res.trained)} trained, {len(res.reused)} reused, {len(fig.rendered)} figures/tables, "
          f"{len(fig.skipped)} skipped, {len(fig.failed)} failed in {res.seconds:.0f} s -> {fig.index}")
    return 1 if fig.failed else 0
