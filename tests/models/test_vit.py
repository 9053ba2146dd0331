"""The PE-delivery model family: presets, knobs, parameter counts, timm exactness, reference equations."""

from __future__ import annotations

import itertools
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer

from pe_probe import PRESETS, PEVisionTransformer, resolve_pe_config

from ..conftest import TINY

MODES = ["default", "lape", "pvg", "mpvg"]
VARIANTS = ["pe_deit_tiny_patch16_224", "pe_deit_small_patch16_224", "pe_deit_base_patch16_224", "pe_vit_lite_7_4_32"]


def build(**kw) -> PEVisionTransformer:
    return PEVisionTransformer(**{**TINY, **kw})


def reference_forward(m: PEVisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations written out with functional ops on the model's weights (no module calls)."""
    cfg = m.pe_config
    D = m.embed_dim
    ln = lambda t, mod: F.layer_norm(t, (D,), mod.weight, mod.bias, mod.eps)  # noqa: E731
    w = m.patch_embed.proj
    p = F.conv2d(x, w.weight, w.bias, stride=w.stride).flatten(2).transpose(1, 2)
    if cfg.global_pool == "token":
        p = torch.cat([m.cls_token.expand(len(x), -1, -1), p], 1)
    pos0 = m.pos_embed
    h = p + pos0 if cfg.input_add else p
    L = len(m.blocks)
    pes: dict[int, torch.Tensor] = {}
    prev = pos0
    for l, blk in enumerate(m.blocks):
        receives = cfg.layerwise and (l > 0 or cfg.layer0)
        a_in = ln(h, blk.norm1)
        if receives:
            src = prev if cfg.hierarchical else pos0
            pes[l] = ln(src, blk.pe_norm)
            prev = pes[l]
            a_in = a_in + pes[l]
        # multi-head self-attention written out
        B, N, _ = a_in.shape
        H = blk.attn.num_heads
        qkv = F.linear(a_in, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1) / (D // H) ** 0.5).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, N, D)
        h = h + F.linear(o, blk.attn.proj.weight, blk.attn.proj.bias)
        z = ln(h, blk.norm2)
        z = F.linear(F.gelu(F.linear(z, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        h = h + z
    out = ln(h, m.norm)
    if cfg.last_ln_pe is not None:
        src = pos0 if cfg.last_ln_pe == 0 else pes[cfg.last_ln_pe]
        out = out + ln(src, m.last_pe_norm)
    pooled = out[:, 0] if cfg.global_pool == "token" else out.mean(1)
    assert L == len(m.blocks)
    return F.linear(pooled, m.head.weight, m.head.bias)


def expected_params(kw: dict, cfg) -> int:
    """Parameter count from the architecture alone."""
    D, depth, C = kw["embed_dim"], kw["depth"], kw["num_classes"]
    P, c_in = kw["patch_size"], 3
    N = (kw["img_size"] // P) ** 2
    hidden = int(D * kw["mlp_ratio"])
    cls = cfg.global_pool == "token"
    block = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (D * hidden + hidden) + (hidden * D + D)
    n = c_in * P * P * D + D + (N + cls) * D + cls * D + depth * block + 2 * D + D * C + C
    n_pe_blocks = 0 if not cfg.layerwise else depth - (0 if cfg.layer0 else 1)
    n += 2 * D * n_pe_blocks + (2 * D if cfg.last_ln_pe is not None else 0)
    return n


ALL_CONFIGS = [
    dict(pe_mode=mode, global_pool=pool, pe_type=pe_type)
    for mode, pool, pe_type in itertools.product(MODES, ["token", "avg"], ["learned", "sincos"])
] + [
    dict(pe_mode=mode, pe_input_add=add, pe_layer0=l0, pe_hierarchical=hier)
    for mode, add, l0, hier in itertools.product(["lape", "pvg", "mpvg"], [True, False], [True, False], [True, False])
] + [dict(pe_mode="pvg", last_ln_pe=k) for k in (None, 0, 1, 2, 3)] + [dict(pe_mode="default", global_pool="avg", last_ln_pe=0)]


def _id(kw):
    return "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("kw", ALL_CONFIGS, ids=_id)
def test_every_config_builds_runs_and_matches_equations(kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build(**kw)
    cfg = m.pe_config
    assert sum(p.numel() for p in m.parameters()) == expected_params(TINY, cfg)
    # give every LayerNorm non-trivial affine parameters so the equations are really exercised
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
    x = torch.randn(3, 3, 16, 16)
    y = m(x)
    assert y.shape == (3, 5) and torch.isfinite(y).all()
    m.eval()
    torch.testing.assert_close(m(x), reference_forward(m, x), rtol=1e-5, atol=1e-5)
    m.train()
    m(x).logsumexp(-1).sum().backward()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert m.pos_embed.requires_grad == (cfg.pe_type == "learned")


@pytest.mark.parametrize(
    "knob,a,b",
    [
        ("pe_input_add", True, False),
        ("pe_layer0", True, False),
        ("pe_hierarchical", True, False),
        ("last_ln_pe", None, 0),
        ("last_ln_pe", 0, 2),
        ("global_pool", "token", "avg"),
        ("pe_type", "learned", "sincos"),
    ],
)
def test_each_knob_changes_the_computation(knob, a, b):
    torch.manual_seed(1)
    base = {"pe_mode": "pvg", "global_pool": "avg"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ma = build(**{**base, knob: a})
        mb = build(**{**base, knob: b})
    # share every weight the two have in common, so only the knob differs
    own = mb.state_dict()
    keep = {k: v for k, v in ma.state_dict().items() if k in own and own[k].shape == v.shape}
    if knob == "pe_type":  # the knob is the PE table itself
        keep.pop("pos_embed")
    mb.load_state_dict(keep, strict=False)
    with torch.no_grad():
        for mod in list(ma.modules()) + list(mb.modules()):
            if isinstance(mod, torch.nn.LayerNorm):
                torch.manual_seed(2)
                mod.bias.normal_(0, 0.5)
    x = torch.randn(2, 3, 16, 16)
    ma.eval(), mb.eval()
    assert not torch.allclose(ma(x), mb(x), atol=1e-4)


def test_presets_match_the_paper_table():
    assert not PRESETS["default"].layerwise and PRESETS["default"].input_add
    lape = PRESETS["lape"]
    assert lape.layerwise and not lape.input_add and lape.layer0 and lape.hierarchical and lape.last_ln_pe is None
    pvg, mpvg = PRESETS["pvg"], PRESETS["mpvg"]
    assert pvg.input_add and not pvg.layer0 and pvg.hierarchical and pvg.last_ln_pe is None
    assert mpvg == pvg.replace(last_ln_pe=0)
    assert (PRESETS["default"].global_pool, lape.global_pool, pvg.global_pool) == ("token", "token", "avg")
    # pvg: block 1 gets LN'_1(pos_0), block l gets LN'_l(pe_{l-1}); lape starts at block 0
    assert pvg.pe_sources(4) == (None, -1, 1, 2)
    assert lape.pe_sources(4) == (-1, 0, 1, 2)
    assert pvg.replace(hierarchical=False).pe_sources(4) == (None, -1, -1, -1)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_default_equals_timm_to_the_last_bit(pool):
    if pool == "token":
        ref = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    else:
        ref = VisionTransformer(patch_size=16, embed_dim=192, depth=12, num_heads=3, class_token=False,
                                global_pool="avg", fc_norm=False)
    ours = timm.create_model("pe_deit_tiny_patch16_224", pe_mode="default", global_pool=pool)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=True), None
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(ours(x), ref(x))
        assert torch.equal(ours.forward_features(x), ref.forward_features(x))


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_registered_variants(name, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = timm.create_model(name, pe_mode=mode, img_size=32, patch_size=8, depth=2, embed_dim=16, num_heads=2,
                              num_classes=3)
    assert isinstance(m, PEVisionTransformer) and m.pe_mode == mode
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_vit_lite_architecture():
    m = timm.create_model("pe_vit_lite_7_4_32", pe_mode="mpvg")
    assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == (256, 7, 4)
    assert m.blocks[0].mlp.fc1.out_features == 512 and m.patch_embed.grid_size == (8, 8)
    assert m.num_classes == 100 and m.pos_embed.shape == (1, 64, 256)  # GAP: no class slot
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("pe_vit_lite_7_4_32", pretrained=True)


def test_sincos_pe_is_fixed_2d_table():
    m = build(pe_mode="pvg", pe_type="sincos")
    table = build_sincos2d_pos_embed([4, 4], dim=32)
    torch.testing.assert_close(m.pos_embed[0], table)
    m2 = build(pe_mode="default", pe_type="sincos")
    assert torch.equal(m2.pos_embed[0, 0], torch.zeros(32))
    torch.testing.assert_close(m2.pos_embed[0, 1:], table)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(pe_mode="mpgv"), "pe_mode"),
        (dict(pe_mode="pvg", last_ln_pe=4), "last_ln_pe"),
        (dict(pe_mode="pvg", last_ln_pe=-1), "last_ln_pe"),
        (dict(pe_mode="default", last_ln_pe=2), "last_ln_pe"),
        (dict(pe_mode="lape", last_ln_pe="0"), "last_ln_pe"),
        (dict(pe_mode="default", global_pool="max"), "global_pool"),
        (dict(pe_mode="default", pe_type="rope"), "pe_type"),
        (dict(pe_mode="default", pe_layer0=True), "pe_layer0"),
        (dict(pe_mode="default", pe_hierarchical=False), "pe_hierarchical"),
        (dict(pe_mode="pvg", pe_input_add="yes"), "input_add"),
        (dict(pe_mode="pvg", class_token=True), "class_token"),
        (dict(pe_mode="pvg", fc_norm=True), "fc_norm"),
        (dict(pe_mode="pvg", patch_drop_rate=0.5), "patch_drop_rate"),
    ],
)
def test_bad_configurations_name_the_knob(kw, match):
    with pytest.raises(ValueError, match=match):
        build(**kw)


def test_last_ln_pe_zero_is_valid_without_layerwise_and_k_follows_layer0():
    assert build(pe_mode="default", global_pool="avg", last_ln_pe=0).last_pe_norm is not None
    build(pe_mode="lape", global_pool="avg", last_ln_pe=0)  # lape: block 0 receives a PE, so k=0..3 valid
    with pytest.raises(ValueError, match="last_ln_pe"):
        resolve_pe_config("lape", last_ln_pe=4).validate(4)


def test_mpvg_with_class_token_warns():
    with pytest.warns(UserWarning, match="class token"):
        build(pe_mode="mpvg", global_pool="token")


def test_forward_intermediates_follow_the_pe_chain():
    m = build(pe_mode="mpvg").eval()
    x = torch.randn(2, 3, 16, 16)
    final, inter = m.forward_intermediates(x, output_fmt="NLC")
    assert len(inter) == 4 and inter[-1].shape == (2, 16, 32)
    torch.testing.assert_close(m.forward_head(final), m(x))
    torch.testing.assert_close(m(x), reference_forward(m, x), rtol=1e-5, atol=1e-5)
    nchw = m.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert nchw[0].shape == (2, 32, 4, 4)


def test_grad_checkpointing_gives_same_gradients():
    m = build(pe_mode="pvg")
    x = torch.randn(2, 3, 16, 16)
    m(x).sum().backward()
    g = m.pos_embed.grad.clone()
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    torch.testing.assert_close(m.pos_embed.grad, g)
