"""``pe-probe probe CHECKPOINT --data NAME --out DIR``: stream a data set through a checkpoint, save a ProbeReport."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import DataError
from ._args import parse_kv


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``probe`` subcommand."""
    p = sub.add_parser(
        "probe",
        help="measure the PE inside a checkpoint over a data set (writes a ProbeReport)",
        description="Stream a data set through a checkpoint and save the PE statistics (docs/probe.md). "
                    "CHECKPOINT is a pe_probe run directory, or a timm safetensors state dict with --model NAME.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory (config.json + model.safetensors) "
                   "or a .safetensors state dict (then --model is required)")
    p.add_argument("--data", help="data-set name for pe_probe.data.build_dataset (default: the run's data set)")
    p.add_argument("--data-dir", help="where the data set lives")
    p.add_argument("--out", required=True, help="directory for the report (meta.json, metrics.csv, arrays.npz)")
    p.add_argument("--model", help="timm model name for a safetensors state dict (e.g. deit_tiny_patch16_224)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model constructor kwarg for --model (VALUE parsed as JSON when possible); repeatable")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=None, help="stop after this many images")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--adapter", choices=("auto", "pe", "timm"), default="auto",
                   help="'timm' derives each layer's PE as norm1(pos_embed) (default: auto)")
    p.add_argument("--n-norm-maps", type=int, default=8, help="images whose per-token norm maps are kept")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--mpvg-check", action="store_true",
                   help="also report the max logit difference between the model and its PVG + bias equivalent")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, probe the data set, save the report and print the token-PE correlations."""
    import torch

    from .. import load_checkpoint, mpvg_constant_offset_check, probe, save_report, summary_frame

    path = Path(args.checkpoint)
    model, data_cfg = load_checkpoint(path, args.model, **parse_kv(args.model_arg, "--model-arg"))
    data = args.data or data_cfg.get("dataset")
    if not data:
        raise DataError("--data is required (no data set recorded for this checkpoint)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    report = probe(
        model, data, batch_size=args.batch_size, max_images=args.max_images, data_dir=args.data_dir,
        mean=data_cfg.get("mean"), std=data_cfg.get("std"), num_workers=args.num_workers,
        adapter=args.adapter, n_norm_maps=args.n_norm_maps, run=str(path), progress=not args.no_progress,
    )
    out = save_report(report, args.out)
    frame = summary_frame(report)
    corr = frame[frame.metric == "tok_pe_corr"]
    print(f"probed {report.meta['n_images']} images of {data!r} with {report.meta['model']} "
          f"(pe_mode={report.meta['pe_mode']}, pe_derived={report.meta['pe_derived']}) -> {out}")
    for layer, value in zip(corr.layer, corr.value):
        print(f"  layer {int(layer):>3}  tok_pe_corr {value:+.4f}")
    if args.mpvg_check:
        print(f"mpvg constant-offset check: max |logit diff| = {mpvg_constant_offset_check(model.cpu()):.3g}")
    return 0
