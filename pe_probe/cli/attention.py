"""``pe-probe attention CHECKPOINT --out DIR``: attention statistics per block and head, and optionally the
patch-shuffle test and a resolution sweep."""

from __future__ import annotations

import argparse

from ._args import holding
from ._checkpoint import add_checkpoint_args, add_stream_args, load


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes comma-separated pixel sizes, e.g. 16,24,32; got {text!r}")
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes takes positive pixel sizes, got {text!r}")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``attention`` subcommand."""
    p = sub.add_parser(
        "attention",
        help="attention distance, entropy and the PE's part of the logits per block and head; patch shuffles; "
             "resolution sweeps",
        description="Stream a data set through the model with fused attention switched off and write "
                    "attention.csv (site, pe_kind, layer, head, metric, value) + attention.json to --out: mean "
                    "attention distance, prefix share, entropy, and where the PE enters attention its share of "
                    "the logits (docs/probe.md, 'Attention and the input'). --shuffle adds shuffle.csv (patches "
                    "permuted within k x k blocks, the PE kept); --sizes adds resolution.csv (the probe at other "
                    "input sizes, absolute PEs resampled with timm). CHECKPOINT as for pe-probe probe.",
    )
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, help="directory for attention.csv (and shuffle.csv, resolution.csv)")
    add_stream_args(p)
    p.add_argument("--no-split", action="store_true", help="skip the logit split (distances and entropy only)")
    p.add_argument("--shuffle", action="store_true", help="also run the patch-shuffle test (shuffle.csv)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patch permutations (default 0)")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="also probe at these input sizes in pixels, e.g. 16,24,32 (resolution.csv)")
    p.set_defaults(func=holding("out", run))  # one writer of --out, from the start


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, measure, save each result and print a per-block summary."""
    from .. import attention_stats, check_sizes, patch_shuffle, resolution_sweep

    ckpt = load(args)
    if args.sizes:
        check_sizes(ckpt.model, args.sizes)  # before anything is measured or written
    common = dict(batch_size=args.batch_size, max_images=args.max_images, run=str(ckpt.path),
                  progress=not args.no_progress, **ckpt.data_options())
    result = attention_stats(ckpt.model, ckpt.data, decompose=not args.no_split, **common)
    out = result.save(args.out)
    frame = result.frame()
    print(f"attention of {result.meta['n_images']} images of {ckpt.data!r}, {result.meta['heads']} heads -> {out}")
    table = frame.pivot_table(index="layer", columns="metric", values="value", aggfunc="mean")
    cols = [c for c in ("attn_distance", "attn_entropy", "attn_prefix_share", "logit_pos_share", "logit_bias_share",
                        "logit_rope_change") if c in table.columns]
    print("  layer  " + "  ".join(f"{c:>18}" for c in cols) + "   (means over heads)")
    for layer, row in table.iterrows():
        print(f"  {int(layer):>5}  " + "  ".join(f"{row[c]:>18.4f}" for c in cols))
    for layer, why in result.meta.get("not_measured", {}).items():
        print(f"  block {layer} not measured: {why}")
    if args.shuffle:
        sh = patch_shuffle(ckpt.model, ckpt.data, seed=args.seed, **common)
        path = sh.save(args.out)
        cells = ", ".join(f"{b}x{b}: {v:.3f}" for b, m, v in sh.rows if m == "agree")
        print(f"patch shuffle, predictions unchanged: {cells} -> {path}")
    if args.sizes:
        res = resolution_sweep(ckpt.model, ckpt.data, args.sizes, **common)
        path = res.save(args.out)
        top = [(s, v) for s, _, _, layer, m, v in res.rows if m == "top1"]
        print("resolution sweep" + (": top-1 " + ", ".join(f"{s} px {v:.4f}" for s, v in top) if top else "")
              + f" -> {path}")
    return 0
