"""``pe-probe ablate CHECKPOINT --out DIR``: replace the PE one site at a time and measure what changes."""

from __future__ import annotations

import argparse

from ..core.causal import INTERVENTIONS
from ._args import add_site_args, holding, parse_sites
from ._checkpoint import add_checkpoint_args, add_stream_args, load


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ablate`` subcommand."""
    p = sub.add_parser(
        "ablate",
        help="ablate the PE site by site (zero / mean / shuffle) and measure accuracy, agreement and KL",
        description="Replace the PE at one site at a time (the input, each PE-receiving block, the Last LN) by "
                    "zeros, its row mean or its rows shuffled, and compare the predictions with the intact "
                    "model's over a data set (docs/causal.md). Writes ablation.csv (site, pe_kind, layer, intervention, "
                    "metric, value) and ablation.json (what was run) to --out. CHECKPOINT as for pe-probe probe.",
    )
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, help="directory for ablation.csv and ablation.json")
    add_stream_args(p)
    p.add_argument("--interventions", nargs="+", choices=INTERVENTIONS, default=list(INTERVENTIONS),
                   help=f"default: all of {', '.join(INTERVENTIONS)}")
    add_site_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle permutation (default 0)")
    p.add_argument("--no-reuse-prefix", action="store_true",
                   help="run every ablated pass from the input (same numbers, slower; for checking)")
    p.set_defaults(func=holding("out", run))  # one writer of --out, from the start


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, ablate, save the frame and print agreement per site."""
    from .. import ablate, save_ablation

    ckpt = load(args)
    result = ablate(ckpt.model, ckpt.data, args.interventions, sites=parse_sites(args.sites), effect=args.effect,
                   seed=args.seed, reuse_prefix=not args.no_reuse_prefix, batch_size=args.batch_size,
                   max_images=args.max_images, num_workers=args.num_workers, run=str(ckpt.path),
                   progress=not args.no_progress, **ckpt.data_options())
    if not getattr(args, "writer", True):  # [issue 22] torchrun: rank 0 alone writes and prints
        return 0
    out = save_ablation(result, args.out)
    meta, frame = result.meta, result.frame()
    top1 = meta.get("intact_top1")
    print(ckpt.normalization())
    print(f"ablated {meta['n_images']} images of {ckpt.data!r} with {meta['model']} (pe_mode={meta['pe_mode']}, "
          f"effect={meta['effect']}" + (f", intact top1 {top1:.4f}" if top1 is not None else "") + f") -> {out}")
    agree = frame[frame.metric == "agree"].pivot_table(index=["layer", "site"], columns="intervention",
                                                        values="value", sort=False)
    for (layer, hook), row in agree.iterrows():
        cells = "  ".join(f"{k} {row[k]:.4f}" for k in args.interventions)
        print(f"  layer {int(layer):>3}  {hook:<22} agree: {cells}")
    return 0
