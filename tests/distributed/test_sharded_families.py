"""``pe_probe.probe`` under a 2-process gloo group equals one process, position analyses included (``decompose``
and ``decode``), for families whose state is kept per layer (Hiera, PVT-v2: token count and width change along
the depth; PVT-v2 decodes on its stage grids, Hiera says why not) and when a rank reads no image at all (5
images, batch 8: rank 1's shard is empty): the ranks agree on the state entries before reducing them."""

from __future__ import annotations

import pickle

import pytest
import torch

import pe_probe

from .common import assert_report_equal, model_and_data, torchrun, zoo_images, zoo_models
from .worker_families import OPTIONS


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
        one = pe_probe.probe(models[name], zoo_images(n, models[name]), **OPTIONS)
        assert meta["n_images"] == n, name
        assert any(k.startswith("pos_var@") for k in one.arrays), name  # the position analyses ran
        assert_report_equal(meta, arrays, one, f"{name} {n}")
    # what the comparison covers: decoding on a stage grid (PVT-v2), the logit share (the PE model)
    assert any(k.startswith("decode_acc@") for k in res[("pvt_v2", 20)][1])
    assert "logit_parts" in res[("mpvg", 20)][1] and res[("mpvg", 20)][0]["position"]["logits"]
