"""Attention capture and per-head attention statistics, patch shuffles: checked against hand computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import timm
import torch

from pe_probe import PEVisionTransformer
from pe_probe.core.errors import CheckpointError
from pe_probe.probing.attention import (AttentionStats, attention_modules, attention_stats, capture_attention,
                                        logit_terms, split_input_ln, unfused)

from ..conftest import TINY

torch.set_num_threads(1)


def strong(mode: str = "mpvg", **kw) -> PEVisionTransformer:
    torch.manual_seed(0)
    m = PEVisionTransformer(mode, **{**TINY, **kw})
    with torch.no_grad():
        m.pos_embed.mul_(30)
        for blk in m.blocks:
            blk.attn.qkv.weight.mul_(8)
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias.normal_(0, 0.5)
    return m.eval()


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def hand_probs(attn, a: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) of attention input ``a`` from the qkv weights, in float64."""
    w, b = attn.qkv.weight.double(), attn.qkv.bias.double()
    qkv = a.double() @ w.T + b
    B, T, _ = a.shape
    H = attn.num_heads
    q, k, _v = qkv.reshape(B, T, 3, H, -1).permute(2, 0, 3, 1, 4)
    return torch.softmax(q @ k.transpose(-2, -1) * attn.scale, -1)


@pytest.mark.parametrize("mode", ["default", "mpvg", "lape"])
def test_captured_probabilities_equal_a_hand_softmax(mode):
    m = strong(mode)
    x = images()
    acts = __import__("pe_probe").capture(m, x)
    probs = capture_attention(m, x)
    assert sorted(probs) == list(range(TINY["depth"]))
    for l, blk in enumerate(m.blocks):
        a = acts[f"blocks.{l}.hook_tok"]
        pe = acts.get(f"blocks.{l}.hook_pe")
        if pe is not None:
            a = a + pe
        torch.testing.assert_close(probs[l].double(), hand_probs(blk.attn, a), atol=1e-6, rtol=0)


def test_fused_flag_restored_also_after_an_error():
    m = strong("default")
    mods, _ = attention_modules(m)
    for i, mod in enumerate(mods):
        mod.fused_attn = bool(i % 2)
    before = [mod.fused_attn for mod in mods]
    with pytest.raises(RuntimeError):
        with unfused(mods):
            assert not any(mod.fused_attn for mod in mods)
            raise RuntimeError("boom")
    assert [mod.fused_attn for mod in mods] == before
    with pytest.raises(Exception):
        attention_stats(m, torch.randn(2, 3, 8, 8), progress=False)  # wrong size: fails inside the run
    assert [mod.fused_attn for mod in mods] == before
    assert sum(len(x._forward_hooks) for x in m.modules()) == 0


def grid_mean_distance(h: int, w: int) -> float:
    """Mean Euclidean distance between two patches of an h x w grid drawn uniformly (self pairs included)."""
    pts = list(itertools.product(range(h), range(w)))
    return float(np.mean([math.dist(p, q) for p in pts for q in pts]))


def test_uniform_attention_gives_the_grid_mean_distance():
    m = strong("default", global_pool="token")
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.qkv.weight.zero_()  # q = k = bias: every logit of a query equal -> uniform attention
            blk.attn.qkv.bias.zero_()
    res = attention_stats(m, images(4), progress=False)
    rows, meta = res.rows, res.meta
    T = 16 + 1
    got = {(l, h, k): v for _, _, l, h, k, v in rows}
    for l in range(TINY["depth"]):
        for h in range(TINY["num_heads"]):
            # per-query reductions run in the probabilities' float32 (docs/probe.md): ~1e-7 relative
            assert got[(l, h, "attn_distance")] == pytest.approx(grid_mean_distance(4, 4), rel=1e-6)
            assert got[(l, h, "attn_prefix_share")] == pytest.approx(1 / T, abs=1e-7)  # float32 softmax
            assert got[(l, h, "attn_entropy")] == pytest.approx(math.log(T), abs=1e-6)
    assert meta["n_images"] == 4


def test_self_attention_only_gives_zero_distance_and_entropy():
    st = AttentionStats(depth=1, heads=2, grid=(3, 3), n_prefix=1)
    eye = torch.eye(10).expand(4, 2, 10, 10)
    st.add_probs(0, eye)
    got = {m: v for *_, m, v in st.rows()}
    assert got["attn_distance"] == 0.0 and got["attn_prefix_share"] == 0.0 and got["attn_entropy"] == 0.0
    # all mass on the key one patch to the right (wrapping rows): distance 1 except at the row ends
    st2 = AttentionStats(depth=1, heads=1, grid=(1, 4), n_prefix=0)
    p = torch.zeros(1, 1, 4, 4)
    for q in range(4):
        p[0, 0, q, (q + 1) % 4] = 1.0
    st2.add_probs(0, p)
    assert {m: v for *_, m, v in st2.rows()}["attn_distance"] == pytest.approx((1 + 1 + 1 + 3) / 4)


def test_logit_terms_sum_to_the_logits_and_vanish_without_pe():
    m = strong("mpvg")
    x = images()
    acts = __import__("pe_probe").capture(m, x)
    for l in m.pe_receiving_blocks():
        attn = m.blocks[l].attn
        tok, pe = acts[f"blocks.{l}.hook_tok"], acts[f"blocks.{l}.hook_pe"].expand(len(x), -1, -1)
        terms = logit_terms(attn, tok, pe)
        a = (tok + pe).double()
        w, b = attn.qkv.weight.double(), attn.qkv.bias.double()
        d = w.shape[0] // 3
        q = (a @ w[:d].T + b[:d]).reshape(len(x), -1, attn.num_heads, d // attn.num_heads).transpose(1, 2)
        k = (a @ w[d:2 * d].T + b[d:2 * d]).reshape(len(x), -1, attn.num_heads, d // attn.num_heads).transpose(1, 2)
        torch.testing.assert_close(sum(t.double() for t in terms), q @ k.transpose(-2, -1) * attn.scale,
                                   atol=1e-5, rtol=0)
        with torch.no_grad():
            zero = logit_terms(attn, tok, torch.zeros_like(pe))
        assert all(float(t.abs().max()) == 0.0 for t in zero[1:])


def test_input_pe_split_through_the_first_layernorm():
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                          depth=2, num_heads=2, num_classes=3).eval()
    with torch.no_grad():
        m.pos_embed.normal_(0, 1)
    x0 = torch.randn(3, 17, 32)
    content, pos = split_input_ln(m.blocks[0].norm1, x0, m.pos_embed)
    torch.testing.assert_close(content + pos, m.blocks[0].norm1(x0), atol=1e-5, rtol=0)
    # the position part by hand: gamma * centred pe / sigma(x0)
    sigma = torch.sqrt(x0.var(-1, unbiased=False, keepdim=True) + m.blocks[0].norm1.eps)
    pe = m.pos_embed - m.pos_embed.mean(-1, keepdim=True)
    torch.testing.assert_close(pos, m.blocks[0].norm1.weight * pe / sigma)
    res = attention_stats(m, torch.randn(4, 3, 16, 16), progress=False)
    rows, meta = res.rows, res.meta
    assert meta["decomposed_layers"] == [0]
    share = [v for *_, k, v in rows if k == "logit_pos_share"]
    assert len(share) == 2 and all(0 < s < 1 for s in share)


def test_zero_pe_model_has_zero_position_terms():
    m = strong("pvg")
    with torch.no_grad():
        m.pos_embed.zero_()
        for blk in m.blocks:
            if blk.pe_norm is not None:  # LN'(0) = beta: zero it too so the PE term is exactly zero
                blk.pe_norm.bias.zero_()
    res = attention_stats(m, images(3), progress=False)
    rows, meta = res.rows, res.meta
    assert set(meta["decomposed_layers"]) == {0, *m.pe_receiving_blocks()}  # block 0: the input PE, split
    for _, kind, l, h, k, v in rows:
        if k in ("logit_cp_ms", "logit_pc_ms", "logit_pp_ms", "logit_pos_share"):
            assert v == 0.0, (l, h, k)


def test_qk_norm_blocks_get_distances_but_no_logit_split():
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                          depth=2, num_heads=2, qk_norm=True)
    res = attention_stats(m, torch.randn(2, 3, 16, 16), progress=False)
    rows, meta = res.rows, res.meta
    assert meta["decomposed_layers"] == [] and "qk_norm" in meta["not_decomposed"]["0"]
    assert {k for *_, k, _ in rows} == {"attn_distance", "attn_prefix_share", "attn_entropy"}
    with pytest.raises(CheckpointError, match="no PE family reads a Linear"):
        attention_modules(torch.nn.Linear(2, 2))


def test_the_model_s_own_logits_equal_the_four_terms():
    """The logits the softmax receives (captured) against the split computed from the hooked tok and PE."""
    m = strong("mpvg")
    x = images(4)
    acts = __import__("pe_probe").capture(m, x)
    logits = capture_attention(m, x, logits=True)
    probs = capture_attention(m, x)
    for l in range(TINY["depth"]):
        torch.testing.assert_close(torch.softmax(logits[l], -1), probs[l])
    for l in m.pe_receiving_blocks():
        tok, pe = acts[f"blocks.{l}.hook_tok"], acts[f"blocks.{l}.hook_pe"].expand(len(x), -1, -1)
        with torch.no_grad():
            terms = logit_terms(m.blocks[l].attn, tok, pe)
        torch.testing.assert_close(sum(terms), logits[l], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("mode", ["mpvg", "pvg"])
def test_attention_rows_match_numpy_on_the_captured_tensors(mode):
    """Every per-head row of attention_stats against numpy float64 on the same captured probabilities, hooked
    tokens and PEs: distance, prefix share and entropy from the probabilities, and the four logit terms' mean
    squares from logit_terms (full (T, T) terms; attention_stats sums squared products of patch rows instead,
    and counts a shared PE's position-position term once per image) over patch queries and patch keys."""
    m = strong(mode, global_pool="token")
    x = images(5)
    acts = __import__("pe_probe").capture(m, x)
    probs = capture_attention(m, x)
    res = attention_stats(m, x, batch_size=2, progress=False)  # 3 batches: 2, 2, 1 images
    got = {(l, h, k): v for _, _, l, h, k, v in res.rows}
    npre, grid = m.num_prefix_tokens, (4, 4)
    pts = np.array(list(itertools.product(range(grid[0]), range(grid[1]))), dtype=np.float64)
    dist = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    for l in range(TINY["depth"]):
        p = probs[l].double().numpy()[:, :, npre:, :]
        patch = p[..., npre:]
        mass = patch.sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
        for h in range(TINY["num_heads"]):
            assert got[(l, h, "attn_distance")] == pytest.approx(((patch * dist).sum(-1) / mass)[:, h].mean(), rel=1e-5)
            assert got[(l, h, "attn_prefix_share")] == pytest.approx((1 - mass)[:, h].mean(), rel=1e-5, abs=1e-7)
            assert got[(l, h, "attn_entropy")] == pytest.approx(ent[:, h].mean(), rel=1e-5)
    split = [l for l in m.pe_receiving_blocks() if l in res.meta["decomposed_layers"]]
    assert split
    for l in split:
        tok, pe = acts[f"blocks.{l}.hook_tok"], acts[f"blocks.{l}.hook_pe"].expand(len(x), -1, -1)
        with torch.no_grad():
            terms = [t.double().numpy()[:, :, npre:, npre:] for t in logit_terms(m.blocks[l].attn, tok, pe)]
        for h in range(TINY["num_heads"]):
            for name, t in zip(("cc", "cp", "pc", "pp"), terms):
                assert got[(l, h, f"logit_{name}_ms")] == pytest.approx((t[:, h] ** 2).mean(), rel=1e-5), (l, h, name)


def test_no_host_read_between_the_first_and_the_last_batch():
    """attention_stats reads nothing back to the host per batch (issue 21, item 4): under a dispatch mode that
    fails on any such op from the second batch on, the statistics and the logit split run through."""
    from .test_speed import NoSync, _batches
    m = strong("mpvg")
    x = images(6)
    res = attention_stats(m, _batches(x, 2, NoSync()), progress=False)
    assert res.meta["n_images"] == 6 and res.meta["decomposed_layers"]


@pytest.mark.parametrize("kind", ["mpvg", "vit"])
def test_split_from_the_module_s_own_q_and_k_equals_the_split_from_the_tokens(kind, monkeypatch):
    """timm Attention blocks hand their own q and k to the logit split (content = q - q_pos); other modules project
    the tokens again. Both give the same rows, and for a vit's block 0 (input PE through its LayerNorm) they equal
    numpy's float64 sums of squares of logit_terms on the captured content and position parts."""
    import pe_probe.probing.attention as A

    if kind == "mpvg":
        m = strong("mpvg")
    else:
        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                              depth=2, num_heads=2, num_classes=3).eval()
        with torch.no_grad():
            m.pos_embed.normal_(0, 1)
            m.blocks[0].attn.qkv.weight.mul_(4)
    x = images(5)
    calls = []
    real = A.logit_term_squares
    monkeypatch.setattr(A, "logit_term_squares", lambda *a, **k: calls.append(a[-1] is not None) or real(*a, **k))
    tapped = {(l, h, k): v for _, _, l, h, k, v in attention_stats(m, x, batch_size=2, progress=False).rows}
    assert calls and all(calls)  # every split read the module's own q and k
    calls.clear()
    monkeypatch.setattr(A, "own_qk", lambda attn: False)
    projected = {(l, h, k): v for _, _, l, h, k, v in attention_stats(m, x, batch_size=2, progress=False).rows}
    assert calls and not any(calls)
    assert tapped.keys() == projected.keys()
    split = [key for key in tapped if key[2].startswith("logit_")]
    assert split
    for key in split:
        assert tapped[key] == pytest.approx(projected[key], rel=1e-5), key
    if kind == "vit":
        x0 = __import__("pe_probe").capture(m, x)["blocks.0.hook_resid_pre"]
        content, pos = split_input_ln(m.blocks[0].norm1, x0, m.pos_embed.expand_as(x0))
        with torch.no_grad():
            terms = [t.double().numpy()[:, :, 1:, 1:] for t in logit_terms(m.blocks[0].attn, content, pos)]
        for h in range(2):
            for name, t in zip(("cc", "cp", "pc", "pp"), terms):
                assert tapped[(0, h, f"logit_{name}_ms")] == pytest.approx((t[:, h] ** 2).mean(), rel=1e-5), (h, name)


def test_entropy_from_logits_counts_a_masked_key_as_zero():
    """A key masked out (logit -inf, probability 0) adds nothing to the entropy computed from the logits
    (H = lse - sum p z, where 0 * -inf would be NaN): equal to numpy's -sum p log p over the unmasked keys."""
    g = torch.Generator().manual_seed(0)
    stats = AttentionStats(depth=1, heads=2, grid=(2, 2), n_prefix=1)
    logits = torch.randn(3, 2, 5, 5, generator=g) * 3
    logits[..., 2] = -math.inf  # key 2 masked for every query
    probs = logits.softmax(-1)
    stats.add_probs(0, probs, logits)
    p = probs.double().numpy()[:, :, 1:, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    got = {(l, h, k): v for _, _, l, h, k, v in stats.rows()}
    for h in range(2):
        assert math.isfinite(got[(0, h, "attn_entropy")])
        assert got[(0, h, "attn_entropy")] == pytest.approx(ent[:, h].mean(), rel=1e-6)
