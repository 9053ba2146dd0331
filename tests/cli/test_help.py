"""``pe-probe COMMAND --help`` answers without importing torch, timm or pandas (checked in a fresh interpreter):
the parser is built from the torch-free configuration modules only."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import pytest

from pe_probe.cli import SUBCOMMANDS

SCRIPT = r"""
import contextlib, io, json, sys, time
t0 = time.perf_counter()
from pe_probe.cli import build_parser, main
build_parser()
built = [m for m in ("torch", "timm", "torchvision", "pandas", "matplotlib") if m in sys.modules]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main([sys.argv[1], "--help"])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"built": built, "code": code, "help": out.getvalue(), "seconds": time.perf_counter() - t0,
                  "loaded": [m for m in ("torch", "timm", "torchvision", "pandas", "matplotlib") if m in sys.modules]}))
"""


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_imports_no_torch(command):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, command], capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["code"] == 0 and f"usage: pe-probe {command}" in res["help"]
    assert res["built"] == [] and res["loaded"] == [], res  # torch alone takes seconds to import
    assert wall < 30  # generous: the CI machine is shared; a quiet machine answers in about 0.2 s


def test_the_train_help_still_lists_every_generated_flag():
    from pe_probe.training import TrainConfig

    proc = subprocess.run([sys.executable, "-m", "pe_probe", "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}
    assert all(flag in proc.stdout for flag in flags)
