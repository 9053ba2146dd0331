"""Shared fixtures: fixed seeds, closed figures, tiny models."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per xdist worker (the README's command runs two workers on the 2-core CI machine): two
    # workers with a thread per core each oversubscribe the cores, and OpenMP's spinning threads then made
    # tests/probing 2-3x slower. Set before torch is imported, so its subprocesses and this process agree.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("OMP_NUM_THREADS") == "1":
    torch.set_num_threads(1)

import pe_probe.models  # noqa: F401  (registers the pe_* variants with timm)

#: The shared data folder: ``shared/data`` beside the checkout (CI has it there), or $PE_PROBE_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("PE_PROBE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5, mlp_ratio=2.0)


@pytest.fixture(autouse=True)
def _seed_and_close():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    try:
        import matplotlib.pyplot as plt

        plt.close("all")
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def tiny_kwargs() -> dict:
    """Architecture kwargs of a tiny model (16 px, 4x4 patches -> 16 tokens, 4 blocks, 32 dims)."""
    return dict(TINY)


@pytest.fixture
def cifar10_mini() -> Path:
    """The 5,000-image CIFAR-10 folder (train/ + val/ of class folders) of the shared data, or a skip that
    says where it was looked for. Never downloaded."""
    path = SHARED_DATA / "cifar10-mini"
    if not path.is_dir():
        pytest.skip(f"cifar10-mini is absent: no folder {path} (set PE_PROBE_SHARED_DATA to the shared data folder)")
    return path
