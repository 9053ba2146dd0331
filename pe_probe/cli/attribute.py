"""``pe-probe attribute CHECKPOINT --out DIR``: integrated gradients of the target logit to each site's PE and
tokens (captum)."""

from __future__ import annotations

import argparse

from ..core.causal import (ATTRIBUTION_IMAGES, AUTO, AUTO_STEPS, BASELINES, DEFAULT_BASELINE, TOKEN_BASELINES,
                           WARN_REL_DELTA)
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


def parse_steps(value: str):
    """``--n-steps``: ``auto`` (doubled per site until converged) or a number of integration steps."""
    if value == AUTO:
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--n-steps must be {AUTO!r} or a number of steps, got {value!r}") from None


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
    add_stream_args(p, batch_size=16, max_images=ATTRIBUTION_IMAGES)
    p.add_argument("--target", default=None,
                   help="class whose logit is attributed: an index, or 'label' (default: the predicted class)")
    add_site_args(p)
    p.add_argument("--baseline", choices=BASELINES, default=DEFAULT_BASELINE,
                   help=f"the PE the path starts from: its row mean (the PE without position; converges at the "
                        f"input site, where zeros do not) or zeros (default: {DEFAULT_BASELINE})")
    p.add_argument("--tokens", choices=TOKEN_BASELINES, default=TOKEN_BASELINES[0],
                   help="the token term the path starts from: zeros (default) or the intact tokens (PE alone)")
    p.add_argument("--n-steps", default=AUTO, metavar="auto|N",
                   help=f"integration steps (Gauss-Legendre). 'auto' (default): per site {AUTO_STEPS[0]}, doubled "
                        f"(up to {AUTO_STEPS[-1]}) until its rel_delta is at most {WARN_REL_DELTA}; the table's 'steps' column "
                        "says what each site used. N: N steps at every site")
    p.add_argument("--internal-batch-size", type=int, default=None,
                   help="rows per forward/backward pass inside captum (default: n_steps x batch size; with "
                        f"--n-steps auto {AUTO_STEPS[0]} x batch size)")
    p.add_argument("--n-maps", type=int, default=4, help="images whose per-token attribution maps are kept")
    p.set_defaults(func=holding("out", run))  # one writer of --out, from the start


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, attribute, save the frame and print the PE share per site."""
    from .. import attribute, save_attribution

    target = parse_target(args.target)
    n_steps = parse_steps(args.n_steps)
    ckpt = load(args)
    # its warnings (incomplete attributions) are held by the command: printed after the result is written, one
    # line each, and not at all when it fails
    result = attribute(ckpt.model, ckpt.data, target, sites=parse_sites(args.sites), effect=args.effect,
                       baseline=args.baseline, tokens=args.tokens, n_steps=n_steps,
                       internal_batch_size=args.internal_batch_size, n_maps=args.n_maps, batch_size=args.batch_size,
                       max_images=args.max_images, num_workers=args.num_workers, run=str(ckpt.path),
                       progress=not args.no_progress, **ckpt.data_options())
    if not getattr(args, "writer", True):  # [issue 22] torchrun: rank 0 alone writes and prints
        return 0
    out = save_attribution(result, args.out)
    meta = result.meta
    print(ckpt.normalization())
    print(f"attributed {meta['n_images']} images of {ckpt.data!r} with {meta['model']} (pe_mode={meta['pe_mode']}, "
          f"baseline={meta['baseline']}, tokens={meta['tokens']}, n_steps={meta['n_steps']}) -> {out}")
    print(format_attribution(result.frame()))
    return 0


def format_attribution(frame) -> str:
    """The attribution as a table, one row per site: ``pe_share`` (the PE's part of the absolute attribution), the
    signed sums, ``f(x) - f(baseline)``, ``rel_delta`` and the integration steps used (``steps``; absent from files
    saved before it was a metric), sites whose attributions are incomplete marked."""
    from ..analysis import site_table

    table = site_table(frame)
    width = max([18, *(len(s) for s in table["site"])])  # family sites: blocks.{l}.attn.hook_attn_bias, ...
    kinds = "pe_kind" in table.columns
    steps = "n_steps" in table.columns
    kind_head = f" {'pe_kind':<12}" if kinds else ""
    lines = [f"{'layer':>5}  {'site':<{width}}{kind_head} {'pe_share':>8} {'pe_attr':>9} {'tok_attr':>9} "
             f"{'f(x)-f(b)':>9} {'rel_delta':>9}" + (f" {'steps':>5}" if steps else "")]
    for row in table.itertuples(index=False):
        flag = "  incomplete: raise --n-steps" if row.rel_delta > WARN_REL_DELTA else ""
        share = "-" if row.pe_share != row.pe_share else f"{row.pe_share:.3f}"  # NaN when the tokens are kept
        kind = f" {row.pe_kind:<12}" if kinds else ""
        used = (f" {int(row.n_steps):>5}" if row.n_steps == row.n_steps else f" {'-':>5}") if steps else ""
        lines.append(f"{int(row.layer):>5}  {row.site:<{width}}{kind} {share:>8} {row.pe_attr:>+9.3f} "
                     f"{row.tok_attr:>+9.3f} {row.fdiff:>+9.3f} {row.rel_delta:>9.2g}{used}{flag}")
    lines.append("layer: -2 the input, -1 the Last LN, i block i; pe_share: the PE's part of |attribution| "
                 "(docs/causal.md; '-' where the tokens are kept); steps: integration steps used at the site")
    return "\n".join(lines)
