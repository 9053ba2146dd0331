"""``pe-probe figures RUNS_DIR --out DIR``: probe every finished run and render every figure they support."""

from __future__ import annotations

import argparse

from ..core.vocab import VERDICTS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``figures`` subcommand."""
    p = sub.add_parser(
        "figures",
        help="render every paper figure and table the runs under RUNS_DIR support",
        description="Find the run directories under RUNS_DIR, probe each one (or reuse RUN/probe), and write "
                    "each supported figure as PNG, PDF and CSV, the tables as CSV and Markdown, and index.md "
                    "(which also lists the figures skipped and the runs they need).",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="directory holding run directories (any depth)")
    p.add_argument("--out", required=True, help="output directory for the figures and index.md")
    p.add_argument("--data-dir", help="data directory for probing runs trained on cifar/imagefolder data")
    p.add_argument("--max-images", type=int, default=None, help="probe at most this many validation images per run")
    p.add_argument("--reprobe", action="store_true", help="probe again even where RUN/probe is saved")
    p.add_argument("--spec", action="append", default=None, metavar="PATH",
                   help="a spec file, a folder of spec files, or 'builtin' (the shipped specs); repeatable. "
                        "Default: the shipped specs; with --spec, only the ones given (add 'builtin' to keep them)")
    p.add_argument("--no-causal", action="store_true",
                   help="skip the causal tests (PE ablation and attribution per run) and their figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``pe-probe figures``."""
    from .. import render_figures
    from ..probing.distributed import joined_group, quiet_peers

    with joined_group(), quiet_peers():  # [issue 22] under torchrun the ranks share the runs; rank 0 renders
        result = render_figures(args.runs_dir, args.out, data_dir=args.data_dir, max_images=args.max_images,
                                reprobe=args.reprobe, specs=args.spec, progress=not args.no_progress,
                                causal_tests=not args.no_causal)
    if result is None:  # a rank other than 0: its runs are measured, rank 0 prints
        return 0
    verdicts = [c.verdict for c in result.claims]
    print(f"{len(result.rendered)} rendered, {len(result.skipped)} skipped, {len(result.failed)} failed; claims: "
          + ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS)
          + f": {result.index}")
    return 1 if result.failed else 0
