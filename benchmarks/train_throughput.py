"""Training throughput of ``pe_probe.train`` on real JPEGs vs a minimal hand-written timm loop on pre-decoded images.

Usage: python benchmarks/train_throughput.py [--data-dir DIR | --synthetic] [--images 1024] [--batch-size 128]
                                             [--model pe_vit_lite_7_4_32] [--model-kwargs k=v,...]
                                             [--workers auto 2 ...] [--repeats 3] [--warmup 1] [--augment]
                                             [--threads N]

The same model (seeded, drop path off) and the same training images are trained two ways, in one process,
in rounds whose order rotates:

- ``hand loop``: the bound. The images are decoded and normalised once, up front, into one tensor; each step
  is ``model(x)``, cross-entropy, ``backward``, timm's AdamW step. Nothing else.
- ``pe-probe (workers W)``: ``pe_probe.train`` on the image folder for one epoch, reading and decoding the
  JPEGs every step (``imagefolder``, the ``vit_lite_cifar`` recipe with augmentation, mixup, label smoothing
  and drop path switched off unless ``--augment``), with ``--num-workers W``; ``auto`` is pe-probe's default
  for this machine (``pe_probe.data.workers.default_num_workers``). Its images per second are the run's own
  ``images_per_sec`` (training steps only; start-up and the per-epoch evaluation are not counted).

Printed: images per second of each contender (median over rounds) and its ratio to the hand loop (1.0: the
loop and the data pipeline cost nothing beyond the model's own steps), with the median of the per-round
ratios and their quartiles (``_common.paired``). The data defaults to ``../shared/data/cifar10-mini`` beside
the checkout (its first ``--images`` training images, symlinked into a temporary folder); ``--synthetic``
writes random 32-px JPEGs instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import comma_kwargs, machine, median, paired, torch_threads  # noqa: E402

import pe_probe  # noqa: E402
import pe_probe.models  # noqa: E402,F401  (registers the pe_* variants with timm)
from pe_probe.data.registry import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from pe_probe.data.workers import default_num_workers, usable_cpus  # noqa: E402

CIFAR_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
RECIPE = "vit_lite_cifar"
EXTS = (".jpg", ".jpeg", ".png")


def subset_folder(src: Path | None, n: int, root: Path, classes: int = 10, size: int = 32) -> Path:
    """An image folder under ``root`` with ``n`` training images (round-robin over the classes of ``src``,
    symlinked; or random ``size``-px JPEGs when ``src`` is None) and one validation image per class."""
    folder = root / "data"
    rng = np.random.default_rng(0)
    if src is None:
        names = [f"c{i}" for i in range(classes)]
        for split, count in (("train", n), ("val", classes)):
            for i in range(count):
                d = folder / split / names[i % classes]
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:05d}.jpg")
        return folder
    for split, count in (("train", n), ("val", None)):
        class_dirs = sorted(p for p in (src / split).iterdir() if p.is_dir())
        files = {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in EXTS) for c in class_dirs}
        picks = ([(c, files[c][i // len(files)]) for i, c in zip(range(count), _cycle(sorted(files)))]
                 if count is not None else [(c, files[c][0]) for c in sorted(files)])
        for cls, f in picks:
            d = folder / split / cls
            d.mkdir(parents=True, exist_ok=True)
            (d / f.name).symlink_to(f.resolve())
    return folder


def _cycle(items: list[str]):
    while True:
        yield from items


def decoded(folder: Path, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training image of ``folder`` decoded, resized to ``img_size`` and normalised once: (N, 3, H, W)."""
    classes = sorted(p.name for p in (folder / "train").iterdir())
    xs, ys = [], []
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    for label, c in enumerate(classes):
        for f in sorted((folder / "train" / c).iterdir()):
            img = Image.open(f).convert("RGB").resize((img_size, img_size), Image.BICUBIC)
            xs.append((torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255 - mean) / std)
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def hand_loop(model_name: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float) -> float:
    """Images per second of one epoch of the minimal loop (shuffled batches, drop_last, as pe-probe)."""
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, **kwargs).train()
    opt = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=0.05)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    steps = len(x) // batch_size
    t0 = time.perf_counter()
    for s in range(steps):
        idx = order[s * batch_size:(s + 1) * batch_size]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # pe-probe reads the loss every step too
    return steps * batch_size / (time.perf_counter() - t0)


def pe_probe_train(model_name: str, kwargs: dict, folder: Path, out: Path, batch_size: int, lr: float,
                   workers: int | None, augment: bool) -> float:
    """Images per second of one ``pe_probe.train`` epoch on the folder (its ``metrics.jsonl``)."""
    off = {} if augment else dict(augment=False, randaugment="none", mixup=0.0, cutmix=0.0, re_prob=0.0,
                                  label_smoothing=0.0)
    pe_probe.train(out=out, model=model_name, model_kwargs=kwargs, dataset="imagefolder", data_dir=folder,
                   recipe=RECIPE, epochs=1, batch_size=batch_size, lr=lr, warmup_epochs=0, drop_path_rate=0.0,
                   num_workers=workers, progress=False, verbose=False, **off)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["images_per_sec"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None,
                    help=f"image folder with train/ and val/ (default: {CIFAR_MINI})")
    ap.add_argument("--synthetic", action="store_true", help="random 32-px JPEGs instead of a real folder")
    ap.add_argument("--images", type=int, default=1024, help="training images (one epoch)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="pe_vit_lite_7_4_32")
    ap.add_argument("--model-kwargs", default="", help="extra kwargs as key=value,key=value (ints/floats parsed)")
    ap.add_argument("--workers", nargs="+", default=None,
                    help="worker counts to time ('auto' = pe-probe's default; default: auto and the old default "
                         "min(4, cores))")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (imports, allocator, page cache)")
    ap.add_argument("--augment", action="store_true", help="pe-probe with the recipe's augmentation on")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--lr", type=float, default=6e-4)
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        return run(args)


def run(args: argparse.Namespace) -> dict[str, float]:
    """Time every contender (see the module docstring); prints the table and returns the ratios."""
    src = None if args.synthetic else (args.data_dir or CIFAR_MINI)
    if src is not None and not (src / "train").is_dir():
        raise SystemExit(f"{src} has no train/ folder; pass --data-dir DIR or --synthetic")
    kwargs = {"num_classes": 10, "drop_path_rate": 0.0, **comma_kwargs(args.model_kwargs)}
    img_size = int(kwargs.get("img_size", timm.models.get_pretrained_cfg(args.model).input_size[-1]))
    cpus = usable_cpus()
    workers = args.workers or ["auto", str(min(4, os.cpu_count() or 1))]
    auto = default_num_workers("cpu" if not torch.cuda.is_available() else "cuda")
    labels = {w: f"pe-probe (workers {auto}, auto)" if w == "auto" else f"pe-probe (workers {w})" for w in workers}

    with tempfile.TemporaryDirectory() as tmp:
        folder = subset_folder(src, args.images, Path(tmp))
        x, y = decoded(folder, img_size)
        runs = {"hand loop": lambda: hand_loop(args.model, kwargs, x, y, args.batch_size, args.lr)}
        for i, w in enumerate(workers):
            def run(w=w, i=i):
                out = Path(tmp) / f"run{i}_{time.monotonic_ns()}"
                return pe_probe_train(args.model, kwargs, folder, out, args.batch_size, args.lr,
                                      None if w == "auto" else int(w), args.augment)
            runs[labels[w]] = run
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        secs: dict[str, list[float]] = {k: [] for k in runs}  # seconds per image, per round
        items = list(runs.items())
        for r in range(args.repeats):
            k = r % len(items)
            for name, fn in items[k:] + items[:k]:
                secs[name].append(1.0 / fn())

    print(f"# train throughput, {args.model} {kwargs} at {img_size} px, {len(x)} images, batch {args.batch_size}, "
          f"{'recipe augmentation on' if args.augment else 'no augmentation'}, {args.repeats} rotated rounds")
    print(f"# data: {'synthetic JPEGs' if src is None else src}; {cpus} usable cores; pe-probe's default workers "
          f"here: {auto}")
    print(f"# {machine()}")
    base = median(secs["hand loop"])
    ratios = {}
    for name in runs:
        ips = 1.0 / median(secs[name])
        line = f"{name:28s} {ips:8.1f} img/s"
        if name != "hand loop":
            med, lo, hi = paired(secs, "hand loop", name)  # hand-loop time / pe-probe time = throughput ratio
            ratios[name] = base / median(secs[name])
            line += f"  ratio vs hand loop: {ratios[name]:.3f}  per round: {med:.3f} [{lo:.3f}, {hi:.3f}]"
        print(line)
    return ratios


if __name__ == "__main__":
    main()
