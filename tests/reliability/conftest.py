"""Fixtures of the reliability tests: a watchdog (a hang fails the run instead of blocking it), tiny trained
runs, and a process that holds a folder's lock."""

from __future__ import annotations

import faulthandler
import shutil
import subprocess
import sys

import pytest

import pe_probe

from ..training.common import TINY_RUN
from .common import env, make_folder

#: Seconds after which a test that hangs (a FIFO opened, a link loop followed) kills the test process.
WATCHDOG_S = 300


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def digits_run_master(tmp_path_factory):
    """A complete tiny digits run (never modified: copy it with ``digits_run``)."""
    return pe_probe.train(out=tmp_path_factory.mktemp("master") / "run", **TINY_RUN)


@pytest.fixture
def digits_run(digits_run_master, tmp_path):
    """A fresh copy of the tiny digits run, in this test's folder."""
    return shutil.copytree(digits_run_master, tmp_path / "run")


#: A tiny image-folder model (8-px colour images in 4-px patches).
FOLDER_KW = ["img_size=8", "patch_size=4", "embed_dim=32", "depth=2", "num_heads=2", "mlp_ratio=2.0"]


def folder_train_args(data, out, *extra: str) -> list[str]:
    """``pe-probe train`` flags of a one-epoch run on an image folder (no augmentation: a few seconds)."""
    return ["train", "--out", str(out), "--dataset", "imagefolder", "--data-dir", str(data), "--recipe",
            "vit_lite_cifar", "--epochs", "1", "--batch-size", "8", "--num-threads", "1", "--no-augment",
            "--mixup", "0", "--cutmix", "0", "--no-progress", "--quiet", "--model-kwargs", *FOLDER_KW, *extra]


@pytest.fixture(scope="session")
def folder_master(tmp_path_factory):
    """``(clean image folder, a complete run trained on it)``; never modified."""
    from pe_probe.cli import main

    root = tmp_path_factory.mktemp("folder")
    data = make_folder(root / "data")
    assert main(folder_train_args(data, root / "run")) == 0
    return data, root / "run"


HOLD = ("import sys\nfrom pe_probe.core.locks import folder_lock\n"
        "with folder_lock(sys.argv[1], 'the test holder'):\n    print('held', flush=True)\n    sys.stdin.read()\n")


@pytest.fixture
def holder():
    """``hold(folder)``: start a process that holds ``folder``'s lock until the test ends; returns the process."""
    procs = []

    def hold(folder):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env())
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=30)
