"""Cost of probing during training (``--probe-every``) at the quick preset's settings.

Usage: python benchmarks/probe_history_cost.py [--repeats 3] [--epochs 24] [--probe-every 4] [--probe-images 128]
                                               [--threads 1]
                                               [--model-kwargs KEY=VALUE ...]

Trains the quick preset's layer-wise run (digits recipe, PVG) with and without a probe history, alternating the
two in one process (rotated order, ``_common.interleaved``), and prints (1) the wall-clock ratio of the two
``pe_probe.train`` calls, median of the per-round ratios with quartiles, and (2) the in-run share: the time the
epoch callbacks took (``callback_time_s`` in metrics.jsonl) over the whole call's time, which shared-machine
noise moves much less. The goal is a cost of at most 5% of training time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, median, paired, torch_threads  # noqa: E402

import pe_probe  # noqa: E402
from pe_probe.cli._args import parse_kv  # noqa: E402
from pe_probe.pipeline.run import QUICK_DIGITS_EPOCHS  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=QUICK_DIGITS_EPOCHS,
                    help="default: the quick preset's epochs on digits")
    ap.add_argument("--probe-every", type=int, default=4)
    ap.add_argument("--probe-images", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (reproduce's workers use 1 each)")
    ap.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override the digits recipe's model (for the test suite's tiny run)")
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="pe_probe_history_"))
    shares: list[float] = []
    count = {"n": 0}

    def run(probe: bool):
        def go():
            count["n"] += 1
            out = root / f"r{count['n']}"
            t0 = time.perf_counter()
            pe_probe.train(out=out, pe_mode="pvg", epochs=args.epochs, model_kwargs=parse_kv(args.model_kwargs),
                           probe_every=args.probe_every if probe else 0, probe_images=args.probe_images,
                           progress=False, verbose=False)
            wall = time.perf_counter() - t0
            if probe:
                records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                shares.append(sum(r.get("callback_time_s", 0.0) for r in records) / wall)
            shutil.rmtree(out)
        return go

    try:
        times = interleaved({"plain": run(False), "probe_history": run(True)}, repeats=args.repeats, warmup=0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med, lo, hi = paired(times, "probe_history", "plain")
    print(f"# {machine()}")
    print(f"# pvg on digits, {args.epochs} epochs, {args.threads} torch thread(s), probe every {args.probe_every} epochs on {args.probe_images} images,"
          f" {args.repeats} rounds")
    print(f"train time: plain {median(times['plain']):.2f} s, with probe history {median(times['probe_history']):.2f} s")
    print(f"wall-clock ratio with/without (per round): median {med:.3f} [quartiles {lo:.3f}, {hi:.3f}]")
    print(f"in-run share of the probing: median {median(shares):.2%} of the train call (goal <= 5%)")
    return {"ratio": med, "share": median(shares)}


if __name__ == "__main__":
    main()
