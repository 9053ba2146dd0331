"""Shared helpers for the benchmark scripts: interleaved timing, machine description, ``--model-kwargs``."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from typing import Callable, Iterator

import torch


def comma_kwargs(text: str) -> dict:
    """``"embed_dim=64,depth=4"`` -> model kwargs, values read as the CLI reads them (JSON when possible)."""
    from pe_probe.cli._args import parse_kv

    return parse_kv([item for item in text.split(",") if item], "--model-kwargs")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch CPU threads (None or 0: torch's own choice), restoring the count after, so a
    benchmark called in-process (the test suite) leaves the caller's setting as it was."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine() -> str:
    """One line naming the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    malloc = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {dev}"
            + (f", {malloc}" if malloc else ""))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, alternating between them so drift hits all equally.

    The order rotates every repeat, so no contender always runs first (or right after the same neighbour).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(repeats):
        k = r % len(items)
        for name, fn in items[k:] + items[:k]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    """Median of a list of timings."""
    return statistics.median(xs)


def paired(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float, float]:
    """Ratios ``times[num][i] / times[den][i]`` of the same rounds: (median, lower quartile, upper quartile).

    Within one round of :func:`interleaved` the contenders run back to back, so a round's ratio is not
    moved by the machine's slow drift (other tenants, frequency); its spread over rounds shows the noise.
    """
    r = sorted(a / b for a, b in zip(times[num], times[den]))
    if len(r) < 2:
        return (r[0],) * 3
    q = statistics.quantiles(r, n=4, method="inclusive")
    return statistics.median(r), q[0], q[2]
