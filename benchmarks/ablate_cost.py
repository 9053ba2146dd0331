"""What ``pe_probe.ablate`` and ``pe_probe.attribute`` cost, in plain forward passes of the same images.

Usage: python benchmarks/ablate_cost.py [--model pe_vit_lite_7_4_32] [--pe-modes default lape pvg mpvg]
                                        [--batch-size 16] [--repeats 3] [--n-steps 8 32] [--threads N] [--tiny]

Per PE scheme, the same batch of random images, in eval mode, timed interleaved in one process (medians of
``--repeats`` rounds, and the median of the per-round ratios with their quartiles, ``_common.paired``):

- ``plain``: one ``model(x)`` under ``torch.inference_mode()``;
- ``ablate``: ``pe_probe.ablate(model, x)``: every PE site, the three interventions, prefix reuse on (a block
  site reruns only the blocks from the site on);
- ``ablate (full passes)``: the same with ``reuse_prefix=False``: one intact pass plus one full pass per site and
  intervention, ``3 S + 1`` passes for S sites (``3 L + 1`` when every block receives a PE);
- ``attribute n=N`` (first scheme only): ``pe_probe.attribute`` on one block site with ``n_steps=N``.

Printed: each contender's time as a multiple of ``plain`` (measured), beside what the run itself counted
(``attrs["cost"]``: plain passes per image, and full-pass equivalents, block calls / depth, with prefix reuse),
so the two can be compared. The machine is often shared: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, median, paired, torch_threads  # noqa: E402

import pe_probe  # noqa: E402
import pe_probe.models  # noqa: E402,F401  (registers the pe_* variants with timm)
from pe_probe.probing.sites import find_sites  # noqa: E402

#: A model small enough for the test suite (``--tiny``): seconds, not minutes.
TINY_KWARGS = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0, num_classes=10)


def build_model(name: str, pe_mode: str, tiny: bool) -> torch.nn.Module:
    """The benchmarked model, seeded, in eval mode."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pe_mode=pe_mode, **(TINY_KWARGS if tiny else {})).eval()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pe_vit_lite_7_4_32")
    ap.add_argument("--pe-modes", nargs="+", default=["default", "lape", "pvg", "mpvg"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-steps", type=int, nargs="*", default=[8, 32], help="attribution steps to time (none: skip)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (for the test suite)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    what = "tiny model" if args.tiny else args.model
    print(f"# ablate / attribute cost, {what}, batch of {args.batch_size} random images, {args.repeats} interleaved "
          f"repeats; times as multiples of one plain forward pass of the batch")
    print(f"# {machine()}")
    results: dict[str, dict[str, float]] = {}
    for k, mode in enumerate(args.pe_modes):
        model = build_model(args.model, mode, args.tiny)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch_size, model.in_chans, *model.patch_embed.img_size, generator=gen)
        counted = {}

        def plain():
            with torch.inference_mode():
                model(x)

        def ablate(reuse: bool):
            frame = pe_probe.ablate(model, x, batch_size=args.batch_size, reuse_prefix=reuse, progress=False)
            counted[reuse] = frame.meta["cost"], len(frame.sites)

        fns = {"plain": plain, "ablate": lambda: ablate(True), "ablate (full passes)": lambda: ablate(False)}
        if k == 0:
            sites_ = find_sites(model).sites
            block = next((s for s in sites_ if s.layer >= 0), sites_[0])  # a block site where there is one
            for n in args.n_steps:
                def attr(n=n):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        pe_probe.attribute(model, x, sites=[block.hook], n_steps=n, batch_size=args.batch_size,
                                           progress=False)
                fns[f"attribute n={n}"] = attr
        times = interleaved(fns, repeats=args.repeats)
        base = median(times["plain"])
        cost, sites = counted[True]
        depth = len(model.blocks)
        print(f"## {mode}: depth {depth}, {sites} PE site(s); counted plain passes 1 + 3S = "
              f"{cost['plain_passes_per_image']:g}, full-pass equivalents with prefix reuse "
              f"{cost['full_pass_equivalents_per_image']:.2f}")
        row: dict[str, float] = {"sites": sites, "counted_plain": cost["plain_passes_per_image"],
                                 "counted_prefix": cost["full_pass_equivalents_per_image"]}
        for name in fns:
            t = median(times[name])
            med, lo, hi = paired(times, name, "plain")
            row[name] = med
            extra = ""
            if name.startswith("attribute"):
                n = int(name.split("=")[1])
                extra = f"  (1 site: {n + 5} forward + {n} backward passes per image; " \
                        f"{t / args.batch_size * 1000:.1f} ms per image)"
            print(f"{name:22s} median {t * 1000:9.1f} ms  x plain: {t / base:7.2f}  per round: {med:.2f} "
                  f"[{lo:.2f}, {hi:.2f}]{extra}")
        results[mode] = row
    return results


if __name__ == "__main__":
    main()
