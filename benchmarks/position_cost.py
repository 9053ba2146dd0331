"""What the position measurements (pe_probe.probing.position) cost: time as a share of the forward pass, and
state bytes as the number of images grows.

Usage: python benchmarks/position_cost.py [--model pe_deit_tiny_patch16_224] [--pe-mode mpvg] [--batch-size 32]
                                          [--batches 2] [--sizes 32 128] [--no-decode] [--threads N] [--tiny]
                                          [--stats-backend eager|compile]

1. Time. One ``pe_probe.probe(..., decode=True)`` call with timers around each addition, beside the plain
   forward passes of the same batches (median of 3): ``decomposition`` (the variance sums in the hooks and the
   PE term), ``logit`` (the logit decomposition once per batch), ``decode_stream`` (the ridge statistics and
   the classifier's sample in the hooks), ``decode_ablated`` (the second, PE-ablated forward pass with its
   statistics) and ``decode_fit`` (solving the ridge grid and fitting the logistic classifiers once, at the
   end; it does not grow with the images). Each is printed as a share of the plain forward time.
2. Memory. The bytes of every accumulator's state after probing each of ``--sizes`` images (decode on):
   they are the same for every size (the state is fixed by T, D and the depth).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, torch_threads  # noqa: E402
from probe_overhead import build_model  # noqa: E402

import pe_probe  # noqa: E402
from pe_probe.probing import position as P  # noqa: E402
from pe_probe.probing import stream  # noqa: E402

#: The timed methods of each addition.
PARTS = {
    "decomposition": [(P.VarianceDecomposition, "update"), (P.VarianceDecomposition, "add_pe"),
                      (P.VarianceDecomposition, "flush")],
    "logit": [(P.LogitDecomposition, "update")],
    "decode_stream": [(P.PositionRidge, "update"), (P.PositionRidge, "begin"), (P.PositionSample, "update")],
    "decode_ablated": [(P.PositionProbe, "ablated")],
    "decode_fit": [(P.PositionRidge, "arrays"), (P.PositionSample, "arrays")],
}


def timed_probe(model, data, batch_size: int, decode: bool, stats_backend: str = "eager") -> dict[str, float]:
    """Seconds spent in each part of :data:`PARTS` during one probe call (nested calls counted once: the
    ablated pass's own ridge updates count as ``decode_ablated``)."""
    acc = {k: 0.0 for k in PARTS}
    depth = [0]
    originals = []

    def wrap(part, fn):
        def inner(*a, **k):
            outer = depth[0] == 0
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                depth[0] -= 1
                if outer:
                    acc[part] += time.perf_counter() - t0
        return inner

    try:
        for part, items in PARTS.items():
            for cls, name in items:
                fn = cls.__dict__[name]
                originals.append((cls, name, fn))
                setattr(cls, name, wrap(part, fn))
        pe_probe.probe(model, data, batch_size=batch_size, progress=False, decode=decode, stats_backend=stats_backend)
    finally:
        for cls, name, fn in originals:
            setattr(cls, name, fn)
    return acc


def state_bytes(model, data, batch_size: int) -> int:
    """The position state's bytes after one decode probe of ``data``."""
    seen = []

    class Recording(P.PositionProbe):
        def arrays(self):
            seen.append(self.state_nbytes())
            return super().arrays()

    orig = stream.PositionProbe
    stream.PositionProbe = Recording
    try:
        pe_probe.probe(model, data, batch_size=batch_size, progress=False, decode=True)
    finally:
        stream.PositionProbe = orig
    return seen[0]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pe_deit_tiny_patch16_224")
    ap.add_argument("--pe-mode", default="mpvg")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--no-decode", action="store_true", help="time the default (decompose, logit) only")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (for the test suite), not DeiT-Ti")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--stats-backend", default="eager", choices=["eager", "compile"],
                    help="how the probe's statistics run (compile: warm-up calls compile the kernels first)")
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict[str, float]:
    model = build_model(args.model, args.pe_mode, args.tiny)
    size = model.patch_embed.img_size
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(args.batches * args.batch_size, model.in_chans, *size, generator=gen)
    batches = list(data.split(args.batch_size))
    decode = not args.no_decode

    def plain() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                model(x)
        return time.perf_counter() - t0

    plain()
    forward = statistics.median(plain() for _ in range(3))
    import sklearn.linear_model  # noqa: F401  (imported once here, not inside the timed fit)

    for _ in range(2 if args.stats_backend == "compile" else 1):  # warm-up: first-call costs (and compiles)
        timed_probe(model, data, args.batch_size, decode, args.stats_backend)
    parts = timed_probe(model, data, args.batch_size, decode, args.stats_backend)
    what = "tiny model" if args.tiny else args.model
    print(f"# position cost, {what} pe_mode={args.pe_mode}, {len(data)} images in batches of {args.batch_size}, "
          f"stats_backend {args.stats_backend}")
    print(f"# {machine()}")
    print(f"plain forward passes: {forward * 1000:.1f} ms")
    shares = {}
    for part, t in parts.items():
        if not decode and part.startswith("decode"):
            continue
        shares[part] = t / forward
        print(f"{part:15s} {t * 1000:9.1f} ms  = {shares[part]:.3f} of the forward"
              + ("  (once per probe, not per image)" if part == "decode_fit" else ""))
    sizes = []
    for n in args.sizes:
        imgs = torch.randn(n, model.in_chans, *size, generator=gen)
        sizes.append(state_bytes(model, imgs, args.batch_size))
        print(f"state bytes after {n:6d} images: {sizes[-1]:,}")
    shares["state_flat"] = float(len(set(sizes)) == 1)
    print(f"# state flat as images grow: {'yes' if shares['state_flat'] else 'NO'}")
    return shares


if __name__ == "__main__":
    main()
