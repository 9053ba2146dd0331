"""``pe-probe probe CHECKPOINT --out DIR``: stream a data set through a checkpoint, save a ProbeReport."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import DataError
from ._args import holding, parse_kv


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
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="run directory, timm hub folder, or .safetensors/.pth/.pt/.bin/.pth.tar file")
    p.add_argument("--data", help="data-set name for pe_probe.data.build_dataset (default: the run's data set)")
    p.add_argument("--data-dir", help="where the data set lives (default: the run's, for the run's data set)")
    p.add_argument("--split", choices=("val", "train", "all"), default=None,
                   help="part of the data set: val, train, or all (every image of a plain folder of class "
                        "folders); default: all for a plain folder that is not the run's own data, else val")
    p.add_argument("--out", required=True, help="directory for the report (meta.json, metrics.csv, arrays.npz)")
    p.add_argument("--model", help="timm model name (e.g. deit_tiny_patch16_224); needed when the checkpoint "
                   "does not name its model")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor kwarg (VALUE parsed as JSON when possible), over what the checkpoint "
                        "records, e.g. img_size=32 or pe_mode=pvg; repeatable")
    p.add_argument("--ema", action="store_true",
                   help="load the EMA weights (model_ema / state_dict_ema) instead of the trained ones (model / "
                        "state_dict), which are what DeiT's and LaPE's evaluation use")
    p.add_argument("--resample-pos-embed", action="store_true",
                   help="interpolate a PE trained for another patch grid to the model's (timm's "
                        "resample_abs_pos_embed, bicubic); the report records it. Without it a grid mismatch is "
                        "an error")
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
    p.set_defaults(func=holding("out", run))  # one writer of --out, from the start


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, probe the data set, save the report and print the token-PE correlations."""
    import torch

    from .. import load_checkpoint, mpvg_constant_offset_check, probe, save_report, summary_frame

    path = Path(args.checkpoint)
    model, info = load_checkpoint(path, args.model, use_ema=args.ema, resample_pos_embed=args.resample_pos_embed,
                                  **parse_kv(args.model_arg, "--model-arg"))
    recorded = info.data
    data = args.data or recorded.get("dataset")
    if not data:
        raise DataError("--data is required (no data set recorded for this checkpoint)")
    data_dir = args.data_dir or (recorded.get("data_dir") if data == recorded.get("dataset") else None)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    report = probe(
        model, data, batch_size=args.batch_size, max_images=args.max_images, data_dir=data_dir,
        mean=recorded.get("mean"), std=recorded.get("std"), num_workers=args.num_workers,
        adapter=args.adapter, n_norm_maps=args.n_norm_maps, run=str(path), progress=not args.no_progress,
        split=args.split, trained_on=recorded if info.format == "run" else None, meta=info.meta(),
    )
    out = save_report(report, args.out)
    frame = summary_frame(report)
    corr = frame[frame.metric == "tok_pe_corr"]
    print(f"{path}: {info.model} ({info.model_source}), weights {info.weights_key or 'state dict'}, "
          f"pe_mode={report.meta['pe_mode']} ({info.scheme_source})"
          + (f", PE resampled {info.pos_embed_resampled['from']} -> {info.pos_embed_resampled['to']}"
             if info.pos_embed_resampled else ""))
    print(f"probed {report.meta['n_images']} images of {data!r} (split {report.meta.get('split', '-')}) with "
          f"{report.meta['model']} (pe_mode={report.meta['pe_mode']}, pe_derived={report.meta['pe_derived']}) -> {out}")
    for layer, value in zip(corr.layer, corr.value):
        print(f"  layer {int(layer):>3}  tok_pe_corr {value:+.4f}")
    if args.mpvg_check:
        print(f"mpvg constant-offset check: max |logit diff| = {mpvg_constant_offset_check(model.cpu()):.3g}")
    return 0
