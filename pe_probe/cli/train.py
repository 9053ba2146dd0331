"""``pe-probe train``: train a model with a named recipe and overridable flags into a run directory."""

from __future__ import annotations

import argparse

from ..models import PE_MODES
from ._args import parse_kv


def _last_ln_pe(text: str) -> int | str:
    if text.lower() in ("none", "preset"):
        return text.lower()
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected none, preset, 0 (pos_0) or a block index, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = sub.add_parser(
        "train", help="train a model into a run directory",
        description="Train a pe-probe ViT (or any timm model) with a named recipe; unset flags come from the recipe. "
        "Recipes: deit, swin, t2t, vit_lite_cifar, digits (default for --dataset digits).",
    )
    p.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    p.add_argument("--dataset", help="digits, cifar10, cifar100 or imagefolder (default: the recipe's)")
    p.add_argument("--data-dir", help="folder of the data set's files (not needed for digits)")
    p.add_argument("--recipe", help="named hyperparameter preset (default: chosen by --dataset)")
    p.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", help="extra model constructor kwargs")
    g = p.add_argument_group("position-embedding knobs (pe_* models)")
    g.add_argument("--pe-mode", choices=PE_MODES, help="PE-delivery preset (default: default)")
    g.add_argument("--pe-input-add", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--pe-layer0", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--pe-hierarchical", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--last-ln-pe", type=_last_ln_pe, default="preset", metavar="{none,0,K}",
                   help="PE added after the Last LN: none, 0 (pos_0, MPVG) or block K's PE")
    g.add_argument("--global-pool", choices=("token", "avg"))
    g.add_argument("--pe-type", choices=("learned", "sincos"))
    h = p.add_argument_group("hyperparameters (override the recipe)")
    h.add_argument("--epochs", type=int)
    h.add_argument("--batch-size", type=int, help="per process")
    h.add_argument("--lr", type=float)
    h.add_argument("--weight-decay", type=float)
    h.add_argument("--warmup-epochs", type=float)
    h.add_argument("--min-lr", type=float)
    h.add_argument("--warmup-lr", type=float)
    h.add_argument("--opt", help="timm optimizer name (recipes use adamw)")
    h.add_argument("--label-smoothing", type=float)
    h.add_argument("--mixup", type=float, help="mixup alpha (0 disables)")
    h.add_argument("--cutmix", type=float, help="cutmix alpha (0 disables)")
    h.add_argument("--mixup-prob", type=float)
    h.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="timm's training transform (random-resized crop, flip, colour jitter)")
    h.add_argument("--randaugment", help="timm RandAugment policy, e.g. rand-m9-mstd0.5-inc1, or none")
    h.add_argument("--re-prob", type=float, help="random-erasing probability")
    h.add_argument("--drop-path-rate", type=float)
    h.add_argument("--clip-grad", type=float, help="gradient-norm clipping (0 disables)")
    r = p.add_argument_group("running")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact resume on CPU)")
    r.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    r.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on CUDA)")
    r.add_argument("--num-workers", type=int)
    r.add_argument("--num-threads", type=int, help="torch CPU threads")
    r.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="also save state every N steps")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    r.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-dir")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--quiet", action="store_true", help="no per-epoch summary lines")
    p.set_defaults(func=run)


_DIRECT = (
    "out", "model", "dataset", "data_dir", "recipe", "pe_mode", "pe_input_add", "pe_layer0", "pe_hierarchical",
    "last_ln_pe", "global_pool", "pe_type", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "min_lr",
    "warmup_lr", "opt", "label_smoothing", "mixup", "cutmix", "mixup_prob", "augment", "randaugment", "re_prob",
    "drop_path_rate", "clip_grad", "seed", "deterministic", "device", "amp", "num_workers", "num_threads",
    "checkpoint_every", "resume", "download",
)


def run(args: argparse.Namespace) -> int:
    """Build a TrainConfig from the flags and train; prints the run directory."""
    from .. import train
    from ..train import TrainConfig  # noqa: F811 - the package, through sys.modules

    cfg = TrainConfig(
        **{k: getattr(args, k) for k in _DIRECT},
        model_kwargs=parse_kv(args.model_kwargs),
        progress=not args.no_progress,
        verbose=not args.quiet,
    )
    out = train(cfg)
    print(out)
    return 0
