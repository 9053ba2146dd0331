"""The absolute family over timm's learned-PE ViT variants (random weights, built small): the PE each block sees
equals a hand computation (CLIP: after norm_pre), ablating ``pos_embed`` equals a hand-edited model's logits
(agreement and KL), and a model whose PE is exactly zero gets zero PE share in attribution."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import pe_probe
from pe_probe.families import family_for
from pe_probe.families.absolute import AbsoluteFamily
from pe_probe.families.none import NoneFamily

torch.set_num_threads(1)

SMALL = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}

#: name -> builder of a small random model of that variant
VARIANTS = {
    "vit_cls": lambda: VisionTransformer(**SMALL),
    "no_embed_class": lambda: VisionTransformer(**SMALL, no_embed_class=True),
    "reg_tokens": lambda: VisionTransformer(**SMALL, reg_tokens=2, no_embed_class=True),
    "dynamic_img_size": lambda: VisionTransformer(**SMALL, dynamic_img_size=True),
    "clip_pre_norm": lambda: VisionTransformer(**SMALL, pre_norm=True),
    "avg_fc_norm": lambda: VisionTransformer(**SMALL, global_pool="avg", class_token=False),
    "map": lambda: VisionTransformer(**SMALL, global_pool="map", class_token=False),
    "dinov2": lambda: timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, embed_dim=32,
                                        depth=2, num_heads=2, num_classes=5),
    "dinov2_reg": lambda: timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28,
                                            embed_dim=32, depth=2, num_heads=2, num_classes=5),
    "deit_distilled": lambda: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
                                                depth=2, num_classes=5),
    "deit3": lambda: timm.create_model("deit3_small_patch16_224", pretrained=False, img_size=32, embed_dim=32,
                                       depth=2, num_heads=2, num_classes=5),
}


def build(name: str, pe_scale: float = 3.0) -> torch.nn.Module:
    torch.manual_seed(0)
    m = VARIANTS[name]()
    with torch.no_grad():
        m.pos_embed.normal_(0, pe_scale)
        for blk in m.blocks:
            blk.attn.qkv.weight.mul_(8)  # selective attention: the PE matters to the prediction
        if getattr(m, "attn_pool", None) is not None:
            m.attn_pool.q.weight.mul_(30)
            m.attn_pool.kv.weight.mul_(30)
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm) and mod.weight is not None:
                mod.weight.normal_(1, 0.3)
                mod.bias.normal_(0, 0.3)
    return m.eval()


def images(m, n: int = 6) -> torch.Tensor:
    fam = family_for(m)
    return torch.randn(n, fam.in_chans, *fam.img_size, generator=torch.Generator().manual_seed(1))


def ln(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_block_pe_is_what_the_block_sees_and_probe_runs(name):
    m = build(name)
    fam = family_for(m)
    assert isinstance(fam, AbsoluteFamily)
    x = images(m)
    cap = pe_probe.capture(m, x)
    npt, rows = m.num_prefix_tokens, m.pos_embed.shape[1]
    pos = m.pos_embed.detach()
    if not isinstance(m.norm_pre, torch.nn.Identity):  # CLIP: the table the blocks get went through norm_pre
        pos = ln(pos, m.norm_pre)
    for i, blk in enumerate(m.blocks):
        want = ln(pos, blk.norm1)
        got = cap[f"blocks.{i}.hook_pe"]
        assert got.shape == (1, m.patch_embed.num_patches + npt, m.embed_dim)
        torch.testing.assert_close(got[:, got.shape[1] - rows:], want)
        assert torch.isnan(got[:, :got.shape[1] - rows]).all()  # prefix slots without a PE row (DINOv2-reg, DeiT-III)
    # the stream entering block 0 is timm's own: patch embedding, prefix tokens, PE, norm_pre
    with torch.no_grad():
        x0 = m.norm_pre(m._pos_embed(m.patch_embed(x)))
    torch.testing.assert_close(cap["blocks.0.hook_resid_pre"], x0)
    report = pe_probe.probe(m, x, batch_size=4, progress=False)
    meta = report.meta
    assert meta["family"] == "absolute" and meta["pe_kind"] == "absolute" and meta["pe_derived"] is True
    assert meta["pre_norm"] == (name == "clip_pre_norm")
    assert meta["last_ln"] == (name != "avg_fc_norm")  # fc_norm normalises after pooling: no Last LN
    assert ("prefix_pe" in meta) == (rows < m.patch_embed.num_patches + npt)
    frame = pe_probe.summary_frame(report)
    assert {"site", "pe_kind"} <= set(frame.columns) and np.isfinite(frame.value).all()
    assert set(frame.loc[frame.metric == "tok_pe_corr", "site"]) >= {"blocks.0.hook_pe"}


@pytest.mark.parametrize("name", ["vit_cls", "clip_pre_norm", "reg_tokens", "map", "deit_distilled"])
def test_ablating_pos_embed_equals_a_hand_edited_forward(name):
    m = build(name)
    x = images(m, 8)
    hand = copy.deepcopy(m)
    with torch.no_grad():
        hand.pos_embed.zero_()
        intact, edited = m(x), hand(x)
    f = pe_probe.ablate(m, x, ["zero"], batch_size=4, progress=False).frame()
    assert set(f.site) == {"hook_input_pe"} and set(f.pe_kind) == {"absolute"}
    p = F.log_softmax(intact.double(), -1)
    kl = float((p.exp() * (p - F.log_softmax(edited.double(), -1))).sum(-1).mean())
    agree = float((intact.argmax(-1) == edited.argmax(-1)).double().mean())
    assert f.loc[f.metric == "kl", "value"].item() == pytest.approx(kl, rel=1e-5, abs=1e-9)
    assert f.loc[f.metric == "agree", "value"].item() == agree
    assert kl > 1e-4  # the PE matters in these models, so the check can fail


def test_a_zero_pe_gets_zero_pe_share():
    m = build("vit_cls", pe_scale=0.0)
    assert torch.count_nonzero(m.pos_embed) == 0
    a = pe_probe.attribute(m, images(m, 4), n_steps=8, batch_size=2, warn_rel_delta=1.0, progress=False).frame()
    share = a.loc[a.metric == "pe_share", "value"].item()
    assert share == 0.0
    assert a.loc[a.metric == "tok_abs", "value"].item() > 0
    live = pe_probe.attribute(build("vit_cls"), images(m, 4), n_steps=8, batch_size=2, warn_rel_delta=1.0,
                              progress=False).frame()
    assert live.loc[live.metric == "pe_share", "value"].item() > 0.01


def test_a_vit_without_pos_embed_gets_a_none_report():
    m = VisionTransformer(**SMALL, pos_embed="none").eval()
    fam = family_for(m)
    assert isinstance(fam, NoneFamily) and fam.sites() == []
    names = pe_probe.hook_names(m)
    assert "blocks.0.hook_resid_pre" in names and not any(n.endswith("hook_pe") for n in names)
    report = pe_probe.probe(m, torch.randn(4, 3, 16, 16), progress=False)
    assert report.meta["pe_kind"] == "none" and report.pe_layers == []
    frame = pe_probe.summary_frame(report)
    assert set(frame.pe_kind) == {"none"} and {"tok_norm_mean", "resid_norm_mean"} <= set(frame.metric)
    assert len(report.frame()) == 2 * 3  # tok/resid norm means at blocks 0, 1 and the Last LN
    with pytest.raises(pe_probe.UnknownNameError, match="no PE site"):
        pe_probe.ablate(m, torch.randn(2, 3, 16, 16), progress=False)
