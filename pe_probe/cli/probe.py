"""``pe-probe probe CHECKPOINT --out DIR``: stream a data set through a checkpoint, save a ProbeReport."""

from __future__ import annotations

import argparse

from ..core.vocab import ADAPTERS
from ._args import holding
from ._checkpoint import add_checkpoint_args, add_stream_args, load


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``probe`` subcommand."""
    p = sub.add_parser(
        "probe",
        help="measure the PE inside a checkpoint over a data set (writes a ProbeReport)",
        description="Stream a data set through a checkpoint and save the PE statistics (docs/probe.md). "
                    "CHECKPOINT is a pe-probe run directory, a timm hub folder (config.json + model.safetensors), "
                    "or a .safetensors/.pth/.pt/.bin file with a state dict or a training checkpoint (DeiT, LaPE, "
                    "timm train.py). The model comes from --model, else from the checkpoint (args.model, "
                    "config.json); LaPE checkpoints load as the matching pe_deit_* with their own scheme.",
    )
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, help="directory for the report (meta.json, metrics.csv, arrays.npz)")
    add_stream_args(p)
    p.add_argument("--adapter", choices=ADAPTERS, default="auto",
                   help="'timm' derives each layer's PE as norm1(pos_embed) (default: auto)")
    p.add_argument("--n-norm-maps", type=int, default=8, help="images whose per-token norm maps are kept")
    p.add_argument("--no-decompose", action="store_true",
                   help="skip the variance decomposition per layer and the PE's direct logit share (on by default)")
    p.add_argument("--decode", action="store_true",
                   help="also fit linear position decoders per layer (ridge R^2 of (row, col), logistic accuracy of "
                        "the patch index) with permuted-label and PE-ablated controls (a second forward pass)")
    p.add_argument("--decode-images", type=int, default=10,
                   help="images in the logistic classifier's sample (>= 5; default 10)")
    p.add_argument("--mpvg-check", action="store_true",
                   help="also report the max logit difference between the model and its PVG + bias equivalent")
    p.set_defaults(func=holding("out", run))  # one writer of --out, from the start


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, probe the data set, save the report and print the token-PE correlations."""
    from .. import mpvg_constant_offset_check, probe, save_report, summary_frame

    ckpt = load(args)
    model, data, path = ckpt.model, ckpt.data, ckpt.path
    report = probe(
        model, data, batch_size=args.batch_size, max_images=args.max_images, num_workers=args.num_workers,
        adapter=args.adapter, n_norm_maps=args.n_norm_maps, run=str(path), progress=not args.no_progress,
        meta=ckpt.info.meta(), decompose=not args.no_decompose, decode=args.decode,
        decode_images=args.decode_images, **ckpt.data_options(),
    )
    if not getattr(args, "writer", True):  # [issue 22] torchrun: rank 0 alone writes and prints
        return 0
    out = save_report(report, args.out)
    frame = summary_frame(report)
    info = ckpt.info
    print(f"{path}: {info.model} ({info.model_source}), weights {info.weights_key or 'state dict'}, "
          f"pe_mode={report.meta['pe_mode']} ({info.scheme_source})"
          + (f", PE resampled {info.pos_embed_resampled['from']} -> {info.pos_embed_resampled['to']}"
             if info.pos_embed_resampled else ""))
    print(ckpt.normalization())
    print(f"probed {report.meta['n_images']} images of {data!r} (split {report.meta.get('split', '-')}) with "
          f"{report.meta['model']} (pe_mode={report.meta['pe_mode']}, pe_derived={report.meta['pe_derived']}) -> {out}")
    print(format_probe(frame))
    position = frame[frame.metric.isin(["pos_share", "pos_r2", "pos_acc"])]
    if len(position):
        wide = position.pivot_table(index="layer", columns="metric", values="value", sort=False)
        for layer, row in wide.iterrows():
            print(f"  layer {int(layer):>3}  " + "  ".join(f"{m} {row[m]:.4f}" for m in wide.columns))
    share = frame[frame.metric == "pe_logit_share"]
    if len(share):
        print(f"  PE's direct share of the predicted logit: {float(share.value.iloc[0]):.4f}")
    if args.mpvg_check:
        print(f"mpvg constant-offset check: max |logit diff| = {mpvg_constant_offset_check(model.cpu()):.3g}")
    return 0


#: Per-layer metrics the probe prints, when the report has them: the token-PE correlation and cosine (where a
#: PE is received), the norms (every model has them).
_LAYER_METRICS = ("tok_pe_corr", "tok_pe_cos_mean", "tok_norm_mean", "pe_norm_mean", "resid_norm_mean")
#: The Last LN's numbers (layer -1), printed on one line.
_LAST_METRICS = ("last_ln_beta_var", "last_ln_cos_before_after", "tok_pe_corr")


def format_probe(frame) -> str:
    """The numbers worth looking at, one line per layer, then the Last LN; a model with no layer-wise PE (no
    token-PE correlation inside the blocks) says so and where its numbers are instead."""
    wide = frame.pivot_table(index="layer", columns="metric", values="value", aggfunc="first")
    blocks = wide[wide.index >= 0]
    cols = [m for m in _LAYER_METRICS if m in blocks.columns and blocks[m].notna().any()]
    lines = ["  layer  " + "  ".join(f"{c:>15}" for c in cols)]
    for layer, row in blocks.iterrows():
        lines.append(f"  {int(layer):>5}  " + "  ".join(f"{row[c]:>+15.4f}" if row[c] == row[c] else f"{'-':>15}"
                                                        for c in cols))
    if -1 in wide.index:
        last = wide.loc[-1]
        parts = [f"{m} {last[m]:+.4g}" for m in _LAST_METRICS if m in wide.columns and last[m] == last[m]]
        if parts:
            lines.append("  Last LN  " + "  ".join(parts))
    if "tok_pe_corr" not in blocks.columns or blocks["tok_pe_corr"].isna().all():
        kinds = [k for k in dict.fromkeys(frame["pe_kind"]) if k != "none"] if "pe_kind" in frame.columns else []
        what = f" (PE kind {', '.join(kinds)}: ablate and attribute measure its sites)" if kinds else ""
        lines.append(f"  no block receives a PE added to its tokens{what}, so there is no token-PE correlation inside "
                     "the blocks: look at the norms per layer and the Last LN above, or compare with a layer-wise "
                     "run (docs/probe.md)")
    return "\n".join(lines)
