"""probe / ablate / attribute under a 2-process gloo group equal the single-process results: counts identical,
float64 sums to 1e-12 relative, maps of the first images identical; a failing rank ends every rank."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

import pe_probe
from pe_probe.probing.distributed import batch_shard

from .common import N_IMAGES, assert_report_equal, model_and_data, torchrun


def test_batch_shards_cover_every_image_once_in_whole_batches():
    for n in (0, 1, 7, 37, 64, 65):
        for world in (1, 2, 3, 8):
            parts = [batch_shard(n, 8, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))  # each image once, in order, no padding
            assert all(p.start % 8 == 0 for p in parts if len(p))  # whole batches: as one process reads them
            sizes = [-(-len(p) // 8) for p in parts]
            assert max(sizes) - min(sizes) <= 1


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "res.pkl"
    proc = torchrun("tests/distributed/worker_measure.py", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, "rb") as f:
        res = pickle.load(f)
    res["errors"] = [(out.parent / f"res.pkl.rank{r}").read_text() for r in range(2)]
    return res


@pytest.mark.slow
def test_probe_under_a_process_group_equals_one_process(sharded):
    model, images, _ = model_and_data()
    one = pe_probe.probe(model, images, batch_size=8, n_norm_maps=20, progress=False)  # position analyses on
    meta, arrays = sharded["probe"]
    assert sharded["world"] == 2 and meta["n_images"] == one.meta["n_images"] == N_IMAGES
    assert meta["n_norm_maps"] == 20 and set(arrays) == set(one.arrays)
    for key, want in one.arrays.items():
        got = arrays[key]
        assert got.shape == want.shape, key
    assert_report_equal(meta, arrays, one, "probe")  # counts identical, sums to 1e-12
    # the maps of the first 20 images: 16 from rank 0, 4 from rank 1, bit for bit
    assert np.array_equal(arrays["norm_before"], one.arrays["norm_before"])


@pytest.mark.slow
def test_ablate_and_attribute_under_a_process_group_equal_one_process(sharded):
    model, images, labels = model_and_data()
    ds = TensorDataset(images, labels)
    abl = pe_probe.ablate(model, ds, batch_size=8, max_images=35, progress=False)
    got = sharded["ablate"]
    assert got.meta["n_images"] == abl.meta["n_images"] == 35
    assert got.meta["intact_top1"] == abl.meta["intact_top1"]
    assert got.meta["cost"] == abl.meta["cost"]  # block calls summed over the ranks
    got, abl = got.frame(), abl.frame()
    pd.testing.assert_frame_equal(got.drop(columns="value"), abl.drop(columns="value"))
    np.testing.assert_allclose(got.value, abl.value, rtol=1e-12, atol=0)
    att = pe_probe.attribute(model, ds, "label", batch_size=8, n_steps=4, max_images=30, n_maps=20, progress=False,
                      warn_rel_delta=10.0)
    frame, pe_maps, tok_maps = sharded["attribute"]
    one = att.frame()
    pd.testing.assert_frame_equal(frame.drop(columns="value"), one.drop(columns="value"))
    np.testing.assert_allclose(frame.value, one.value, rtol=1e-12, atol=1e-15)
    assert set(pe_maps) == set(att.pe_maps) and set(tok_maps) == set(att.tok_maps)
    for hook in att.pe_maps:
        assert pe_maps[hook].shape == (20, 4, 4) and np.array_equal(pe_maps[hook], att.pe_maps[hook])


@pytest.mark.slow
def test_state_reduce_sums_and_takes_min_max_columns(sharded):
    a, b = sharded["state_in_all"]
    out = sharded["state_out"]
    assert torch.equal(out["x_sum"], a["x_sum"] + b["x_sum"])
    ma, mb = a["corr_mom"].numpy(), b["corr_mom"].numpy()
    want = np.concatenate([ma[:, :3] + mb[:, :3], np.minimum(ma[:, 3:4], mb[:, 3:4]),
                           np.maximum(ma[:, 4:5], mb[:, 4:5])], axis=1)
    np.testing.assert_array_equal(out["corr_mom"].numpy(), want)


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_with_its_one_line(sharded):
    zero, one = sharded["errors"]
    assert one.startswith("DataError|image 3") and one.endswith("|True"), one  # rank 1's own error
    name, msg, reported = zero.split("|")
    assert name == "PeerFailedError" and reported == "True"
    assert msg.startswith("rank 1 of 2 failed in probe: DataError: image 3") and "\n" not in msg
