"""``pe-probe attribute CHECKPOINT --out DIR``: integrated gradients of the target logit to each site's PE and
tokens (captum)."""

from __future__ import annotations

import argparse

from ._args import add_site_args, holding, parse_sites
from ._checkpoint import add_checkpoint_args, add_stream_args, load


def parse_target(value: str | None):
    """``--target``: None (the predicted class), ``label``, or a class index."""
    if value is None or value == "label":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--target must be a class index or 'label', got {value!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``attribute`` subcommand."""
    p = sub.add_parser(
        "attribute",
        help="attribute the target logit to each layer's PE and tokens (captum integrated gradients)",
        description="Integrated gradients (captum) of the target logit, at each PE site, to the PE and to the "
                    "tokens it is added to, from a baseline PE (zeros, or the row mean) and zero tokens "
                    "(docs/causal.md). Writes attribution.csv (site, pe_kind, layer, metric, value) and attribution.json "
                    "(what was run, per-token maps of the first images) to --out. CHECKPOINT as for pe-probe probe.",
    )
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, help="directory for attribution.csv and attribution.json")
    add_stream_args(p, batch_size=16)
    p.add_argument("--target", default=None,
                   help="class whose logit is attributed: an index, or 'label' (default: the predicted class)")
    add_site_args(p)
    p.add_argument("--baseline", choices=("zero", "mean"), default="zero",
                   help="the PE the path starts from: zeros (default) or its row mean (the PE without position; "
                        "converges at the input site, where zeros do not)")
    p.add_argument("--tokens", choices=("zero", "keep"), default="zero",
                   help="the token term the path starts from: zeros (default) or the intact tokens (PE alone)")
    p.add_argument("--n-steps", type=int, default=32, help="integration steps (Gauss-Legendre; default 32)")
    p.add_argument("--internal-batch-size", type=int, default=None,
                   help="rows per forward/backward pass inside captum (default: n_steps x batch size)")
    p.add_argument("--n-maps", type=int, default=4, help="images whose per-token attribution maps are kept")
    p.set_defaults(func=holding("out", run))  # one writer of --out, from the start


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, attribute, save the frame and print the PE share per site."""
    from .. import attribute, save_attribution

    target = parse_target(args.target)
    ckpt = load(args)
    result = attribute(ckpt.model, ckpt.data, target, sites=parse_sites(args.sites), effect=args.effect,
                       baseline=args.baseline, tokens=args.tokens, n_steps=args.n_steps,
                       internal_batch_size=args.internal_batch_size, n_maps=args.n_maps, batch_size=args.batch_size,
                       max_images=args.max_images, num_workers=args.num_workers, run=str(ckpt.path),
                       progress=not args.no_progress, **ckpt.data_options())
    out = save_attribution(result, args.out)
    meta, frame = result.meta, result.frame()
    print(f"attributed {meta['n_images']} images of {ckpt.data!r} with {meta['model']} (pe_mode={meta['pe_mode']}, "
          f"baseline={meta['baseline']}, n_steps={meta['n_steps']}) -> {out}")
    wide = frame.pivot_table(index=["layer", "site"], columns="metric", values="value", sort=False, dropna=False)
    for (layer, hook), row in wide.iterrows():
        print(f"  layer {int(layer):>3}  {hook:<22} pe_share {row['pe_share']:.4f}  rel_delta {row['rel_delta']:.2g}")
    return 0
