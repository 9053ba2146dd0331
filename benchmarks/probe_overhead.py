"""Probe throughput vs a plain forward pass, vs caching every activation with forward hooks, vs torchlens.

Usage: python benchmarks/probe_overhead.py [--model pe_deit_tiny_patch16_224] [--pe-mode mpvg] [--batch-size 32]
                                           [--batches 2] [--repeats 5] [--torchlens-repeats 2] [--no-torchlens]
                                           [--threads N] [--tiny] [--device cpu|cuda] [--dtype float32|bfloat16]
                                           [--strategy auto|layer|stacked] [--stats-backend eager|compile]
                                           [--no-ops]

Every contender processes the same ``--batches`` x ``--batch-size`` images, in eval mode under
``torch.inference_mode()``, timed interleaved in one process (medians of ``--repeats`` rounds):

- ``plain``: ``model(x)`` for every batch, nothing else;
- ``pe_probe``: ``pe_probe.probe(model, images, batch_size=...)``, the public call with every hook point
  and every streaming statistic on, report building included;
- ``hook_cache``: the usual alternative: ``register_forward_hook`` on every hook point, each output
  appended to a per-name list over the data set (caching only; computing statistics afterwards would
  cost more on top);
- ``plain (A/A)``: ``plain`` again, as a control: its ratio to ``plain`` shows the timing noise of the
  machine (ideally 1.000);
- ``torchlens``: ``torchlens.trace(model, x)`` per batch (saves every operation's output), traces kept,
  timed in its own interleaved round against ``plain`` (it is much slower) when torchlens is installed
  (``pip install torchlens`` or the ``bench`` extra).

Printed ratios are throughputs relative to ``plain`` (plain median / contender median; 1.0 = free), and
the median of the per-round ratios with their interquartile range (a round runs every contender back to
back, so its ratio is not moved by the machine's drift). Goal (issue 6): ``pe_probe`` >= 0.95.

Last, one extra probe call is timed from the inside (``attribution``): the time spent in the statistics
(the in-hook reductions and the per-batch float64 step) as a share of the forward pass time of the same
run. That share is what the probe adds by its own work, free of the machine's run-to-run noise; the
interleaved ratios add the indirect costs (caches, allocator).

Op counts (issue 21; ``--no-ops`` skips them): the aten ops dispatched per batch by the forward pass and by the
probe's statistics (the proxy for kernel launches on a GPU), counted with a ``TorchDispatchMode`` as (a call on
3 batches - a call on 1 batch) / 2, for each statistics strategy (``layer``: per-layer reductions in the hooks,
the CPU default; ``stacked``: all layers together after the forward, a fixed number of ops, the default on
other devices). Batches of 2 images (the count does not depend on the batch size).

``--stats-backend compile`` (issue 21) runs the probe's compiled kernels (each layer's float32 passes and the float64
step; ``torch.compile``): two untimed warm-up probe calls compile them first, one as the attribution runs (position
analyses off) and one as the timed call (on), so that every shape is compiled; their time, compile included, is
printed on its own line, and the attribution subtracts any compile time from the statistics, so the per-batch cost
is free of it.

``--device cuda`` moves model and images to the GPU and synchronises before every clock read (the timed
contenders and the attribution timers); ``--dtype bfloat16`` (the default on CUDA) runs every contender under
``torch.autocast`` with bf16. Not run here (no GPU was lent to issue 21): the CUDA path is written to be correct,
not measured. Typical: ``--device cuda --batch-size 256 --no-torchlens`` with ``--model pe_deit_tiny_patch16_224``
and ``pe_deit_base_patch16_224``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Iterable

import timm
import torch
import torch.utils._python_dispatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, median, paired, torch_threads  # noqa: E402

import pe_probe  # noqa: E402
import pe_probe.models  # noqa: E402,F401  (registers the pe_* variants with timm)
from pe_probe.core.vocab import STATS_BACKENDS  # noqa: E402

#: A model small enough for the test suite (``--tiny``): seconds, not minutes.
TINY_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)


def build_model(name: str, pe_mode: str, tiny: bool) -> torch.nn.Module:
    """The benchmarked model, seeded, in eval mode: a pe_* model with ``pe_mode``, or any other timm model
    (``--model vit_small_patch16_rope_224``, ``beit_base_patch16_224``, ...: random weights, its own PE family)."""
    torch.manual_seed(0)
    kwargs = {"pe_mode": pe_mode} if name.startswith("pe_") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MPVG with a class token warns; not the case by default
        return timm.create_model(name, pretrained=False, **kwargs, **(TINY_KWARGS if tiny else {})).eval()


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
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda: synchronised timing)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="autocast dtype for every contender (default: bfloat16 on cuda, float32 on cpu)")
    ap.add_argument("--strategy", default="auto", choices=["auto", "layer", "stacked"],
                    help="the probe's statistics strategy (RunningStats)")
    ap.add_argument("--stats-backend", default="eager", choices=list(STATS_BACKENDS),
                    help="how the probe's statistics run (RunningStats stats_backend)")
    ap.add_argument("--no-ops", action="store_true", help="skip the aten op counts")
    args = ap.parse_args(argv)
    args.device = torch.device(args.device)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.type == "cuda" else "float32"
    with torch_threads(args.threads):
        return _measure(args)


def autocast(device: torch.device, dtype: str):
    """``torch.autocast`` for ``dtype`` on ``device`` (a no-op context for float32)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def synced(fn, device: torch.device):
    """``fn`` followed by a device synchronisation (CUDA work is asynchronous), so a clock around it is true."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return run


class _OpCount(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops dispatched (each one a kernel launch or less on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def op_counts(model: torch.nn.Module, data: torch.Tensor, strategy: str, dtype: str = "float32",
              batch: int = 2) -> dict[str, float]:
    """Aten ops per batch: ``forward`` (``model(x)``) and ``stats`` (a probe call's ops minus the forward's), as
    (1 + 2K batches - 1 batch) / 2K so that once-per-call work (hooks, report) drops out and the float64 step,
    which runs once per ring of K batches (``RunningStats.flush``), is counted at its amortised share."""
    from pe_probe.probing.accumulate import RING_IMAGES
    k = min(16, max(1, RING_IMAGES // batch))  # batches per ring (Partials.slots)
    n = 1 + 2 * k
    if len(data) < n * batch:
        data = data.repeat((n * batch + len(data) - 1) // len(data), 1, 1, 1)
    x = data[:n * batch]
    dev = x.device

    def count(fn) -> int:
        c = _OpCount()
        with autocast(dev, dtype), c:
            fn()
        return c.n

    with torch.inference_mode():
        fwd = (count(lambda: [model(b) for b in x.split(batch)]) - count(lambda: model(x[:batch]))) / (n - 1)
    run = lambda i: pe_probe.probe(model, x[:i * batch], batch_size=batch, progress=False,  # noqa: E731
                                   strategy=strategy, decompose=False)  # issue 21's statistics only
    probe_ops = (count(lambda: run(n)) - count(lambda: run(1))) / (n - 1)
    return {"forward": fwd, "stats": probe_ops - fwd}


def _measure(args: argparse.Namespace) -> dict[str, float]:
    dev = args.device
    model = build_model(args.model, args.pe_mode, args.tiny).to(dev)
    size = model.patch_embed.img_size
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(args.batches * args.batch_size, model.in_chans, *size, generator=gen).to(dev)
    batches = list(data.split(args.batch_size))
    names = [n for n in pe_probe.hook_names(model) if n in dict(model.named_modules())]
    amp = lambda: autocast(dev, args.dtype)  # noqa: E731

    def plain():
        with torch.inference_mode(), amp():
            for x in batches:
                model(x)

    def probe():
        with amp():
            return pe_probe.probe(model, data, batch_size=args.batch_size, progress=False, strategy=args.strategy,
                                  stats_backend=args.stats_backend)

    compile_s = None
    if args.stats_backend == "compile":  # compile every kernel before any timing (once per shape)
        with amp():
            compile_s = attribution(model, data, args.batch_size, strategy=args.strategy,
                                    stats_backend="compile")["compile"]
            t0 = time.perf_counter()
            probe()  # as timed: position analyses on (the attribution runs without them)
            compile_s += time.perf_counter() - t0

    def cache():
        with amp():
            return hook_cache(model, batches, names)

    fns = {"plain": plain, "pe_probe": probe, "hook_cache": cache, "plain (A/A)": plain}
    fns = {k: synced(f, dev) for k, f in fns.items()}
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
                with torch.inference_mode(), amp():
                    return [torchlens.trace(model, x, capture=CaptureOptions(unwrap_when_done=True)) for x in batches]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tl_times = interleaved({"plain": fns["plain"], "torchlens": synced(tl, dev)},
                                       repeats=args.torchlens_repeats)

    n_img = len(data)
    what = "tiny model" if args.tiny else args.model
    print(f"# probe overhead, {what} pe_mode={args.pe_mode}, {n_img} images in batches of {args.batch_size}, "
          f"{args.repeats} interleaved repeats, inference mode, {dev}, {args.dtype}, strategy {args.strategy}, "
          f"stats_backend {args.stats_backend}")
    if compile_s is not None:
        print(f"# torch.compile of the statistics' kernels (warm-up calls, untimed): {compile_s:.2f} s")
    print(f"# {machine()}")
    print(f"# {len(names)} hook points; pe_probe {pe_probe.__version__}, torch {torch.__version__}")
    base = median(times["plain"])
    ratios: dict[str, float] = {}
    for name in fns:
        t = median(times[name])
        ratios[name] = base / t
        med, lo, hi = paired(times, "plain", name)
        print(f"{name:12s} median {t * 1000:9.1f} ms  {n_img / t:7.1f} img/s  throughput vs plain: {base / t:.3f}"
              f"  per round: {med:.3f} [{lo:.3f}, {hi:.3f}]")
    if tl_times is not None:
        b2, t = median(tl_times["plain"]), median(tl_times["torchlens"])
        ratios["torchlens"] = b2 / t
        print(f"{'torchlens':12s} median {t * 1000:9.1f} ms  {n_img / t:7.1f} img/s  throughput vs plain: {b2 / t:.3f}"
              f"  (own round of {args.torchlens_repeats}, plain median there {b2 * 1000:.1f} ms)")
    with amp():
        share = attribution(model, data, args.batch_size, strategy=args.strategy, stats_backend=args.stats_backend)
    ratios["stats_share"] = share["stats"] / share["forward"]
    print(f"# attribution (one probe call timed inside): forward passes {share['forward'] * 1000:.1f} ms, "
          f"statistics {share['stats'] * 1000:.1f} ms = {ratios['stats_share']:.3f} of the forward "
          f"(in-hook reductions {share['in_hook'] * 1000:.1f} ms, batch steps {share['batch_step'] * 1000:.1f} ms); "
          f"throughput bound from the probe's own work: {1 / (1 + ratios['stats_share']):.3f}")
    if not args.no_ops:
        for strategy in ("layer", "stacked"):
            ops = op_counts(model, data, strategy, args.dtype)
            ratios[f"ops_forward"], ratios[f"ops_{strategy}"] = ops["forward"], ops["stats"]
            print(f"# aten ops per batch ({strategy} strategy): forward {ops['forward']:.0f}, statistics "
                  f"{ops['stats']:.0f} = {ops['stats'] / ops['forward']:.1%} of the forward's (goal <= 25%)")
    goal = "met" if ratios["pe_probe"] >= 0.95 else "MISSED"
    print(f"# goal pe_probe >= 0.95 of plain: {goal} ({ratios['pe_probe']:.3f}); "
          f"pe_probe vs hook_cache: {ratios['pe_probe'] / ratios['hook_cache']:.2f}x")
    return ratios


def attribution(model: torch.nn.Module, data: torch.Tensor, batch_size: int, strategy: str = "auto",
                stats_backend: str = "eager") -> dict[str, float]:
    """One ``pe_probe.probe`` call with timers around the model's forward and the statistics' methods.

    Returns seconds: ``forward`` (the forward passes, hooks and in-hook reductions included), ``in_hook``
    (:meth:`RunningStats._layer` calls made from the hooks), ``batch_step`` (:meth:`RunningStats.update`)
    and ``stats`` (their sum). The timers are removed afterwards. On CUDA every timer synchronises first.
    The stacked strategy reduces everything in :meth:`RunningStats.update` (``in_hook`` is then 0).
    ``compile``: seconds the float64 step spent compiling (``stats_backend="compile"``, first call of each ring
    shape), taken out of ``batch_step``.
    """
    from pe_probe.probing.accumulate import RunningStats

    cuda = data.device.type == "cuda"

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(data.device)
        return time.perf_counter()

    acc = {"forward": 0.0, "in_hook": 0.0, "batch_step": 0.0}
    seen: list = []  # the call's RunningStats (its compile_seconds)
    in_update = [False]
    orig_layer, orig_update, orig_forward = RunningStats._layer, RunningStats.update, model.forward
    orig_flush = RunningStats.flush
    own_forward = model.__dict__.get("forward")  # an instance-level forward to put back, if the model had one

    def outside_update(orig, key: str):
        """``orig`` timed into ``acc[key]``, except while :meth:`RunningStats.update` runs (its own timer has it)."""
        def timed(self, *a, **k):
            t0 = clock()
            try:
                return orig(self, *a, **k)
            finally:
                if not in_update[0]:
                    acc[key] += clock() - t0
        return timed

    layer = outside_update(orig_layer, "in_hook")  # the per-layer reductions made from the hooks
    # the float64 step of the last ring runs when the report reads the state
    flush = outside_update(orig_flush, "batch_step")

    def update(self, *a, **k):
        if not seen:
            seen.append(self)
        t0, in_update[0] = clock(), True
        try:
            return orig_update(self, *a, **k)
        finally:
            in_update[0] = False
            acc["batch_step"] += clock() - t0

    def forward(*a, **k):
        t0 = clock()
        try:
            return orig_forward(*a, **k)
        finally:
            acc["forward"] += clock() - t0

    RunningStats._layer, RunningStats.update, RunningStats.flush, model.forward = layer, update, flush, forward
    try:
        pe_probe.probe(model, data, batch_size=batch_size, progress=False, strategy=strategy,
                       stats_backend=stats_backend, decompose=False)  # issue 21: the statistics alone
    finally:
        RunningStats._layer, RunningStats.update, RunningStats.flush = orig_layer, orig_update, orig_flush
        if own_forward is None:
            del model.forward  # back to the class's method
        else:
            model.forward = own_forward
    # the forward timer includes the in-hook reductions; report the forward without them as the base
    acc["forward"] -= acc["in_hook"]
    acc["compile"] = seen[0].compile_seconds if seen else 0.0
    acc["batch_step"] -= acc["compile"]
    acc["stats"] = acc["in_hook"] + acc["batch_step"]
    return acc


if __name__ == "__main__":
    main()
