"""``pe-probe eval``: score a run directory on a data set and record the result in ``RUN/eval.json``."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..core.vocab import SPLITS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = sub.add_parser(
        "eval", help="evaluate a run directory (adds an entry to RUN/eval.json)",
        description="Top-1/top-5 accuracy and loss of a trained run on a data set (default: the run's own, its "
        "validation split). A plain folder of class folders (--dataset imagefolder --data-dir TEST, no train/ "
        "or val/ inside) is scored whole. Data whose images differ from the run's training images in size, "
        "channels or class count is refused; a split holding the run's training images gives a warning. "
        "eval.json keeps one entry per data set, data directory and split.",
    )
    p.add_argument("run", help="run directory written by pe-probe train")
    p.add_argument("--dataset", help="digits, cifar10, cifar100 or imagefolder (default: the run's)")
    p.add_argument("--data-dir", help="folder of the data set's files (default: the run's, for the run's data set)")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="val: the validation split (val/, or the 10%% of each class held out of a plain folder); "
                        "train: the training split, no augmentation; all: every image of a plain folder of class "
                        "folders. Default: all for a plain folder that is not the run's own data, else val")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data-loader workers (default: fits the machine and the device)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-dir")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave out image files that do not decode (default: as the run was trained, for its own "
                        "data set); without it the first bad file is an error naming it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and record the result in ``eval.json`` (atomically); prints one result line."""
    from .. import RunDir, evaluate, load_run
    from ..core.errors import CheckpointError, DataWarning
    from ..probing.distributed import joined_group, main_lock

    run_dir = RunDir(args.run)
    if not run_dir.path.is_dir():
        raise CheckpointError(f"run directory {run_dir.path} does not exist")
    # [issue 22] under torchrun every process scores its exact shard; rank 0 alone locks, records and prints
    with joined_group(args.device), main_lock(run_dir.path) as writer:
        # one writer: a training run or another eval of this run makes this one stop at once
        loaded = load_run(args.run)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            result = evaluate(loaded, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                              batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                              download=args.download, skip_bad=args.skip_bad)
        for w in caught:  # re-issued: the command holds warnings until it has written eval.json (none on failure)
            if writer or not issubclass(w.category, DataWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if not writer:
            return 0
        run_dir.record_eval(result)
    where = f"{result['dataset']} {result['data_dir']}" if result["data_dir"] else result["dataset"]
    print(f"{args.run}: {where} split {result['split']}  top1 {result['top1']:.2f}  top5 {result['top5']:.2f}  "
          f"loss {result['loss']:.4f}  n {result['n']}")
    return 0
