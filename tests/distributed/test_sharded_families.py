"""``pe_probe.probe`` under a 2-process gloo group equals one process for families whose state is kept per layer
(Hiera, PVT-v2: token count and width change along the depth) and when a rank reads no image at all (5 images,
batch 8: rank 1's shard is empty): the ranks agree on the state entries before reducing them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import pe_probe

from .common import model_and_data, torchrun, zoo_images, zoo_models


@pytest.mark.slow
def test_probe_of_per_layer_state_families_and_empty_shards_equals_one_process(tmp_path):
    out = tmp_path / "res.pkl"
    proc = torchrun("tests/distributed/worker_families.py", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, "rb") as f:
        res = pickle.load(f)
    models = {**zoo_models(), "mpvg": model_and_data()[0]}
    assert set(res) == {(name, n) for name in models for n in (5, 20)}
    torch.set_num_threads(1)  # as the torchrun workers (OMP_NUM_THREADS=1): float32 partial sums round alike
    for (name, n), (meta, arrays) in res.items():
        one = pe_probe.probe(models[name], zoo_images(n, models[name]), batch_size=8, n_norm_maps=12, progress=False,
                             decompose=False)  # left out under a process group
        assert meta["n_images"] == one.meta["n_images"] == n, name
        assert meta["n_norm_maps"] == one.meta["n_norm_maps"], name
        assert set(arrays) == set(one.arrays), name
        for key, want in one.arrays.items():
            assert arrays[key].shape == want.shape, (name, n, key)
            np.testing.assert_allclose(arrays[key], want, rtol=1e-12, atol=0, err_msg=f"{name} {n} {key}")
