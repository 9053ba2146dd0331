"""Position at the input: patch shuffles and resolution sweeps, checked against hand computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

import pe_probe
from pe_probe import PEVisionTransformer
from pe_probe.probing.perturb import at_resolution, patch_shuffle, probe_at_sizes, shuffle_blocks, shuffle_patches

from ..conftest import TINY

torch.set_num_threads(1)


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- patch shuffles
def test_shuffle_patches_permutes_within_blocks_only():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(shuffle_patches(x, 2, 1, gen), x)
    y = shuffle_patches(x, 2, 2, gen)  # 4x4 grid of 2-px patches, 2x2 blocks of patches
    assert not torch.equal(y, x)
    patches = lambda t: t.reshape(2, 1, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 4, 4, -1)  # noqa: E731
    px, py = patches(x), patches(y)
    for b in range(2):
        for bi, bj in itertools.product(range(2), range(2)):
            group = lambda p: sorted(tuple(p[b, 2 * bi + i, 2 * bj + j].tolist()) for i in range(2) for j in range(2))  # noqa: E731
            assert group(px) == group(py)  # the same patches, each kept whole, inside the same block
    with pytest.raises(ValueError, match="cannot be cut"):
        shuffle_patches(x, 2, 3, gen)
    assert shuffle_blocks((4, 4)) == [1, 2, 4]
    assert shuffle_blocks((6, 6)) == [1, 2, 6]


def test_patch_shuffle_known_answers():
    # no PE, average pooling: the model is permutation-equivariant, so shuffled patches give the same prediction
    torch.manual_seed(0)
    m = PEVisionTransformer("default", **{**TINY, "global_pool": "avg"}).eval()
    with torch.no_grad():
        m.pos_embed.zero_()
    data = torch.utils.data.TensorDataset(images(8), torch.arange(8) % 5)
    res = patch_shuffle(m, data, progress=False)
    rows, meta = res.rows, res.meta
    got = {(b, k): v for b, k, v in rows}
    assert meta["blocks"] == [1, 2, 4]
    for b in meta["blocks"]:
        assert got[(b, "agree")] == 1.0
    assert got[(1, "top1")] == got[(4, "top1")]
    # a model that sees position: the whole-grid shuffle changes predictions, block 1 never does
    torch.manual_seed(0)
    s = PEVisionTransformer("default", **{**TINY, "global_pool": "avg"}).eval()
    with torch.no_grad():  # a unit PE and selective attention: predictions vary and depend on where patches are
        s.pos_embed.normal_(0, 1.0)
        for blk in s.blocks:
            blk.attn.qkv.weight.mul_(8)
        s.head.weight.mul_(20)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
                                          torch.arange(32) % 5)
    rows = patch_shuffle(s, data, progress=False, seed=3).rows
    got = {(b, k): v for b, k, v in rows}
    assert got[(1, "agree")] == 1.0 and got[(4, "agree")] < 1.0
    rows2 = patch_shuffle(s, data, progress=False, seed=3).rows
    assert rows2 == rows  # seeded


# ---------------------------------------------------------------------- resolution sweeps
def test_native_size_reproduces_the_plain_probe_exactly():
    torch.manual_seed(0)
    m = PEVisionTransformer("mpvg", **TINY).eval()
    x = images(10)
    plain = pe_probe.probe(m, x, batch_size=4, progress=False)
    out = probe_at_sizes(m, x, [16], batch_size=4, progress=False)
    report, info = out[16]
    assert info["pe_resampled"] is None and info["grid"] == [4, 4]
    assert report.meta["resolution"] == info
    assert set(report.arrays) == set(plain.arrays)
    for k in plain.arrays:
        np.testing.assert_array_equal(report.arrays[k], plain.arrays[k], err_msg=k)


def test_other_sizes_resample_the_absolute_pe_with_timm():
    torch.manual_seed(0)
    m = PEVisionTransformer("pvg", **{**TINY, "global_pool": "token"}).eval()
    big, info = at_resolution(m, 32)
    assert big is not m and m.patch_embed.img_size == (16, 16)  # the model itself is untouched
    assert info == {"img_size": [32, 32], "grid": [8, 8], "pe_resampled": [17, 65]}
    want = resample_abs_pos_embed(m.pos_embed, new_size=(8, 8), old_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(big.pos_embed, want, atol=0, rtol=0)
    out = probe_at_sizes(m, torch.utils.data.TensorDataset(images(8), torch.arange(8) % 5), [16, 32],
                           batch_size=4, progress=False)
    rep32, info32 = out[32]
    assert rep32.meta["grid"] == [8, 8] and rep32.arrays["tok_map@0"].shape == (65, TINY["embed_dim"])
    assert 0.0 <= info32["top1"] <= 1.0 and "top1" in out[16][1]
    # the top-1 at 32 px by hand: the resampled copy on bilinearly resized images
    x32 = torch.nn.functional.interpolate(images(8), size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        hand = float((big(x32).argmax(-1) == torch.arange(8) % 5).float().mean())
    assert info32["top1"] == pytest.approx(hand)


def test_sincos_pe_is_rebuilt_for_the_new_grid():
    m = PEVisionTransformer("default", pe_type="sincos", **TINY).eval()
    big, info = at_resolution(m, 24)
    table = build_sincos2d_pos_embed([6, 6], dim=TINY["embed_dim"])
    torch.testing.assert_close(big.pos_embed[0, 1:], table.to(big.pos_embed.dtype))
    assert info["grid"] == [6, 6]


def test_bad_sizes_are_refused():
    m = PEVisionTransformer("default", **TINY).eval()
    with pytest.raises(pe_probe.DataError, match="4-px patches"):
        at_resolution(m, 18)
    with pytest.raises(ValueError, match="positive ints"):
        probe_at_sizes(m, images(2), [0], progress=False)
