"""timm's zoo beyond plain ViTs, each built small with random weights: PVT-v2 (no PE), CaiT and XCiT (late class
token), NaFlexViT (variable-size table, learned or factorized) and Hiera (pooling stages, unrolled order).

Known answers, each against an independent computation:
- the additive PE site equals a hand computation of the PE (the table, a bicubic resize, XCiT's Fourier
  features in numpy), and the first block receives the patch tokens plus exactly that (read by plain module
  hooks on timm's own modules, Hiera after its unroll);
- "PE off" through the family equals a hand-edited copy whose PE parameters are zero, to 1e-5, and ablating
  the site with ``pe_probe.ablate`` reproduces that copy's agreement and KL;
- a model whose PE is exactly zero gets zero PE share in attribution;
- ``pe_probe.hook_names`` lists the expected sites; blocks are numbered globally and the stream entering each
  is the (B, T, D) tensor timm's block receives; ``pe_probe.probe`` gives a report for every model, PVT-v2's
  (pe_kind none) included; what a family cannot measure is refused in one line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import pe_probe
from pe_probe.core import hook_points as H
from pe_probe.core.errors import UnsupportedModelError
from pe_probe.families import family_for, replaced

from .zoo_common import agree_kl, as_frame, frame_value, logit_drop, metric, site_col

torch.set_num_threads(1)

PX = 32
SMALL = {"pretrained": False, "num_classes": 5}


def _create(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL, **kw).eval()


# ------------------------------------------------------------------------------------------------ the models
def pvt_v2() -> torch.nn.Module:
    return _create("pvt_v2_b0", depths=(1, 1, 2, 1), embed_dims=(16, 32, 32, 48), num_heads=(1, 1, 2, 2),
                   pretrained_cfg_overlay={"input_size": (3, PX, PX)})


def cait() -> torch.nn.Module:
    return _create("cait_xxs24_224", img_size=PX, patch_size=8, embed_dim=32, depth=2, depth_token_only=1, num_heads=2)


def xcit() -> torch.nn.Module:
    return _create("xcit_nano_12_p16_224", img_size=PX, patch_size=8, embed_dim=32, depth=2, cls_attn_layers=1,
                   num_heads=2)


def naflexvit(grid=(4, 4), **kw) -> torch.nn.Module:
    return _create("naflexvit_base_patch16_gap", patch_size=8, embed_dim=32, depth=2, num_heads=2,
                   pos_embed_grid_size=grid, pretrained_cfg_overlay={"input_size": (3, PX, PX)}, **kw)


def hiera(**kw) -> torch.nn.Module:
    return _create("hiera_tiny_224", img_size=(PX, PX), embed_dim=16, num_heads=1, stages=(1, 1, 1), q_pool=2,
                   mask_unit_size=(4, 4), mask_unit_attn=(True, False, False), **kw)


def _pe_params(m: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that make up the model's PE (zeroing them all turns the PE off)."""
    if hasattr(m, "embeds"):  # NaFlexViT
        return [p for p in (m.embeds.pos_embed, m.embeds.pos_embed_y, m.embeds.pos_embed_x) if p is not None]
    if type(m).__name__ == "Xcit":
        return list(m.pos_embed.token_projection.parameters())
    return [p for p in (m.pos_embed, getattr(m, "pos_embed_win", None)) if p is not None]


def strong(m: torch.nn.Module) -> torch.nn.Module:
    """Scale the PE (and a zero-initialised head, and layer scales initialised at 1e-5) so the PE changes
    predictions."""
    with torch.no_grad():
        for p in _pe_params(m):
            p.normal_(0, 1.0)
        for name, p in m.named_parameters():
            if name.rsplit(".", 1)[-1] in ("gamma", "gamma1", "gamma2", "gamma3", "gamma_1", "gamma_2"):
                p.fill_(1.0)
        head = getattr(m.head, "fc", m.head)
        head.weight.normal_(0, 1.0)
    return m


def pe_off_copy(m: torch.nn.Module) -> torch.nn.Module:
    """The hand-edited forward: a copy whose PE parameters are exactly zero."""
    m = copy.deepcopy(m)
    with torch.no_grad():
        for p in _pe_params(m):
            p.zero_()
    return m


# ------------------------------------------------------------------------------ hand computations of the PE
def xcit_fourier(m: torch.nn.Module, h: int, w: int) -> torch.Tensor:
    """XCiT's positional encoding for an h x w grid, written from the paper in numpy: per axis, positions
    1..n normalised to (0, 2*pi], divided by temperature^(2*floor(i/2)/d), sin on even and cos on odd
    channels (interleaved), y features first, then timm's 1x1 projection. (1, h*w, D)."""
    pe = m.pos_embed
    d, temp, eps = pe.hidden_dim, pe.temperature, 1e-6
    ys = np.arange(1, h + 1) / (h + eps) * 2 * np.pi
    xs = np.arange(1, w + 1) / (w + eps) * 2 * np.pi
    dim_t = temp ** (2 * (np.arange(d) // 2) / d)

    def feats(v):  # (n, d): sin of even, cos of odd channels, interleaved in pairs
        a = v[:, None] / dim_t
        return np.stack([np.sin(a[:, 0::2]), np.cos(a[:, 1::2])], axis=2).reshape(len(v), d)

    fy, fx = feats(ys), feats(xs)
    grid = np.concatenate([np.repeat(fy[:, None], w, 1), np.repeat(fx[None], h, 0)], axis=2)  # (h, w, 2d)
    weight = pe.token_projection.weight.detach().double().numpy()[:, :, 0, 0]  # (D, 2d)
    bias = pe.token_projection.bias.detach().double().numpy()
    out = grid.reshape(h * w, 2 * d) @ weight.T + bias
    return torch.from_numpy(out).float()[None]


def naflex_table(m: torch.nn.Module, grid) -> torch.Tensor:
    """NaFlexViT's PE at ``grid``: the table itself when the grids agree, else its bicubic (antialiased) resize;
    factorized: rows plus columns."""
    emb = m.embeds
    if emb.pos_embed_type == "factorized":
        assert tuple(grid) == (emb.pos_embed_y.shape[1], emb.pos_embed_x.shape[1])
        return (emb.pos_embed_y[:, :, None] + emb.pos_embed_x[:, None, :]).flatten(1, 2)
    table = emb.pos_embed  # (1, h, w, D)
    if tuple(table.shape[1:3]) == tuple(grid):
        return table.flatten(1, 2)
    return F.interpolate(table.permute(0, 3, 1, 2), size=grid, mode="bicubic", antialias=True,
                         align_corners=False).flatten(2).transpose(1, 2)


def hiera_table(m: torch.nn.Module, grid) -> torch.Tensor:
    if m.pos_embed_win is None:
        return m.pos_embed
    win = m.pos_embed_win.tile(m.mask_spatial_shape)  # abs_win: a global table resized + a tiled window table
    glob = F.interpolate(m.pos_embed, size=win.shape[-2:], mode="bicubic", antialias=True)
    return (glob + win).flatten(2).transpose(1, 2)


@dataclass
class Case:
    """One zoo model: how to build it, its expected family and sites, the PE by hand, and how timm's own modules
    expose the patch tokens and the patch rows the first block receives (plain hooks, no family)."""

    build: Callable[[], torch.nn.Module]
    family: str
    pe_kind: str
    sites: list[str]
    hand_pe: Callable[[torch.nn.Module], torch.Tensor] | None = None
    tokens_at: Callable[[torch.nn.Module], tuple] | None = None  # (module, reads tokens from its output)
    entry: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None  # tokens + pe -> block 0's patches


def _naflex_tokens(m):
    return m.embeds.norm


CASES = {
    "pvt_v2": Case(pvt_v2, "pvt_v2", "none", []),
    "cait": Case(cait, "cait", "absolute", [H.INPUT_PE], lambda m: m.pos_embed, lambda m: m.patch_embed,
                 lambda m, s: s),
    "xcit": Case(xcit, "xcit", "absolute", [H.INPUT_PE], lambda m: xcit_fourier(m, 4, 4), lambda m: m.patch_embed,
                 lambda m, s: s),
    "naflexvit": Case(naflexvit, "naflexvit", "absolute", [H.INPUT_PE], lambda m: naflex_table(m, (4, 4)),
                      _naflex_tokens, lambda m, s: s),
    "naflexvit_resized": Case(lambda: naflexvit(grid=(6, 6)), "naflexvit", "absolute", [H.INPUT_PE],
                              lambda m: naflex_table(m, (4, 4)), _naflex_tokens, lambda m, s: s),
    "naflexvit_factorized": Case(lambda: naflexvit(pos_embed="factorized"), "naflexvit", "absolute", [H.INPUT_PE],
                                 lambda m: naflex_table(m, (4, 4)), _naflex_tokens, lambda m, s: s),
    "hiera": Case(hiera, "hiera", "absolute", [H.INPUT_PE], lambda m: hiera_table(m, (8, 8)), lambda m: m.patch_embed,
                  lambda m, s: m.unroll(s)),
    "hiera_abswin": Case(lambda: hiera(abs_win_pos_embed=True, global_pos_size=(4, 4)), "hiera", "absolute",
                         [H.INPUT_PE], lambda m: hiera_table(m, (8, 8)), lambda m: m.patch_embed,
                         lambda m, s: m.unroll(s)),
}
PE_CASES = [k for k, c in CASES.items() if c.sites]


def images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, PX, PX, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("case", list(CASES))
def test_family_sites_and_hook_names(case):
    c = CASES[case]
    m = c.build()
    fam = family_for(m)
    assert (fam.name, fam.pe_kind) == (c.family, c.pe_kind)
    assert [s.name for s in fam.sites()] == c.sites
    assert all(s.kind == c.pe_kind and s.additive for s in fam.sites())
    names = pe_probe.hook_names(m)
    for s in c.sites:
        assert s in names
    assert not any(n.endswith(("hook_rope", "hook_attn_bias", "hook_peg")) for n in names)
    L = fam.depth
    assert H.block_hook(L - 1, H.RESID_POST) in names and H.block_hook(L, H.RESID_PRE) not in names


def _timm_blocks(m):
    """timm's transformer blocks in forward order, and what each one receives as the (B, T, D) stream."""
    kind = type(m).__name__
    if kind == "PyramidVisionTransformerV2":
        return [b for st in m.stages for b in st.blocks], lambda i, a: a[0]
    if kind == "Cait":
        n = len(m.blocks)
        return list(m.blocks) + list(m.blocks_token_only), \
            (lambda i, a: a[0] if i < n else torch.cat([a[1], a[0]], dim=1))
    if kind == "Xcit":
        return list(m.blocks) + list(m.cls_attn_blocks), lambda i, a: a[0]
    return list(m.blocks), lambda i, a: a[0]


@pytest.mark.parametrize("case", list(CASES))
def test_global_blocks_and_the_stream_each_receives(case):
    m, x = CASES[case].build(), images(2)
    fam = family_for(m)
    blocks, entering = _timm_blocks(m)
    assert len(fam.blocks) == len(blocks) and all(a is b for a, b in zip(fam.blocks, blocks))
    taps, plain, mine, hooks = fam.stream_taps(), {}, {}, []
    for i, blk in enumerate(blocks):
        hooks.append(blk.register_forward_pre_hook(lambda mod, a, i=i: plain.__setitem__(i, entering(i, a).clone())))
        t = taps[H.block_hook(i, H.RESID_PRE)]
        hooks.append(t.module.register_forward_pre_hook(
            lambda mod, a, i=i, t=t: mine.__setitem__(i, t.read(a, {}, None).clone())))
    try:
        with torch.no_grad():
            fam.run(x)
    finally:
        for h in hooks:
            h.remove()
    for i in range(len(blocks)):
        assert mine[i].ndim == 3 and mine[i].shape[0] == 2
        torch.testing.assert_close(mine[i], plain[i], rtol=0, atol=0)
    assert fam.uniform == (len({tuple(v.shape[1:]) for v in mine.values()}) == 1)


@pytest.mark.parametrize("case", list(CASES))
def test_hook_pooled_is_what_the_head_pools_from_the_final_tokens(case):
    m, x = CASES[case].build(), images(2)
    fam = family_for(m)
    assert pe_probe.hook_names(m)[-1] == H.POOLED
    taps, got = fam.stream_taps(), {}
    final = taps[H.LAST_LN_OUT] if fam.final_norm is not None else taps[H.block_hook(fam.depth - 1, H.RESID_POST)]
    pooled = taps[H.POOLED]
    hooks = [pooled.module.register_forward_pre_hook(lambda mod, a: got.__setitem__("pooled", pooled.read(a, {}, None))),
             final.module.register_forward_hook(lambda mod, a, out: got.__setitem__("final", final.read(a, {}, out)))
             if final.side == "out" else
             final.module.register_forward_pre_hook(lambda mod, a: got.__setitem__("final", final.read(a, {}, None)))]
    try:
        with torch.no_grad():
            fam.run(x)
            hand = fam.pool(got["final"])
    finally:
        for h in hooks:
            h.remove()
    assert got["pooled"].shape == (2, m.num_features)
    torch.testing.assert_close(got["pooled"], hand, rtol=1e-6, atol=1e-6)


def test_cait_class_attention_resid_post_is_the_concatenated_stream():
    m, x = strong(cait()), images(2)
    fam = family_for(m)
    taps = fam.stream_taps()
    last = fam.depth - 1
    got, hooks = {}, []
    t = taps[H.block_hook(last, H.RESID_POST)]
    hooks.append(t.module.register_forward_pre_hook(lambda mod, a: got.__setitem__("mine", t.read(a, {}, None))))
    hooks.append(m.blocks_token_only[-1].register_forward_hook(
        lambda mod, a, out: got.__setitem__("hand", torch.cat([out, a[0]], dim=1))))
    try:
        with torch.no_grad():
            fam.run(x)
    finally:
        for h in hooks:
            h.remove()
    assert got["mine"].shape == (2, 17, 32)
    torch.testing.assert_close(got["mine"], got["hand"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------ the PE, by hand
@pytest.mark.parametrize("case", PE_CASES)
def test_intact_run_is_the_plain_forward(case):
    m, x = strong(CASES[case].build()), images(4)
    fam = family_for(m)
    with torch.no_grad():
        assert torch.equal(fam.run(x), m(x))
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


@pytest.mark.parametrize("case", PE_CASES)
def test_site_term_is_the_hand_pe_and_the_first_block_sees_tokens_plus_it(case):
    c = CASES[case]
    m, x = strong(c.build()), images(2)
    fam = family_for(m)
    site = fam.sites()[0]
    tok_mod = c.tokens_at(m)
    got, hooks = {}, []
    # kept as read (no copy), as a recorder would: the term must stay what the tokens received
    hooks.append(site.module.register_forward_hook(lambda mod, a, out: got.__setitem__("term", out)))
    try:
        with torch.no_grad():
            fam.run(x)
    finally:
        hooks[0].remove()
    # plain hooks on timm's modules, the family not involved
    blocks, entering = _timm_blocks(m)
    h1 = tok_mod.register_forward_hook(
        lambda mod, a, out: got.__setitem__("tok", (out[0] if isinstance(out, tuple) else out).clone()))
    h2 = blocks[0].register_forward_pre_hook(lambda mod, a: got.__setitem__("entry", entering(0, a).clone()))
    try:
        with torch.no_grad():
            m(x)
    finally:
        h1.remove()
        h2.remove()
    with torch.no_grad():
        hand = c.hand_pe(m).float()
        assert got["term"].shape[-2:] == hand.shape[-2:] and got["term"].shape[0] in (1, 2)
        torch.testing.assert_close(got["term"], hand.expand_as(got["term"]), rtol=1e-5, atol=1e-5)
        assert hand.abs().max() > 0.5  # a PE that matters: the check can fail
        sees = c.entry(m, got["tok"] + hand)
        torch.testing.assert_close(got["entry"][:, -sees.shape[1]:], sees, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", PE_CASES)
def test_off_equals_hand_edited_forward(case):
    m, x = strong(CASES[case].build()), images()
    fam = family_for(m)
    site = fam.sites()[0]
    with torch.no_grad(), replaced(site.module, fam.replacement(site, "zero")):
        off = fam.run(x)
    with torch.no_grad():
        hand, intact = pe_off_copy(m)(x), m(x)
    torch.testing.assert_close(off, hand, rtol=1e-5, atol=1e-5)
    assert (hand - intact).abs().max() > 1e-3


@pytest.mark.parametrize("case", PE_CASES)
def test_ablate_reproduces_hand_edited_agreement_and_kl(case):
    m, x = strong(CASES[case].build()), images(16)
    with torch.no_grad():
        agree, kl = agree_kl(m(x), pe_off_copy(m)(x))
    frame = as_frame(pe_probe.ablate(m, x, ["zero", "mean", "shuffle"], progress=False))
    assert set(frame[site_col(frame)]) == {H.INPUT_PE}
    if "pe_kind" in frame.columns:
        assert set(frame["pe_kind"]) == {"absolute"}
    assert frame_value(frame, H.INPUT_PE, "zero", "agree") == pytest.approx(agree, abs=1e-9)
    assert frame_value(frame, H.INPUT_PE, "zero", "kl") == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert kl > 1e-4
    assert frame_value(frame, H.INPUT_PE, "shuffle", "kl") > 0


@pytest.mark.parametrize("case", PE_CASES)
@pytest.mark.filterwarnings("ignore:.*attributions there are not complete")
def test_zero_pe_gets_zero_pe_share(case):
    m = pe_off_copy(strong(CASES[case].build()))
    frame = as_frame(pe_probe.attribute(m, images(4), n_steps=8, progress=False))
    shares = frame[frame["metric"] == "pe_share"]
    assert len(shares) == 1 and shares["value"].abs().max() == 0.0


@pytest.mark.parametrize("case", PE_CASES)
@pytest.mark.filterwarnings("ignore:.*attributions there are not complete")
def test_nonzero_pe_gets_nonzero_pe_share(case):
    m = strong(CASES[case].build())
    frame = as_frame(pe_probe.attribute(m, images(4), n_steps=8, progress=False))
    assert frame[frame["metric"] == "pe_share"]["value"].abs().max() > 0


@pytest.mark.parametrize("case", PE_CASES)
def test_attribution_ends_at_the_hand_edited_model_and_is_complete(case):
    """tokens kept, PE baseline off: fdiff is the zero-PE copy's predicted-class logit drop, and the PE
    attributions sum to it (completeness)."""
    m, x = strong(CASES[case].build()), images(4)
    with torch.no_grad():
        drop = logit_drop(m(x), pe_off_copy(m)(x))
    # Hiera max-pools its queries: the integrand has kinks and Gauss-Legendre converges as 1/n (measured
    # rel_delta 0.05 at 64 steps, 0.016 at 128); the others are smooth
    steps = 128 if case.startswith("hiera") else 32
    frame = as_frame(pe_probe.attribute(m, x, baseline="zero", tokens="keep", n_steps=steps, progress=False))
    assert metric(frame, "fdiff") == pytest.approx(drop, rel=1e-4, abs=1e-5)
    assert metric(frame, "pe_attr") == pytest.approx(drop, rel=0.05)
    assert abs(drop) > 0.01


@pytest.mark.parametrize("case", list(CASES))
def test_probe_gives_a_report(case):
    c = CASES[case]
    m = c.build()
    report = pe_probe.probe(m, images(4), progress=False)
    assert report.meta.get("pe_kind", c.pe_kind) == c.pe_kind
    assert report.meta.get("family", c.family) == c.family
    fam = family_for(m)
    for i in range(fam.depth):  # universal quantities at every global block, pe_kind none included
        assert f"resid_norm@{i}" in report.arrays
    if fam.final_norm is not None:  # per-token norm maps on the grid of the tokens the final norm sees
        seen = {}
        h = fam.final_norm.register_forward_hook(lambda mod, a, out: seen.__setitem__("T", out.shape[1]))
        try:
            with torch.no_grad():
                fam.run(images(1))
        finally:
            h.remove()
        gh, gw = getattr(fam, "final_grid", None) or fam.grid
        assert gh * gw == seen["T"] - fam.num_prefix_tokens
        assert report.arrays["norm_before"].shape[1:] == (gh, gw)


@pytest.mark.parametrize("call", [pe_probe.ablate, pe_probe.attribute])
def test_pvt_v2_has_no_pe_site_to_ablate_or_attribute(call):
    with pytest.raises(pe_probe.UnknownNameError,
                       match=r"the model \(pvt_v2 family, pe_kind=none\) has no PE site to analyse") as info:
        call(pvt_v2(), images(2), progress=False)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("build, message", [
    (lambda: naflexvit(rope_type="axial", pos_embed="none"),
     r"^naflexvit family: rotary PE \(RotaryEmbeddingCat\) in a NaFlexViT is not read"),
    (lambda: _create("cait_xxs24_224", img_size=PX, patch_size=8, embed_dim=32, depth=1, depth_token_only=1,
                     num_heads=2, global_pool=""),
     r"^cait family: global_pool='' gives no pooled features; valid: token, avg$"),
    (lambda: _create("xcit_nano_12_p16_224", img_size=PX, patch_size=8, embed_dim=32, depth=1, cls_attn_layers=1,
                     num_heads=2, global_pool=""),
     r"^xcit family: global_pool='' gives no pooled features; valid: token, avg$"),
    (lambda: _create("pvt_v2_b0", depths=(1, 1, 1, 1), embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1),
                     global_pool=""),
     r"^pvt_v2 family: global_pool='' gives no pooled features; only 'avg' is measured$"),
    (lambda: hiera(global_pool=""),
     r"^hiera family: the head has no pooling \(global_pool=''\), so there are no pooled features$"),
])
def test_unsupported_is_one_line(build, message):
    with pytest.raises(UnsupportedModelError, match=message) as info:
        family_for(build())
    assert "\n" not in str(info.value)


def test_models_without_a_pe_have_kind_none():
    for m in (_create("xcit_nano_12_p16_224", img_size=PX, patch_size=8, embed_dim=32, depth=1, cls_attn_layers=1,
                      num_heads=2, use_pos_embed=False), naflexvit(pos_embed="none")):
        fam = family_for(m)
        assert fam.pe_kind == "none" and fam.sites() == []
        x = images(2)
        with torch.no_grad():
            assert torch.equal(fam.run(x), m(x))
