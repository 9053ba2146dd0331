"""Attention statistics on other PE families: rotary (Eva), attention bias (BEiT, vit_relpos) and models whose
attention is not global over the patch grid, against hand-edited copies of the same models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from torch import nn

from pe_probe.core.errors import CheckpointError
from pe_probe.probing.attention import attention_stats, capture_attention

torch.set_num_threads(1)
VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def scaled(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("gamma", "gamma_1", "gamma_2")):
                p.fill_(1.0)
            elif "relative_position_bias_table" in n:
                p.normal_(0, 2.0)
            elif "rel_pos.mlp.fc2" in n:
                p.mul_(10.0)
            elif p.ndim >= 2 and ("qkv" in n or "q_proj" in n or "k_proj" in n):
                p.mul_(10.0)
    return model.eval()


def images(n=6):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def centred_ratio(part: np.ndarray, logits: np.ndarray, npre: int) -> np.ndarray:
    """Per head: sum of the per-query centred part squared over that of the logits (patch queries, all keys)."""
    part = np.broadcast_to(part, logits.shape)[:, :, npre:]
    logits = logits[:, :, npre:]
    c = lambda x: x - x.mean(-1, keepdims=True)  # noqa: E731
    return (c(part) ** 2).sum((0, 2, 3)) / (c(logits) ** 2).sum((0, 2, 3))


def rows_of(rows, metric, layer):
    return np.array([v for _, _, l, h, m, v in sorted(rows, key=lambda r: r[3]) if m == metric and l == layer])


@pytest.mark.parametrize("name,kw,npre", [("beit_base_patch16_224", {}, 1),
                                          ("vit_relpos_small_patch16_224", dict(rel_pos_type="bias"), 0)])
def test_bias_share_equals_the_logit_change_of_a_zeroed_table_copy(name, kw, npre):
    torch.manual_seed(0)
    m = scaled(timm.create_model(name, pretrained=False, **VIT, **kw))
    zero = copy.deepcopy(m)
    with torch.no_grad():
        for n, p in zero.named_parameters():
            if "relative_position_bias_table" in n:
                p.zero_()
    x = images()
    with_bias = capture_attention(m, x, logits=True)[0].double().numpy()
    without = capture_attention(zero, x, logits=True)[0].double().numpy()  # block 0 sees the same input
    want = centred_ratio(with_bias - without, with_bias, npre)
    res = attention_stats(m, x, progress=False)
    rows, meta = res.rows, res.meta
    got = rows_of(rows, "logit_bias_share", 0)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got.min() > 1e-3  # the bias matters in this model, so the comparison is not vacuous
    assert {k for s, k, l, *_ in rows if l == 0} == {"attn_bias"}
    rows0 = attention_stats(zero, x, progress=False).rows
    assert np.all(rows_of(rows0, "logit_bias_share", 0) == 0.0)  # a zero table has no share


def test_rope_change_equals_the_logit_change_without_rotation():
    torch.manual_seed(0)
    m = scaled(timm.create_model("vit_small_patch16_rope_224", pretrained=False, **VIT))
    plain = copy.deepcopy(m)
    plain.rope = None  # Eva then passes rope=None: no block rotates anything
    x = images()
    rot = capture_attention(m, x, logits=True)[0].double().numpy()
    unrot = capture_attention(plain, x, logits=True)[0].double().numpy()
    npre = m.num_prefix_tokens
    want = centred_ratio(rot - unrot, rot, npre)
    res = attention_stats(m, x, progress=False)
    rows, meta = res.rows, res.meta
    got = rows_of(rows, "logit_rope_change", 0)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got.min() > 0.01 and meta["ratio_layers"] == {"0": "logit_rope_change", "1": "logit_rope_change"}
    assert {k for s, k, l, *_ in rows} == {"rotary"}
    dist = rows_of(rows, "attn_distance", 1)
    assert dist.shape == (2,) and np.all(dist > 0)


def test_windowed_attention_is_refused_in_one_line():
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4,
                             embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4, num_classes=5)
    with pytest.raises(CheckpointError, match="global attention") as err:
        attention_stats(swin, images(2), progress=False)
    assert "\n" not in str(err.value)
