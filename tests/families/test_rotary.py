"""The rotary family (timm ``Eva``: EVA02, rope-ViT axial / mixed / ``_ape``, RoPE-only register GAP, DINOv3)
against hand-edited copies of the same models.

References are independent of the family: "PE off" is a deep copy whose ``rope`` module is removed
(``Eva._pos_embed`` then passes ``rope=None`` and the attention rotates nothing), or whose block ``l`` is
wrapped to drop its ``rope`` keyword; ``shuffle`` a copy whose ``rope`` module is wrapped to permute its patch
rows; the absolute site a copy whose ``pos_embed`` is zeroed. Models are tiny, random, with weights scaled up
so that the rotation changes the logits (checked, so that no comparison passes vacuously).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

timm = pytest.importorskip("timm")

import pe_probe  # noqa: E402
from pe_probe.core import hook_points as H  # noqa: E402
from pe_probe.core.errors import UnknownNameError, UnsupportedModelError  # noqa: E402
from pe_probe.families import family_for, replaced  # noqa: E402
from pe_probe.families.rotary import RotaryFamily, identity_rope  # noqa: E402

SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}

#: id -> (timm name, extra kwargs, has an absolute pos_embed, mixed RoPE)
MODELS = {
    "rope_axial": ("vit_small_patch16_rope_224", {}, False, False),
    "rope_mixed": ("vit_small_patch16_rope_mixed_224", {}, False, True),
    "rope_ape": ("vit_small_patch16_rope_ape_224", {}, True, False),
    "rope_mixed_ape": ("vit_small_patch16_rope_mixed_ape_224", {}, True, True),
    "rope_reg_gap": ("vit_medium_patch16_rope_reg1_gap_256", {}, False, False),
    "eva02": ("eva02_tiny_patch14_224", {}, True, False),
    "dinov3": ("vit_small_patch16_dinov3", {}, False, False),
    "pe_core_map": ("vit_pe_core_tiny_patch16_384", {"attn_pool_num_heads": 2}, True, False),  # norm_pre, map pool
}


def scaled(model: nn.Module, gain: float = 2.0) -> nn.Module:
    """Layer scales 1, attention projections x10*gain, other matrices x gain, head N(0, 1): the PE matters."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("gamma", "gamma_1", "gamma_2")):
                p.fill_(1.0)
            elif n.startswith("head"):
                p.normal_(0, 1.0) if p.ndim >= 2 else p.zero_()
            elif p.ndim >= 2 and ("qkv" in n or "q_proj" in n or "k_proj" in n):
                p.mul_(10 * gain)
            elif p.ndim >= 2:
                p.mul_(gain)
    return model


def build(key: str) -> nn.Module:
    name, extra, _, _ = MODELS[key]
    torch.manual_seed(0)
    model = scaled(timm.create_model(name, pretrained=False, **SMALL, **extra))
    if model.pos_embed is not None:
        with torch.no_grad():
            model.pos_embed.normal_(0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class DropRope(nn.Module):
    """A block wrapped so that its attention gets no rotary table (the hand edit of one site)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x, rope=None, **kwargs):
        return self.block(x, rope=None, **kwargs)


class PermutedRope(nn.Module):
    """A rope module whose tables have their patch rows permuted (row t gets row perm[t])."""

    def __init__(self, rope: nn.Module, perm: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.perm = rope, perm
        if hasattr(rope, "feat_shape"):
            self.feat_shape = rope.feat_shape

    def get_embed(self, *args, **kwargs):
        return self.inner.get_embed(*args, **kwargs)[..., self.perm, :]


def no_rope(model: nn.Module, block: int | None = None) -> nn.Module:
    ref = copy.deepcopy(model)
    if block is None:
        ref.rope = None
    else:
        ref.blocks[block] = DropRope(ref.blocks[block])
    return ref


def _logits(model, images):
    with torch.no_grad():
        return model(images)


def _kl_agree(intact: torch.Tensor, edited: torch.Tensor) -> tuple[float, float]:
    log_p, log_q = F.log_softmax(intact.double(), -1), F.log_softmax(edited.double(), -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return kl, float((intact.argmax(-1) == edited.argmax(-1)).double().mean())


def _with(fam, sites, kind, images, perm=None):
    import contextlib

    with torch.no_grad(), contextlib.ExitStack() as stack:
        for s in sites:
            stack.enter_context(replaced(s.module, fam.replacement(s, kind, perm)))
        return fam.run(images)


def _value(result, site: str, metric: str, intervention: str | None = None) -> float:
    frame = getattr(result, "frame", result)
    frame = frame() if callable(frame) else frame  # a result container's .frame(), or a frame
    col = "site" if "site" in frame.columns else "hook"
    rows = frame[(frame[col] == site) & (frame["metric"] == metric)]
    if intervention is not None:
        rows = rows[rows["intervention"] == intervention]
    assert len(rows) == 1, rows
    return float(rows["value"].iloc[0])


# ---------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("key", list(MODELS))
def test_recognised_with_the_expected_sites(key):
    model = build(key)
    fam = family_for(model)
    assert isinstance(fam, RotaryFamily) and fam.pe_kind == "rotary"
    names = [s.name for s in fam.sites()]
    expected = ([H.INPUT_PE] if MODELS[key][2] else []) + [f"blocks.{l}.attn.hook_rope" for l in range(2)]
    assert names == expected
    assert {s.name: s.kind for s in fam.sites()}.get(H.INPUT_PE, "absolute") == "absolute"
    assert all(s.kind == "rotary" and not s.additive for s in fam.sites() if s.name != H.INPUT_PE)
    assert set(expected) <= set(fam.names())
    meta = fam.meta()
    assert meta["rope_mixed"] == MODELS[key][3] and meta["rope"] == type(model.rope).__name__
    assert meta["pe_sites"][H.rope_hook(0)] == {"kind": "rotary", "layer": 0}


@pytest.mark.parametrize("key", ["rope_axial", "rope_ape"])
def test_hook_names_lists_the_sites(key):
    names = pe_probe.hook_names(build(key))
    assert "blocks.0.attn.hook_rope" in names and "blocks.1.attn.hook_rope" in names
    assert (H.INPUT_PE in names) == MODELS[key][2]


@pytest.mark.parametrize("key", list(MODELS))
def test_capture_is_the_table_each_attention_receives(key, images):
    """The site's term equals the rope module's own table (mixed: block l's slice) and running through the
    family leaves the logits bit-identical."""
    model = build(key)
    fam = family_for(model)
    rope_sites = [s for s in fam.sites() if s.kind == "rotary"]
    got = {}
    handles = [s.module.register_forward_hook(lambda m, a, o, n=s.name: got.__setitem__(n, o)) for s in rope_sites]
    try:
        with torch.no_grad():
            routed = fam.run(images)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(routed, _logits(model, images))
    rope = model.rope
    table = rope.get_embed() if getattr(rope, "feat_shape", None) is not None else rope.get_embed(shape=list(fam.grid))
    for l, s in enumerate(rope_sites):
        want = table[l] if MODELS[key][3] else table
        assert got[s.name].shape == (1,) * (4 - want.ndim) + tuple(want.shape)
        assert torch.equal(got[s.name].reshape(want.shape), want)


def test_no_hook_survives_a_run_or_an_error(images):
    model = build("rope_ape")
    fam = family_for(model)
    with torch.no_grad():
        fam.run(images)
    with pytest.raises(RuntimeError), fam.running():
        raise RuntimeError("boom")
    assert all(not b.attn._forward_pre_hooks for b in model.blocks)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("key", list(MODELS))
def test_off_is_the_identity_rotation_of_a_hand_edited_model(key, images):
    """zero at every rotary site == the copy without a rope module (to 1e-5), and it changes the logits."""
    model = build(key)
    fam = family_for(model)
    rope_sites = [s for s in fam.sites() if s.kind == "rotary"]
    off = _with(fam, rope_sites, "zero", images)
    ref = _logits(no_rope(model), images)
    torch.testing.assert_close(off, ref, atol=1e-5, rtol=1e-5)
    assert (ref - _logits(model, images)).abs().max() > 1e-2


@pytest.mark.parametrize("key", ["rope_axial", "rope_mixed", "eva02"])
@pytest.mark.parametrize("block", [0, 1])
def test_one_site_off_is_one_block_without_rope(key, block, images):
    model = build(key)
    fam = family_for(model)
    site = fam.find_sites(select=[H.rope_hook(block)])[0]
    off = _with(fam, [site], "zero", images)
    ref = _logits(no_rope(model, block), images)
    torch.testing.assert_close(off, ref, atol=1e-5, rtol=1e-5)
    assert (ref - _logits(model, images)).abs().max() > 1e-3


@pytest.mark.parametrize("key", ["rope_axial", "rope_mixed", "rope_reg_gap"])
def test_shuffle_is_a_rope_with_permuted_rows(key, images):
    model = build(key)
    fam = family_for(model)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    got = _with(fam, [s for s in fam.sites() if s.kind == "rotary"], "shuffle", images, perm)
    ref = copy.deepcopy(model)
    ref.rope = PermutedRope(ref.rope, perm)
    want = _logits(ref, images)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - _logits(model, images)).abs().max() > 1e-2


def test_identity_rope_layout():
    table = torch.randn(1, 2, 5, 8)
    ident = identity_rope(table)
    assert torch.equal(ident[..., :4], torch.zeros(1, 2, 5, 4)) and torch.equal(ident[..., 4:], torch.ones(1, 2, 5, 4))


@pytest.mark.parametrize("key", ["rope_ape", "eva02"])
def test_absolute_site_off_is_a_zeroed_pos_embed(key, images):
    model = build(key)
    fam = family_for(model)
    site = fam.find_sites(select=[H.INPUT_PE])[0]
    got = _with(fam, [site], "zero", images)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.pos_embed.zero_()
    want = _logits(ref, images)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - _logits(model, images)).abs().max() > 1e-2


def test_mean_is_refused_in_one_line():
    fam = family_for(build("rope_axial"))
    site = fam.sites()[0]
    with pytest.raises(UnknownNameError, match="mean") as err:
        fam.replacement(site, "mean")
    assert "\n" not in str(err.value)


def test_post_norm_eva_is_refused_in_one_line():
    from timm.models.eva import Eva

    model = Eva(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5, use_post_norm=True,
                use_rot_pos_emb=True)
    with pytest.raises(UnsupportedModelError, match="post-norm") as err:
        family_for(model)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- through the API
@pytest.mark.parametrize("key", ["rope_axial", "rope_mixed", "rope_ape", "eva02"])
def test_ablate_reproduces_the_hand_edited_agreement_and_kl(key, images):
    model = build(key)
    intact = _logits(model, images)
    result = pe_probe.ablate(model, images, ["zero"], progress=False)
    for block in (0, 1):
        kl, agree = _kl_agree(intact, _logits(no_rope(model, block), images))
        site = H.rope_hook(block)
        assert _value(result, site, "kl", "zero") == pytest.approx(kl, rel=1e-4, abs=1e-7)
        assert _value(result, site, "agree", "zero") == pytest.approx(agree)
    assert kl > 1e-4


def identity_rope_model(key: str) -> nn.Module:
    """``key``'s model with a rope that rotates by zero angles (its PE exactly absent)."""
    model = build(key)
    rope = model.rope
    with torch.no_grad():
        if getattr(rope, "pos_embed", None) is not None and isinstance(rope.pos_embed, torch.Tensor):
            rope.pos_embed.copy_(identity_rope(rope.pos_embed))
        for name, buf in list(rope.named_buffers()) + list(rope.named_parameters()):
            if name != "pos_embed":
                buf.zero_()
    return model


@pytest.mark.parametrize("key", ["rope_axial", "rope_mixed"])
def test_identity_rope_gets_zero_pe_share(key, images):
    model = identity_rope_model(key)
    fam = family_for(model)
    got = {}
    handles = [s.module.register_forward_hook(lambda m, a, o, n=s.name: got.__setitem__(n, o)) for s in fam.sites()]
    with torch.no_grad():
        fam.run(images[:2])
    for h in handles:
        h.remove()
    assert all(torch.equal(t, identity_rope(t)) for t in got.values())  # the model's PE is exactly off
    result = pe_probe.attribute(model, images[:4], n_steps=8, progress=False, batch_size=4)
    for s in fam.sites():
        assert _value(result, s.name, "pe_abs") == 0.0
        share = _value(result, s.name, "pe_share")
        assert share == 0.0 or math.isnan(share)  # 0, or NaN where token attribution is not split (tokens="keep")


@pytest.mark.parametrize("key", list(MODELS))
def test_probe_ablate_attribute_run(key, images):
    model = build(key)
    report = pe_probe.probe(model, images[:4], progress=False)
    assert report is not None
    abl = pe_probe.ablate(model, images[:4], progress=False)
    frame = getattr(abl, "frame", abl)
    frame = frame() if callable(frame) else frame
    assert set(frame[("site" if "site" in frame.columns else "hook")]) >= {H.rope_hook(0), H.rope_hook(1)}
    assert set(frame["intervention"]) == {"zero", "mean", "shuffle"} if MODELS[key][2] else \
        set(frame["intervention"]) == {"zero", "shuffle"}
    attr = pe_probe.attribute(model, images[:2], n_steps=4, progress=False, batch_size=2, warn_rel_delta=float("inf"))
    assert attr is not None
    # the default row-mean baseline: a rotation has no row mean, so the rope sites start from the identity
    # rotation (the PE off) and say so; an absolute pos_embed keeps its row mean
    rope = [s.name for s in family_for(model).sites() if s.kind == "rotary"]
    assert attr.meta["baseline"] == "mean" and attr.meta["zero_baseline"] == rope and rope
    zero = pe_probe.attribute(model, images[:2], baseline="zero", sites=rope[:1], n_steps=4, progress=False,
                              batch_size=2, warn_rel_delta=float("inf"))
    assert zero.meta["zero_baseline"] == []
    assert [r for r in zero.rows if r[3] == "fdiff"] == [r for r in attr.rows if r[0] == rope[0] and r[3] == "fdiff"]


@pytest.mark.parametrize("key", ["rope_axial", "rope_mixed"])
def test_attribution_path_ends_at_the_hand_edited_model(key, images):
    """At a rotary site the integration path runs from the identity rotation to the model's table, tokens kept:
    ``fdiff`` (mean of f(x) - f(baseline) for the predicted class) equals the target-logit drop of the copy
    whose block l has no rope, and completeness holds (pe_attr - delta = fdiff, delta small)."""
    model = build(key)
    x = images[:4]
    intact = _logits(model, x)
    pred = intact.argmax(-1)
    result = pe_probe.attribute(model, x, baseline="zero", n_steps=32, progress=False, batch_size=4)
    for block in (0, 1):
        ref = _logits(no_rope(model, block), x)
        drop = float((intact.gather(1, pred[:, None]) - ref.gather(1, pred[:, None])).mean())
        site = H.rope_hook(block)
        assert _value(result, site, "fdiff") == pytest.approx(drop, rel=1e-3, abs=1e-4)
        assert abs(drop) > 1e-3
        assert _value(result, site, "pe_abs") > 0
        assert _value(result, site, "rel_delta") < 0.05


def test_eva_without_rope_is_an_absolute_model(images):
    """EVA-1 (an Eva with pos_embed only): pe_kind absolute, its one site off == a zeroed pos_embed."""
    torch.manual_seed(0)
    model = scaled(timm.create_model("eva_giant_patch14_224", pretrained=False, **SMALL)).eval()
    with torch.no_grad():
        model.pos_embed.normal_(0, 1.0)
    fam = family_for(model)
    assert fam.name == "rotary" and fam.pe_kind == "absolute" and [s.name for s in fam.sites()] == [H.INPUT_PE]
    got = _with(fam, fam.sites(), "zero", images)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.pos_embed.zero_()
    want = _logits(ref, images)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - _logits(model, images)).abs().max() > 1e-2


@pytest.mark.parametrize("key", ["eva02", "pe_core_map", "rope_ape"])
def test_derived_block_pe_is_norm1_of_the_input_pe(key):
    """What block l sees of pos_embed: norm1_l(norm_pre(pos_embed)) (norm_pre: PE-core towers), NaN rows for
    prefix slots without a row (no_embed_class)."""
    model = build(key)
    fam = family_for(model)
    assert fam.receiving_blocks == [0, 1] and fam.pe_derived
    pos = model.pos_embed
    npt = model.num_prefix_tokens
    if pos.shape[1] < fam.num_tokens:
        pos = torch.cat([torch.full((1, npt, pos.shape[2]), float("nan")), pos], dim=1)
    with torch.no_grad():
        pre = pos if isinstance(model.norm_pre, nn.Identity) else model.norm_pre(pos)
        for l, blk in enumerate(model.blocks):
            want = blk.norm1(pre)
            got = fam.derived()[H.block_hook(l, H.PE)]()
            torch.testing.assert_close(got, want, equal_nan=True)
            assert got.shape == (1, fam.num_tokens, fam.embed_dim)
