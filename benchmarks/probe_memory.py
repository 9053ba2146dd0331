"""Peak memory of probing N vs 10 N images, and of caching every activation with forward hooks.

Usage: python benchmarks/probe_memory.py [--model pe_deit_tiny_patch16_224] [--pe-mode mpvg] [--batch-size 32]
                                         [--sizes 256 2560] [--cache-sizes 256 1024] [--tiny]

Each (method, number of images) runs in a fresh Python process, so every peak is that run's own: the
process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``, the kernel's count of every
page the process ever had resident: Python objects, torch's CPU allocations, the model, the libraries).
Images are generated batch by batch (seeded), so the data set itself never sits in memory.

- ``pe_probe``: ``pe_probe.probe(model, batches, batch_size=...)``, every statistic on;
- ``hook_cache``: forward hooks on every hook point appending outputs to per-name lists (the usual
  alternative; its memory is linear in the images, so the default stops at 1,024 images: ~6 GB at DeiT-Ti
  size; the 2,560-image figure is extrapolated from its measured bytes per image and marked so).

Printed per run: the peak, the baseline (resident memory after building the model, before the first
image) and the peak above the baseline. Goal (issue 6): pe_probe's peak grows <= 5% from N to 10 N images.
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from probe_overhead import build_model, hook_cache  # noqa: E402

import pe_probe  # noqa: E402
import pe_probe.models  # noqa: E402,F401  (registers the pe_* variants with timm)


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmHWM``, ``VmRSS``) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


class LazyImages:
    """``n`` seeded random images in batches, generated on the fly (the data set is never held)."""

    def __init__(self, n: int, batch_size: int, shape: tuple[int, ...]) -> None:
        self.n, self.batch_size, self.shape = n, batch_size, shape

    def __iter__(self):
        gen = torch.Generator().manual_seed(0)
        for start in range(0, self.n, self.batch_size):
            yield torch.randn(min(self.batch_size, self.n - start), *self.shape, generator=gen)


def child(args: argparse.Namespace) -> None:
    """One measurement, in its own process: prints one JSON line."""
    model = build_model(args.model, args.pe_mode, args.tiny)
    shape = (model.in_chans, *model.patch_embed.img_size)
    data = LazyImages(args.n, args.batch_size, shape)
    baseline = status_kib("VmRSS")
    extra = {}
    if args.method == "pe_probe":
        report = pe_probe.probe(model, data, batch_size=args.batch_size, progress=False)
        extra["n_probed"] = report.meta["n_images"]
    else:
        modules = dict(model.named_modules())
        names = [n for n in pe_probe.hook_names(model) if n in modules]
        cache = hook_cache(model, data, names)
        seen = {}
        for tensors in cache.values():
            for t in tensors:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        extra["cached_bytes"] = sum(seen.values())
    print(json.dumps({"method": args.method, "n": args.n, "peak_kib": status_kib("VmHWM"), "baseline_kib": baseline,
                      **extra}))


def run_child(method: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--n", str(n), "--model", args.model, "--pe-mode",
           args.pe_mode, "--batch-size", str(args.batch_size)] + (["--tiny"] if args.tiny else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pe_deit_tiny_patch16_224")
    ap.add_argument("--pe-mode", default="mpvg")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs=2, default=[256, 2560], metavar=("N", "N10"))
    ap.add_argument("--cache-sizes", type=int, nargs="*", default=[256, 1024],
                    help="image counts for the hook-cache alternative (memory grows linearly; none to skip)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (for the test suite), not DeiT-Ti")
    ap.add_argument("--child", choices=["pe_probe", "hook_cache"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.method = args.child
        child(args)
        return {}

    runs = [run_child("pe_probe", n, args) for n in args.sizes]
    runs += [run_child("hook_cache", n, args) for n in args.cache_sizes]
    what = "tiny model" if args.tiny else args.model
    print(f"# peak memory (VmHWM, fresh process per run), {what} pe_mode={args.pe_mode}, batch {args.batch_size}")
    print(f"# {machine()}")
    mib = 1 / 1024
    for r in runs:
        above = (r["peak_kib"] - r["baseline_kib"]) * mib
        cached = f"  cached tensors {r['cached_bytes'] / 2**20:8.1f} MiB" if "cached_bytes" in r else ""
        print(f"{r['method']:10s} {r['n']:6d} images  peak {r['peak_kib'] * mib:8.1f} MiB  baseline "
              f"{r['baseline_kib'] * mib:7.1f} MiB  above baseline {above:8.1f} MiB{cached}")
    small, big = runs[0], runs[1]
    growth = big["peak_kib"] / small["peak_kib"] - 1
    above_s = small["peak_kib"] - small["baseline_kib"]
    above_b = big["peak_kib"] - big["baseline_kib"]
    print(f"# pe_probe peak growth {small['n']} -> {big['n']} images: {growth * 100:+.2f}% "
          f"(above-baseline part: {above_s * mib:.1f} -> {above_b * mib:.1f} MiB); goal <= 5%: "
          f"{'met' if growth <= 0.05 else 'MISSED'}")
    result = {"probe_growth": growth}
    cache = [r for r in runs if r["method"] == "hook_cache"]
    if len(cache) >= 2:
        a, b = cache[0], cache[-1]
        per_img = (b["peak_kib"] - a["peak_kib"]) * 1024 / (b["n"] - a["n"])
        est = a["peak_kib"] * 1024 + per_img * (big["n"] - a["n"])
        result["cache_growth"] = b["peak_kib"] / a["peak_kib"] - 1
        print(f"# hook_cache peak growth {a['n']} -> {b['n']} images: {result['cache_growth'] * 100:+.1f}% "
              f"({per_img / 2**20:.2f} MiB per image); extrapolated peak at {big['n']} images: "
              f"{est / 2**30:.1f} GiB (vs pe_probe {big['peak_kib'] / 2**20:.2f} GiB)")
    return result


if __name__ == "__main__":
    main()
