"""``pe-probe eval``: score a run directory on a data set and write ``RUN/eval.json``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = sub.add_parser(
        "eval", help="evaluate a run directory (writes RUN/eval.json)",
        description="Top-1/top-5 accuracy and loss of a trained run on a data set's validation split "
        "(default: the data set the run was trained on).",
    )
    p.add_argument("run", help="run directory written by pe-probe train")
    p.add_argument("--dataset", help="digits, cifar10, cifar100 or imagefolder (default: the run's)")
    p.add_argument("--data-dir", help="folder of the data set's files (default: the run's)")
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and record the result in ``eval.json`` (atomically); prints one result line."""
    from .. import RunDir, evaluate, load_run

    loaded = load_run(args.run)
    dataset = args.dataset or loaded.config["data"]["dataset"]
    result = evaluate(loaded, dataset=dataset, data_dir=args.data_dir, train_split=args.split == "train",
                      batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                      download=args.download)
    data_dir = args.data_dir or (loaded.config["data"].get("data_dir") if dataset == loaded.config["data"]["dataset"]
                                 else None)
    record = {**result, "dataset": dataset, "data_dir": data_dir, "split": args.split}
    RunDir(args.run).record_eval(record)
    print(f"{args.run}: {dataset} {args.split}  top1 {result['top1']:.2f}  top5 {result['top5']:.2f}  "
          f"loss {result['loss']:.4f}  n {result['n']}")
    return 0
