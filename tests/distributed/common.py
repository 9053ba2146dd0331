"""What the distributed tests share: a tiny model with a strong PE and a data set whose size does not divide
by 2, built the same way in every process; and how to launch torchrun with bounded time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]

#: 37 images, batch 8: 5 batches, 2 on rank 0 and 3 on rank 1 (the last one short).
N_IMAGES = 37


def model_and_data():
    """(model, images (37, 3, 16, 16), labels): a random 2-block MPVG model with its PEs scaled up."""
    from pe_probe import PEVisionTransformer

    torch.manual_seed(0)
    m = PEVisionTransformer("mpvg", img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5,
                            mlp_ratio=2.0)
    with torch.no_grad():
        m.pos_embed.mul_(50)
        for blk in m.blocks:
            blk.attn.qkv.weight.mul_(10)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(N_IMAGES, 3, 16, 16, generator=g)
    labels = torch.randint(0, 5, (N_IMAGES,), generator=g)
    return m.eval(), images, labels


def torchrun(*args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc ARGS`` on CPU (gloo), one thread per process, from the
    checkout (so ``tests`` and this ``pe_probe`` are importable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0 and GLOO_ABORT in proc.stderr and "Traceback" not in proc.stderr.split(GLOO_ABORT)[0]:
        # a rank aborted in C++ with no Python error before it (seen once in a full suite on the 2-core machine:
        # gloo's worker threads and interpreter teardown, pytorch/pytorch#179291): launched once more, and any
        # other failure, or the same one twice, fails the test
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return proc


#: What libstdc++ prints when a process ends with a joinable thread left (std::terminate, SIGABRT).
GLOO_ABORT = "terminate called without an active exception"


def zoo_models() -> dict:
    """Small random timm models whose families are not uniform (per-layer state entries): Hiera (pooling
    stages, a final norm) and PVT-v2 (stages, no PE)."""
    import timm

    torch.manual_seed(0)
    hiera = timm.create_model("hiera_tiny_224", pretrained=False, num_classes=5, img_size=(32, 32), embed_dim=16,
                              num_heads=1, stages=(1, 1, 1), q_pool=2, mask_unit_size=(4, 4),
                              mask_unit_attn=(True, False, False))
    torch.manual_seed(0)
    pvt = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=5, depths=(1, 1, 2, 1),
                            embed_dims=(16, 32, 32, 48), num_heads=(1, 1, 2, 2),
                            pretrained_cfg_overlay={"input_size": (3, 32, 32)})
    return {"hiera": hiera.eval(), "pvt_v2": pvt.eval()}


def zoo_images(n: int, model) -> torch.Tensor:
    """``n`` random images of the size ``model`` takes (16 px for the pe_probe model, else 32 px)."""
    px = 16 if type(model).__name__ == "PEVisionTransformer" else 32
    return torch.randn(n, 3, px, px, generator=torch.Generator().manual_seed(n))


#: Report arrays whose leading entries (along the first axis) are counts: identical under sharding, not only close.
COUNT_COLUMNS = {"cos_moments": 1, "corr_img": 1, "last_cos": 1, "pos_var": 2, "logit_total": 1}


def assert_report_equal(meta: dict, arrays: dict, one, what: str = "") -> None:
    """A report measured under a process group (``meta``, ``arrays``) equals the single-process report ``one``:
    the same metadata of the position analyses and the same arrays; counts identical, float64 sums to 1e-12
    relative. Arrays that are differences of sums are compared to 1e-12 of the sums they come from: ``pos_var``
    / ``pe_pos`` (``SS_resid = SS_total - SS_pos - SS_img``, 0 up to rounding where a stage has one token) to
    1e-12 of the array's largest entry, the ridge R^2 rows (``1 - SSE / SST``, near 0 for the controls) to 1e-12
    absolute. The logistic classifier's accuracies are fit on the very same sample: identical."""
    assert meta["n_images"] == one.meta["n_images"], what
    assert meta.get("n_norm_maps") == one.meta.get("n_norm_maps"), what
    assert meta["position"] == one.meta["position"], what  # options, pe_term, logits, skipped
    assert "not_combined" not in meta["position"], what
    assert set(arrays) == set(one.arrays), (what, sorted(set(arrays) ^ set(one.arrays)))
    for key, want in one.arrays.items():
        got, name = arrays[key], key.split("@")[0]
        assert got.shape == want.shape, (what, key)
        msg = f"{what} {key}"
        if name in COUNT_COLUMNS:
            assert np.array_equal(got[:COUNT_COLUMNS[name]], want[:COUNT_COLUMNS[name]]), msg
        if name == "logit_parts":
            assert np.array_equal(got[:, 0], want[:, 0]), msg  # per component: how many images had it
        if name.startswith("decode_acc"):
            assert np.array_equal(got, want), msg
            continue
        atol: float | np.ndarray = 0.0
        if name in ("pos_var", "pe_pos"):
            atol = 1e-12 * float(np.abs(want).max())
        elif name.startswith("decode_r2"):
            atol = np.array([[0.0], [1e-12], [1e-12]])  # alphas: relative; R^2 rows: absolute
        both_nan = np.isnan(got) & np.isnan(want)  # a logit component the model has not
        err = np.where(both_nan, 0.0, np.abs(got - want))
        bad = ~(err <= 1e-12 * np.abs(want) + atol)
        assert not bad.any(), f"{msg}: {bad.sum()} entries differ, worst {err[bad].max():.3g} at {want[bad].max():.3g}"
