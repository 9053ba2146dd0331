"""The conditional family (Twins PEG) against independent computations.

- the PEG term read at ``pos_block.{s}.hook_peg`` is the depthwise conv of the tokens the PEG receives,
  computed here with ``torch.nn.functional.conv2d`` from the conv's weights (and equals timm's PosConv output
  minus its input);
- "PE off" through the family equals a hand-edited copy whose conv weights and bias are zero (timm's PosConv,
  stride 1, then returns its input), to 1e-5, and ablating the site with ``pe_probe.ablate`` reproduces that
  copy's agreement and KL;
- a Twins whose PEG convs are exactly zero gets zero PE share in attribution;
- global block numbering, hook names, and a probe report.
"""

from __future__ import annotations

import copy

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

DEPTHS = (1, 2, 1)


def twins(scale: float = 1.0, zero_pe: bool = False, **kw) -> torch.nn.Module:
    """A tiny Twins PCPVT (32 px, 3 stages of 1, 2, 1 blocks) whose PEGs matter (conv weights and bias scaled)."""
    torch.manual_seed(0)
    m = timm.create_model("twins_pcpvt_small", pretrained=False, img_size=32, depths=DEPTHS, embed_dims=(16, 32, 32),
                          num_heads=(1, 2, 2), sr_ratios=(2, 1, 1), mlp_ratios=(2, 2, 2), num_classes=5, **kw).eval()
    with torch.no_grad():
        for peg in m.pos_block:
            conv = peg.proj[0]
            if zero_pe:
                conv.weight.zero_()
                conv.bias.zero_()
            else:
                conv.weight.mul_(scale)
                conv.bias.normal_(0, scale)
        m.head.weight.normal_(0, 1.0)
    return m


def images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def pe_off_copy(model: torch.nn.Module, stages) -> torch.nn.Module:
    """The hand-edited forward: a copy whose PEG convs of ``stages`` contribute nothing (weights, bias 0)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for s in stages:
            m.pos_block[s].proj[0].weight.zero_()
            m.pos_block[s].proj[0].bias.zero_()
    return m


def test_structure_global_block_numbering_and_names():
    m = twins()
    fam = family_for(m)
    assert fam.name == "conditional" and fam.pe_kind == "conditional"
    flat = [blk for stage in m.blocks for blk in stage]
    assert len(fam.blocks) == sum(DEPTHS) and all(a is b for a, b in zip(fam.blocks, flat))
    sites = fam.sites()
    assert [s.name for s in sites] == [H.peg_hook(s) for s in range(3)] == ["pos_block.0.hook_peg",
                                                                          "pos_block.1.hook_peg",
                                                                          "pos_block.2.hook_peg"]
    assert [s.layer for s in sites] == [0, 1, 3]  # the global index of each stage's first block
    assert {s.kind for s in sites} == {"conditional"}
    names = pe_probe.hook_names(m)
    for s in sites:  # a PEG right after the output of the block it follows
        assert names.index(s.name) == names.index(H.block_hook(s.layer, H.RESID_POST)) + 1
    assert names[:2] == [H.block_hook(0, H.RESID_PRE), H.block_hook(0, H.TOK)]
    assert H.block_hook(sum(DEPTHS) - 1, H.RESID_POST) in names and H.block_hook(sum(DEPTHS), H.RESID_PRE) not in names


def test_stream_entering_each_block_is_flattened_b_t_d():
    m, x = twins(), images(2)
    fam = family_for(m)
    taps, seen, mine = fam.stream_taps(), {}, {}
    hooks = [blk.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(i, a[0].clone()))
             for i, blk in enumerate(b for stage in m.blocks for b in stage)]
    for i in range(fam.depth):
        t = taps[H.block_hook(i, H.RESID_PRE)]
        hooks.append(t.module.register_forward_pre_hook(lambda mod, a, i=i, t=t: mine.__setitem__(i, t.read(a, {}, None))))
    try:
        with torch.no_grad():
            fam.run(x)
    finally:
        for h in hooks:
            h.remove()
    tokens = [64, 16, 16, 4]  # 8x8 grid, then 4x4 (2 blocks), then 2x2
    for i in range(fam.depth):
        assert mine[i].shape == (2, tokens[i], fam.blocks[i].norm1.normalized_shape[0])
        torch.testing.assert_close(mine[i], seen[i], rtol=0, atol=0)


def test_intact_run_is_the_plain_forward_and_no_hook_is_left():
    m, x = twins(scale=3.0), images()
    fam = family_for(m)
    with torch.no_grad():
        plain, routed = m(x), fam.run(x)
    assert torch.equal(plain, routed)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_peg_term_is_the_depthwise_conv_of_what_the_peg_receives(stage):
    m, x = twins(scale=3.0), images(2)
    fam = family_for(m)
    site = fam.sites()[stage]
    got = {}
    # kept as read (no copy), as a recorder would: the term must stay what the PEG added after the forward
    h1 = site.module.register_forward_hook(lambda mod, a, out: got.__setitem__("term", out))
    h2 = m.pos_block[stage].register_forward_hook(
        lambda mod, a, out: got.__setitem__("io", (a[0].clone(), a[1], out.clone())))
    try:
        with torch.no_grad():
            fam.run(x)
    finally:
        h1.remove()
        h2.remove()
    x_in, (hh, ww), out = got["io"]
    b, n, c = x_in.shape
    conv = m.pos_block[stage].proj[0]
    img = x_in.transpose(1, 2).reshape(b, c, hh, ww)
    hand = F.conv2d(img, conv.weight, conv.bias, padding=1, groups=c).flatten(2).transpose(1, 2)
    assert got["term"].shape == (b, n, c)
    torch.testing.assert_close(got["term"], hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["term"], out - x_in, rtol=1e-5, atol=1e-5)  # PosConv output minus its input
    assert got["term"].abs().max() > 0.1  # the check is not vacuous


@pytest.mark.parametrize("stages", [[0], [1], [0, 1, 2]])
def test_off_equals_hand_edited_forward(stages):
    m, x = twins(scale=3.0), images()
    fam = family_for(m)
    sites = [fam.sites()[s] for s in stages]
    with torch.no_grad(), replaced(sites[0].module, fam.replacement(sites[0], "zero")):
        if len(sites) > 1:
            with replaced(sites[1].module, fam.replacement(sites[1], "zero")), \
                    replaced(sites[2].module, fam.replacement(sites[2], "zero")):
                off = fam.run(x)
        else:
            off = fam.run(x)
    with torch.no_grad():
        hand, intact = pe_off_copy(m, stages)(x), m(x)
    torch.testing.assert_close(off, hand, rtol=1e-5, atol=1e-5)
    assert (hand - intact).abs().max() > 1e-3  # the PEG matters, so the check can fail


def test_ablate_reproduces_hand_edited_agreement_and_kl():
    m, x = twins(scale=3.0), images(16)
    with torch.no_grad():
        intact, hand = m(x), pe_off_copy(m, [0])(x)
    agree, kl = agree_kl(intact, hand)
    frame = as_frame(pe_probe.ablate(m, x, ["zero"], sites=["pos_block.0.hook_peg"], progress=False))
    assert set(frame[site_col(frame)]) == {"pos_block.0.hook_peg"}
    if "pe_kind" in frame.columns:
        assert set(frame["pe_kind"]) == {"conditional"}
    assert frame_value(frame, "pos_block.0.hook_peg", "zero", "agree") == pytest.approx(agree, abs=1e-9)
    assert frame_value(frame, "pos_block.0.hook_peg", "zero", "kl") == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert kl > 1e-4


def test_mean_and_shuffle_ablations_run_and_change_the_output():
    m, x = twins(scale=3.0), images(8)
    frame = as_frame(pe_probe.ablate(m, x, ["mean", "shuffle"], sites=["pos_block.0.hook_peg"], progress=False))
    assert frame_value(frame, "pos_block.0.hook_peg", "mean", "kl") > 0
    assert frame_value(frame, "pos_block.0.hook_peg", "shuffle", "kl") > 0


@pytest.mark.filterwarnings("ignore:.*attributions there are not complete")
def test_zero_peg_gets_zero_pe_share():
    m, x = twins(zero_pe=True), images(4)
    att = pe_probe.attribute(m, x, n_steps=8, progress=False)
    frame = as_frame(att)
    shares = frame[frame["metric"] == "pe_share"]
    assert len(shares) == 3
    assert shares["value"].abs().max() == 0.0


@pytest.mark.filterwarnings("ignore:.*attributions there are not complete")
def test_nonzero_peg_gets_nonzero_pe_share():
    m, x = twins(scale=3.0), images(4)
    att = pe_probe.attribute(m, x, sites=["pos_block.0.hook_peg"], n_steps=8, progress=False)
    frame = as_frame(att)
    assert frame[frame["metric"] == "pe_share"]["value"].abs().max() > 0


def test_probe_gives_a_report():
    m, x = twins(scale=3.0), images(4)
    report = pe_probe.probe(m, x, progress=False)
    assert report.meta["family"] == "conditional" and report.meta["pe_kind"] == "conditional"
    for i in range(sum(DEPTHS)):
        assert f"resid_norm@{i}" in report.arrays
    assert family_for(m).final_grid == (2, 2)  # 8x8 patches, halved by each later stage's patch embedding
    assert report.arrays["norm_before"].shape == (4, 2, 2)


def test_unsupported_pooling_is_one_line():
    m = twins(global_pool="")
    with pytest.raises(UnsupportedModelError, match=r"^conditional family: global_pool='' gives no pooled features"):
        family_for(m)


def test_hook_pooled_is_the_mean_of_the_final_norm_tokens():
    m, x = twins(scale=3.0), images(2)
    fam = family_for(m)
    assert pe_probe.hook_names(m)[-1] == H.POOLED
    taps, got = fam.stream_taps(), {}
    hooks = [taps[H.POOLED].module.register_forward_pre_hook(lambda mod, a: got.__setitem__("pooled", a[0])),
             m.norm.register_forward_hook(lambda mod, a, out: got.__setitem__("final", out))]
    try:
        with torch.no_grad():
            fam.run(x)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(got["pooled"], got["final"].mean(dim=1), rtol=0, atol=0)


def test_attribution_ends_at_the_hand_edited_model_and_is_complete():
    """tokens kept, PE baseline off: the path ends at the copy without that PEG's conv, so fdiff is the copy's
    predicted-class logit drop, and the PE attributions sum to it (completeness)."""
    m, x = twins(scale=3.0), images(4)
    with torch.no_grad():
        drop = logit_drop(m(x), pe_off_copy(m, [0])(x))
    frame = as_frame(pe_probe.attribute(m, x, sites=["pos_block.0.hook_peg"], baseline="zero", tokens="keep", n_steps=32,
                                        progress=False))
    assert metric(frame, "fdiff") == pytest.approx(drop, rel=1e-4, abs=1e-5)
    assert metric(frame, "pe_attr") == pytest.approx(drop, rel=0.02)
    assert abs(drop) > 0.1
