"""Probe throughput vs a plain forward pass, vs caching every activation with forward hooks, vs torchlens.

Usage: python benchmarks/probe_overhead.py [--model pe_deit_tiny_patch16_224] [--pe-mode mpvg] [--batch-size 32]
                                           [--batches 2] [--repeats 5] [--torchlens-repeats 2] [--no-torchlens]
                                           [--threads N] [--tiny]

Every contender processes the same ``--batches`` x ``--batch-size`` images, in eval mode under
``torch.inference_mode()``, timed interleaved in one process (medians of ``--repeats`` rounds):

- ``plain``: ``model(x)`` for every batch, nothing else;
- ``pe_probe``: ``pe_probe.probe(model, images, batch_size=...)``, the public call with every hook point
  and every streaming statistic on, report building included;
- ``hook_cache``: the usual alternative: ``register_forward_hook`` on every hook point, each output
  appended to a per-name list over the data set (caching only; computing statistics afterwards would
  cost more on top);
- ``torchlens``: ``torchlens.trace(model, x)`` per batch (saves every operation's output), traces kept,
  timed in its own interleaved round against ``plain`` (it is much slower) when torchlens is installed
  (``pip install torchlens`` or the ``bench`` extra).

Printed ratios are throughputs relative to ``plain`` (plain median / contender median; 1.0 = free).
Goal (issue 6): ``pe_probe`` >= 0.95.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Iterable

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, median  # noqa: E402

import pe_probe  # noqa: E402  (registers the models)

#: A model small enough for the test suite (``--tiny``): seconds, not minutes.
TINY_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)


def build_model(name: str, pe_mode: str, tiny: bool) -> torch.nn.Module:
    """The benchmarked model, seeded, in eval mode."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MPVG with a class token warns; not the case by default
        return timm.create_model(name, pe_mode=pe_mode, **(TINY_KWARGS if tiny else {})).eval()


def hook_cache(model: torch.nn.Module, batches: Iterable[torch.Tensor], names: list[str]) -> dict[str, list]:
    """The usual alternative: forward hooks on every named module, outputs cached over the data set."""
    modules = dict(model.named_modules())
    cache: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []

    def make(name: str):
        def hook(module, args, output):
            cache[name].append(output.detach())
        return hook

    try:
        for n in names:
            handles.append(modules[n].register_forward_hook(make(n)))
        with torch.inference_mode():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return cache


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pe_deit_tiny_patch16_224")
    ap.add_argument("--pe-mode", default="mpvg")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=2, help="batches per timed call (the 'data set')")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torchlens-repeats", type=int, default=2)
    ap.add_argument("--no-torchlens", action="store_true", help="skip torchlens even when installed")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (for the test suite), not DeiT-Ti")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args.model, args.pe_mode, args.tiny)
    size = model.patch_embed.img_size
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(args.batches * args.batch_size, model.in_chans, *size, generator=gen)
    batches = list(data.split(args.batch_size))
    names = [n for n in pe_probe.hook_names(model) if n in dict(model.named_modules())]

    def plain():
        with torch.inference_mode():
            for x in batches:
                model(x)

    def probe():
        return pe_probe.probe(model, data, batch_size=args.batch_size, progress=False)

    def cache():
        return hook_cache(model, batches, names)

    fns = {"plain": plain, "pe_probe": probe, "hook_cache": cache}
    times = interleaved(fns, repeats=args.repeats)
    tl_times = None
    if not args.no_torchlens:
        try:
            import torchlens
            from torchlens.options import CaptureOptions
        except ImportError:
            torchlens = None
            print("# torchlens is not installed (pip install torchlens): skipped")
        if torchlens is not None:
            def tl():
                with torch.inference_mode():
                    return [torchlens.trace(model, x, capture=CaptureOptions(unwrap_when_done=True)) for x in batches]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tl_times = interleaved({"plain": plain, "torchlens": tl}, repeats=args.torchlens_repeats)

    n_img = len(data)
    what = "tiny model" if args.tiny else args.model
    print(f"# probe overhead, {what} pe_mode={args.pe_mode}, {n_img} images in batches of {args.batch_size}, "
          f"{args.repeats} interleaved repeats, inference mode")
    print(f"# {machine()}")
    print(f"# {len(names)} hook points; pe_probe {pe_probe.__version__}, torch {torch.__version__}")
    base = median(times["plain"])
    ratios: dict[str, float] = {}
    for name in fns:
        t = median(times[name])
        ratios[name] = base / t
        print(f"{name:12s} median {t * 1000:9.1f} ms  {n_img / t:7.1f} img/s  throughput vs plain: {base / t:.3f}")
    if tl_times is not None:
        b2, t = median(tl_times["plain"]), median(tl_times["torchlens"])
        ratios["torchlens"] = b2 / t
        print(f"{'torchlens':12s} median {t * 1000:9.1f} ms  {n_img / t:7.1f} img/s  throughput vs plain: {b2 / t:.3f}"
              f"  (own round of {args.torchlens_repeats}, plain median there {b2 * 1000:.1f} ms)")
    goal = "met" if ratios["pe_probe"] >= 0.95 else "MISSED"
    print(f"# goal pe_probe >= 0.95 of plain: {goal} ({ratios['pe_probe']:.3f}); "
          f"pe_probe vs hook_cache: {ratios['pe_probe'] / ratios['hook_cache']:.2f}x")
    return ratios


if __name__ == "__main__":
    main()
