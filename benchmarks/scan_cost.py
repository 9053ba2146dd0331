"""Cost of checking every image file before training (``pe_probe.data.scan``) as a share of one training epoch.

Usage: python benchmarks/scan_cost.py [--data-dir DIR | --synthetic W H] [--images 1024] [--val-fraction 0.25]
                                      [--model pe_vit_lite_7_4_32] [--model-kwargs k=v,...] [--img-size 32]
                                      [--batch-size 128] [--repeats 3] [--threads N] [--no-augment]

What it measures, in one process:

- ``scan``: :func:`pe_probe.data.scan.scan_images` over every file of the folder (train and val), with its
  verdict cache cleared first (a cold scan: what a run pays once when it starts), median of ``--repeats``;
  ``scan (cached)``: the same call again (what the validation set, a probe during training or a resume on the
  same process pays).
- ``epoch``: one ``pe_probe.train`` epoch on the folder (the ``vit_lite_cifar`` recipe with its augmentation
  unless ``--no-augment``; mixup, cutmix and drop path off), its ``epoch_time_s`` (training steps only), median
  of ``--repeats``.

Printed: per-image costs and the scan's share of one epoch, ``scan / epoch`` (the folder's own mix of training
and validation files; a run scans both once, trains on the training files every epoch). The data defaults to
the first ``--images`` training images of ``../shared/data/cifar10-mini`` (32-px JPEGs, symlinked) with a
quarter as many validation images; ``--synthetic W H`` writes random-noise-plus-gradient JPEGs of that size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import comma_kwargs, machine, median  # noqa: E402

import pe_probe  # noqa: E402
from pe_probe.data import scan  # noqa: E402

CIFAR_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"


def build_folder(root: Path, src: Path | None, n_train: int, n_val: int, size: tuple[int, int]) -> Path:
    """``root/data/{train,val}/<class>/``: symlinks to ``src``'s first images (round-robin over classes), or
    synthetic JPEGs of ``size`` (W, H) in 10 classes."""
    folder = root / "data"
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        if src is None:
            w, h = size
            ramp = np.linspace(0, 200, w)[None, :, None]
            for i in range(count):
                d = folder / split / f"c{i % 10}"
                d.mkdir(parents=True, exist_ok=True)
                img = (rng.random((h, w, 3)) * 50 + ramp).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)
            continue
        classes = sorted(p for p in (src / split).iterdir() if p.is_dir())
        files = {c.name: sorted(c.iterdir()) for c in classes}
        for i in range(count):
            cls = classes[i % len(classes)].name
            d = folder / split / cls
            d.mkdir(parents=True, exist_ok=True)
            f = files[cls][i // len(classes)]
            (d / f.name).symlink_to(f.resolve())
    return folder


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", type=Path, default=None)
    src.add_argument("--synthetic", type=int, nargs=2, metavar=("W", "H"))
    p.add_argument("--images", type=int, default=1024, help="training images")
    p.add_argument("--val-fraction", type=float, default=0.25, help="validation images per training image")
    p.add_argument("--model", default="pe_vit_lite_7_4_32")
    p.add_argument("--model-kwargs", default="", help="k=v,... over the model's own (e.g. embed_dim=64,depth=4)")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="scan threads (default: pe_probe.data.scan.default_threads, by file size)")
    p.add_argument("--no-augment", action="store_true")
    args = p.parse_args(argv)

    data = None if args.synthetic else (args.data_dir or CIFAR_MINI)
    n_val = max(10, int(args.images * args.val_fraction))
    kwargs = {"img_size": args.img_size, "num_classes": 10, **comma_kwargs(args.model_kwargs)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(Path(tmp), data, args.images, n_val, tuple(args.synthetic or (0, 0)))
        files = sorted(str(f) for f in folder.rglob("*.jpg"))
        threads = args.threads or scan.default_threads(files)
        scans, epochs = [], []
        for r in range(args.repeats):
            scan.clear_cache()
            t0 = time.perf_counter()
            bad = scan.scan_images(files, threads=threads)
            scans.append(time.perf_counter() - t0)
            assert not bad, bad
        t0 = time.perf_counter()
        scan.scan_images(files, threads=threads)
        cached = time.perf_counter() - t0
        off = dict(mixup=0.0, cutmix=0.0, drop_path_rate=0.0)
        if args.no_augment:
            off.update(augment=False, randaugment="none", re_prob=0.0)
        for r in range(args.repeats):
            out = Path(tmp) / f"run{r}"
            pe_probe.train(out=out, model=args.model, model_kwargs=kwargs, dataset="imagefolder", data_dir=folder,
                           recipe="vit_lite_cifar", epochs=1, batch_size=args.batch_size, warmup_epochs=0,
                           progress=False, verbose=False, **off)
            epochs.append(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["epoch_time_s"])
    scan_s, epoch_s = median(scans), median(epochs)
    n_files, n_train = len(files), (args.images // args.batch_size) * args.batch_size
    what = f"synthetic {args.synthetic[0]}x{args.synthetic[1]} JPEGs" if args.synthetic else str(data)
    print(f"machine: {machine()}; scan threads {threads}")
    print(f"data: {what}, {args.images} train + {n_val} val files; model {args.model} {kwargs}, batch "
          f"{args.batch_size}, augment {not args.no_augment}")
    print(f"scan (cold)    {scan_s:8.3f} s  {1e6 * scan_s / n_files:8.1f} us/file   (runs: "
          + ", ".join(f"{s:.3f}" for s in scans) + ")")
    print(f"scan (cached)  {cached:8.3f} s  {1e6 * cached / n_files:8.1f} us/file")
    print(f"epoch          {epoch_s:8.3f} s  {1e3 * epoch_s / n_train:8.2f} ms/image trained   (runs: "
          + ", ".join(f"{s:.2f}" for s in epochs) + ")")
    share = scan_s / epoch_s
    print(f"scan / epoch   {100 * share:.2f} %")
    return {"scan_s": scan_s, "cached_s": cached, "epoch_s": epoch_s, "share": share}


if __name__ == "__main__":
    main()
