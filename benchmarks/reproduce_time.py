"""Wall time of ``pe-probe reproduce`` (quick preset by default) on this machine.

Usage: python benchmarks/reproduce_time.py [--out DIR] [--keep] [--dry-run] [-- EXTRA pe-probe reproduce ARGS]

Runs ``python -m pe_probe reproduce --out DIR --no-progress EXTRA...`` once in a fresh process (into a new
temporary directory unless ``--out`` is given; a directory with complete runs would be reused, not
retrained, so ``--out`` must not hold runs) and prints its wall time and its own summary line.
``--dry-run`` only checks that the command line parses (for the test suite).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def command(out: str, extra: list[str]) -> list[str]:
    """The ``pe-probe reproduce`` command line that is timed."""
    return [sys.executable, "-m", "pe_probe", "reproduce", "--out", out, "--no-progress", *extra]


def main(argv: list[str] | None = None) -> float | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="output directory (default: a new temporary one, deleted afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary output directory")
    ap.add_argument("--dry-run", action="store_true", help="only check that the command line parses")
    ap.add_argument("extra", nargs="*", help="extra arguments for pe-probe reproduce (after --)")
    args = ap.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="pe_probe_reproduce_")
    cmd = command(out, args.extra)
    if args.dry_run:
        from pe_probe.cli import build_parser

        build_parser().parse_args(cmd[3:])
        print("# would run:", " ".join(cmd))
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
        return None
    if (Path(out) / "runs").exists():
        sys.exit(f"{out}/runs exists: complete runs would be reused, not timed; pass a new --out")
    print("# running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    print(f"# {machine()}")
    print(f"pe-probe reproduce {' '.join(args.extra) or '(quick preset)'}: exit code {proc.returncode}, "
          f"wall time {wall:.1f} s ({wall / 60:.1f} min)")
    print(f"# its summary: {tail}")
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    if not args.out and not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    elif not args.out:
        print(f"# output kept in {out}")
    return wall


if __name__ == "__main__":
    main()
