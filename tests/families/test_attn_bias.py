"""The attention-bias family (BEiT, Swin v1, vit_relpos) against hand-edited copies of the same models.

References are independent of the family: "PE off" is a deep copy whose bias tables are zeroed (or, for
``RelPosMlp``, whose MLP's last layer is zeroed, so its output, the bias, is 0); one block's site a copy with
only that block's table zeroed (shared biases: that block's attention wrapped to drop the keyword);
``shuffle`` a copy whose ``relative_position_index`` is permuted (``b'[i, j] = b[perm i, perm j]``); ``mean`` a
copy whose patch table rows are set to the mean patch-by-patch bias. Models are tiny, random, with weights
and tables scaled up so that the bias changes the logits (checked).
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

timm = pytest.importorskip("timm")

import pe_probe  # noqa: E402
from pe_probe.core import hook_points as H  # noqa: E402
from pe_probe.core.errors import UnsupportedModelError  # noqa: E402
from pe_probe.families import family_for, replaced  # noqa: E402
from pe_probe.families.attn_bias import (  # noqa: E402
    AttnBiasFamily,
    mean_bias,
    shuffle_bias,
    window_perm,
)

VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
SWIN = {"img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 2), "window_size": 4, "num_classes": 5}

#: id -> (timm name, kwargs, number of bias sites, prefix tokens, has pos_embed, shared bias)
MODELS = {
    "beit": ("beit_base_patch16_224", VIT, 2, 1, False, False),
    "beit_shared": ("beit_base_patch16_224", dict(VIT, use_shared_rel_pos_bias=True, use_rel_pos_bias=False),
                    2, 1, False, True),
    "beit_ape": ("beit_base_patch16_224", dict(VIT, use_abs_pos_emb=True), 2, 1, True, False),
    "swin": ("swin_tiny_patch4_window7_224", SWIN, 4, 0, False, False),
    "swinv2": ("swinv2_tiny_window8_256", SWIN, 4, 0, False, False),
    "swinv2_cr": ("swinv2_cr_tiny_224", {k: v for k, v in SWIN.items() if k != "patch_size"}, 4, 0, False, False),
    "relpos_mlp": ("vit_relpos_small_patch16_224", VIT, 2, 0, False, False),
    "relpos_bias": ("vit_relpos_small_patch16_224", dict(VIT, rel_pos_type="bias"), 2, 0, False, False),
    "relpos_cls": ("vit_relpos_medium_patch16_cls_224", VIT, 2, 1, False, False),
    "relpos_rpn": ("vit_relpos_small_patch16_rpn_224", VIT, 2, 0, False, False),
    "relpos_shared": ("vit_relpos_small_patch16_224", dict(VIT, shared_rel_pos=True), 2, 0, False, True),
}


def scaled(model: nn.Module, gain: float = 2.0) -> nn.Module:
    """Layer scales (and res-post norm scales) 1, tables N(0, 2), bias-MLP outputs x10, attention x10*gain, other matrices x gain, head
    N(0, 1): the bias matters."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("gamma", "gamma_1", "gamma_2")) or (n.endswith(("norm1.weight", "norm2.weight"))) and float(p.abs().max()) < 1e-3:  # layer scales; res-post norms start at 1e-5
                p.fill_(1.0)
            elif "relative_position_bias_table" in n:
                p.normal_(0, 2.0)
            elif "rel_pos.mlp.fc2" in n or "cpb_mlp.2" in n or "meta_mlp.fc2" in n:
                p.mul_(10.0)
            elif n.startswith("head"):
                p.normal_(0, 1.0) if p.ndim >= 2 else p.zero_()
            elif p.ndim >= 2 and "qkv" in n:
                p.mul_(10 * gain)
            elif p.ndim >= 2:
                p.mul_(gain)
            elif n == "pos_embed":
                p.normal_(0, 1.0)
    return model


#: Models compared in float64: Swin v2's replacement adds b' - b to the logits, exact up to float rounding,
#: which the scaled-up random network amplifies past 1e-5 in float32.
DOUBLE = {"swinv2"}


def build(key: str) -> nn.Module:
    name, kwargs = MODELS[key][:2]
    torch.manual_seed(0)
    model = scaled(timm.create_model(name, pretrained=False, **kwargs)).eval()
    return model.double() if key in DOUBLE else model


def _like(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return images.to(next(model.parameters()).dtype)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def attentions(model: nn.Module) -> list[nn.Module]:
    """Every block's attention in global forward order (Swin: across stages)."""
    stages = getattr(model, "layers", None) or getattr(model, "stages", None)
    blocks = [b for s in stages for b in s.blocks] if stages is not None else list(model.blocks)
    return [b.attn for b in blocks]


def bias_owners(model: nn.Module) -> list[nn.Module]:
    """The module holding each block's bias parameters (shared: the one shared module, once)."""
    for shared in ("rel_pos_bias", "shared_rel_pos"):
        if getattr(model, shared, None) is not None:
            return [getattr(model, shared)]
    return [getattr(a, "rel_pos", None) or a for a in attentions(model)]


def zero_bias(owner: nn.Module) -> None:
    with torch.no_grad():
        if getattr(owner, "relative_position_bias_table", None) is not None:
            owner.relative_position_bias_table.zero_()
        elif hasattr(owner, "meta_mlp"):  # Swin v2 cr: the MLP's output is the bias
            owner.meta_mlp.fc2.weight.zero_()
            owner.meta_mlp.fc2.bias.zero_()
        elif hasattr(owner, "cpb_mlp"):  # Swin v2: MLP output 0 -> bias 16 * sigmoid(0) = 8 everywhere, which
            owner.cpb_mlp[-1].weight.zero_()  # softmax ignores: the bias off
        else:  # RelPosMlp: the last layer's output is the bias (mode 'cr': no activation)
            owner.mlp.fc2.weight.zero_()
            owner.mlp.fc2.bias.zero_()


class DropKwarg(nn.Module):
    """An attention wrapped so that it gets no shared bias keyword (the hand edit of one shared site)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x, **kwargs):
        return self.attn(x)


def no_bias(model: nn.Module, block: int | None = None) -> nn.Module:
    ref = copy.deepcopy(model)
    shared = any(getattr(model, n, None) is not None for n in ("rel_pos_bias", "shared_rel_pos"))
    if block is None:
        for owner in bias_owners(ref):
            zero_bias(owner)
    elif shared:
        blk = ref.blocks[block]
        blk.attn = DropKwarg(blk.attn)
    else:
        zero_bias(bias_owners(ref)[block])
    return ref


def _logits(model, images):
    with torch.no_grad():
        return model(_like(model, images))


def _with(fam, sites, kind, images, perm=None):
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for s in sites:
            stack.enter_context(replaced(s.module, fam.replacement(s, kind, perm)))
        return fam.run(_like(fam.model, images))


def _kl_agree(intact: torch.Tensor, edited: torch.Tensor) -> tuple[float, float]:
    log_p, log_q = F.log_softmax(intact.double(), -1), F.log_softmax(edited.double(), -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return kl, float((intact.argmax(-1) == edited.argmax(-1)).double().mean())


def _value(result, site: str, metric: str, intervention: str | None = None) -> float:
    frame = getattr(result, "frame", result)
    frame = frame() if callable(frame) else frame  # a result container's .frame(), or a frame
    col = "site" if "site" in frame.columns else "hook"
    rows = frame[(frame[col] == site) & (frame["metric"] == metric)]
    if intervention is not None:
        rows = rows[rows["intervention"] == intervention]
    assert len(rows) == 1, rows
    return float(rows["value"].iloc[0])


def bias_sites(fam):
    return [s for s in fam.sites() if s.kind == "attn_bias"]


# ---------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("key", list(MODELS))
def test_recognised_with_the_expected_sites(key):
    fam = family_for(build(key))
    n_sites, npre, ape = MODELS[key][2:5]
    assert isinstance(fam, AttnBiasFamily) and fam.pe_kind == "attn_bias"
    expected = ([H.INPUT_PE] if ape else []) + [f"blocks.{l}.attn.hook_attn_bias" for l in range(n_sites)]
    assert [s.name for s in fam.sites()] == expected
    assert [s.layer for s in bias_sites(fam)] == list(range(n_sites))
    assert all(not s.additive and s.n_prefix == npre for s in bias_sites(fam))
    assert set(expected) <= set(fam.names())
    meta = fam.meta()
    assert meta["pe_sites"][H.attn_bias_hook(0)] == {"kind": "attn_bias", "layer": 0}
    assert meta["bias_windows"] == key.startswith("swin") and meta["bias_source"]


@pytest.mark.parametrize("key", ["beit", "swin", "relpos_mlp"])
def test_hook_names_lists_the_sites(key):
    names = pe_probe.hook_names(build(key))
    n_sites = MODELS[key][2]
    assert all(H.attn_bias_hook(l) in names for l in range(n_sites))


@pytest.mark.parametrize("key", list(MODELS))
def test_capture_is_the_bias_each_attention_adds(key, images):
    """The site's term equals the bias timm's own method computes, and routing leaves the logits unchanged."""
    model = build(key)
    fam = family_for(model)
    got = {}
    handles = [s.module.register_forward_hook(lambda m, a, o, n=s.name: got.__setitem__(n, o)) for s in bias_sites(fam)]
    try:
        with torch.no_grad():
            routed = fam.run(_like(model, images))
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(routed, _logits(model, images))
    with torch.no_grad():
        for l, attn in enumerate(attentions(model)[: len(got)]):
            if key == "beit_shared":
                want = model.rel_pos_bias()
            elif key == "relpos_shared":
                want = model.shared_rel_pos.get_bias()
            elif hasattr(attn, "rel_pos"):
                want = attn.rel_pos.get_bias()
            elif hasattr(attn, "cpb_mlp"):
                want = swinv2_bias(model, l, images)
            elif hasattr(attn, "meta_mlp"):
                want = attn._relative_positional_encodings()
            else:
                want = attn._get_rel_pos_bias()
            want = want if want.ndim == 4 else want.unsqueeze(0)
            if hasattr(attn, "cpb_mlp"):  # read back from the logits: equal to rounding
                torch.testing.assert_close(got[H.attn_bias_hook(l)], want, atol=1e-4, rtol=1e-5)
            else:
                assert torch.equal(got[H.attn_bias_hook(l)], want)
            n = attn.window_size[0] * attn.window_size[1] if key.startswith("swin") else fam.num_tokens
            assert want.shape == (1, attn.num_heads, n, n)


def swinv2_bias(model: nn.Module, l: int, images: torch.Tensor) -> torch.Tensor:
    """Block l's bias as the attention logits show it: softmax's input in the model minus that in a copy whose
    cpb_mlp outputs 0 (bias 16 * sigmoid(0) = 8 everywhere), plus 8; the first window of the first image."""
    def logits(m):
        got = []
        attn = attentions(m)[l]
        h = attn.softmax.register_forward_pre_hook(lambda mod, a: got.append(a[0]))
        with torch.no_grad():
            m(_like(m, images[:1]))
        h.remove()
        return got[0]
    ref = copy.deepcopy(model)
    zero_bias(attentions(ref)[l])
    return (logits(model) - logits(ref) + 8)[:1]


def test_no_hook_or_shadow_survives_a_run_or_an_error(images):
    for key in ("beit", "swin", "swinv2", "relpos_shared"):
        model = build(key)
        fam = family_for(model)
        with torch.no_grad():
            fam.run(_like(model, images))
        with pytest.raises(RuntimeError), fam.running():
            raise RuntimeError("boom")
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        assert all("_get_rel_pos_bias" not in m.__dict__ and "get_bias" not in m.__dict__ for m in model.modules())


# ---------------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("key", list(MODELS))
def test_off_is_a_zeroed_table_or_mlp(key, images):
    model = build(key)
    fam = family_for(model)
    off = _with(fam, bias_sites(fam), "zero", images)
    ref = _logits(no_bias(model), images)
    torch.testing.assert_close(off, ref, atol=1e-5, rtol=1e-5)
    assert (ref - _logits(model, images)).abs().max() > 1e-2


@pytest.mark.parametrize("key", ["beit", "beit_shared", "swin", "swinv2", "swinv2_cr", "relpos_mlp", "relpos_shared"])
def test_one_site_off_is_one_block_without_bias(key, images):
    model = build(key)
    fam = family_for(model)
    for l in (0, MODELS[key][2] - 1):
        site = fam.find_sites(select=[H.attn_bias_hook(l)])[0]
        got = _with(fam, [site], "zero", images)
        want = _logits(no_bias(model, l), images)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (want - _logits(model, images)).abs().max() > 1e-3


def permuted_index(model: nn.Module, perm: torch.Tensor, n_prefix: int) -> nn.Module:
    """A copy whose every relative_position_index is permuted: index'[i, j] = index[p(i), p(j)], p the
    patch permutation with the prefix kept (Swin: the window permutation perm induces)."""
    ref = copy.deepcopy(model)
    for owner in bias_owners(ref):
        index = owner.relative_position_index
        t = round(index.numel() ** 0.5)
        p = window_perm(perm, t - n_prefix)
        idx = torch.cat([torch.arange(n_prefix), n_prefix + p])
        owner.relative_position_index = index.view(t, t)[idx][:, idx].reshape(index.shape).contiguous()
    return ref


@pytest.mark.parametrize("key", ["beit", "swin", "swinv2", "relpos_bias"])
def test_shuffle_is_a_permuted_position_index(key, images):
    model = build(key)
    fam = family_for(model)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    got = _with(fam, bias_sites(fam), "shuffle", images, perm)
    want = _logits(permuted_index(model, perm, MODELS[key][3]), images)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - _logits(model, images)).abs().max() > 1e-2


@pytest.mark.parametrize("key", ["beit", "swin", "relpos_bias"])
def test_mean_is_a_table_of_the_mean_patch_bias(key, images):
    model = build(key)
    fam = family_for(model)
    npre = MODELS[key][3]
    got = _with(fam, bias_sites(fam), "mean", images)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for owner in bias_owners(ref):
            table, index = owner.relative_position_bias_table, owner.relative_position_index
            t = round(index.numel() ** 0.5)
            patch_idx = index.view(t, t)[npre:, npre:].reshape(-1)
            m = table[patch_idx].mean(0)  # per head
            n_patch_rows = table.shape[0] - 3 * npre  # BEiT's last 3 rows are the class-token entries
            table[:n_patch_rows] = m
    want = _logits(ref, images)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bias_helpers_on_a_hand_example():
    b = torch.arange(2 * 3 * 3, dtype=torch.float).view(1, 2, 3, 3)
    perm = torch.tensor([1, 0])
    s = shuffle_bias(b, 1, perm)
    assert torch.equal(s[0, 0], torch.tensor([[0., 2., 1.], [6., 8., 7.], [3., 5., 4.]]))
    m = mean_bias(b, 1)
    assert torch.equal(m[0, 1, 1:, 1:], torch.full((2, 2), (13 + 14 + 16 + 17) / 4))
    assert torch.equal(m[0, :, 0], b[0, :, 0]) and torch.equal(m[0, :, :, 0], b[0, :, :, 0])
    assert torch.equal(window_perm(torch.tensor([3, 0, 2, 1]), 2), torch.tensor([0, 1]))


@pytest.mark.parametrize("key", ["beit_ape"])
def test_absolute_site_off_is_a_zeroed_pos_embed(key, images):
    model = build(key)
    fam = family_for(model)
    got = _with(fam, fam.find_sites(select=[H.INPUT_PE]), "zero", images)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.pos_embed.zero_()
    want = _logits(ref, images)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - _logits(model, images)).abs().max() > 1e-2


@pytest.mark.parametrize("name, kwargs, match", [
    ("levit_conv_128s", {"img_size": 64, "num_classes": 5}, "levit_conv"),
])
def test_unsupported_models_are_refused_in_one_line(name, kwargs, match):
    model = timm.create_model(name, pretrained=False, **kwargs)
    with pytest.raises(UnsupportedModelError, match=match) as err:
        family_for(model)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- through the API
@pytest.mark.parametrize("key", ["beit", "swin", "swinv2", "relpos_mlp", "relpos_shared"])
def test_ablate_reproduces_the_hand_edited_agreement_and_kl(key, images):
    model = build(key)
    intact = _logits(model, images)
    result = pe_probe.ablate(model, images, ["zero"], progress=False)
    for l in (0, MODELS[key][2] - 1):
        kl, agree = _kl_agree(intact, _logits(no_bias(model, l), images))
        site = H.attn_bias_hook(l)
        assert _value(result, site, "kl", "zero") == pytest.approx(kl, rel=1e-4, abs=1e-7)
        assert _value(result, site, "agree", "zero") == pytest.approx(agree)
        assert kl > 1e-5


@pytest.mark.parametrize("key", ["beit", "swin", "relpos_mlp"])
def test_zero_bias_gets_zero_pe_share(key, images):
    model = build(key)
    for owner in bias_owners(model):
        zero_bias(owner)
    fam = family_for(model)
    result = pe_probe.attribute(model, images[:4], n_steps=8, progress=False, batch_size=4)
    for s in bias_sites(fam):
        assert _value(result, s.name, "pe_abs") == 0.0
        share = _value(result, s.name, "pe_share")
        assert share == 0.0 or math.isnan(share)  # 0, or NaN where token attribution is not split


@pytest.mark.parametrize("key", list(MODELS))
def test_probe_ablate_attribute_run(key, images):
    model = build(key)
    assert pe_probe.probe(model, images[:4], progress=False) is not None
    abl = pe_probe.ablate(model, images[:4], progress=False)
    frame = getattr(abl, "frame", abl)
    frame = frame() if callable(frame) else frame
    assert set(frame["site" if "site" in frame.columns else "hook"]) >= {H.attn_bias_hook(0)}
    attr = pe_probe.attribute(model, images[:2], n_steps=4, progress=False, batch_size=2, warn_rel_delta=float("inf"))
    assert attr is not None


@pytest.mark.parametrize("key", ["beit", "swin", "swinv2", "relpos_shared"])
def test_attribution_path_ends_at_the_hand_edited_model(key, images):
    """At a bias site the path runs from no bias to the model's bias (per image; Swin: per image's windows),
    tokens kept: ``fdiff`` equals the predicted-class logit drop of the copy without that block's bias, and
    completeness holds."""
    model = build(key)
    x = _like(model, images[:4])
    intact = _logits(model, x)
    pred = intact.argmax(-1)
    result = pe_probe.attribute(model, x, baseline="zero", n_steps=32, progress=False, batch_size=4)
    for l in (0, MODELS[key][2] - 1):
        ref = _logits(no_bias(model, l), x)
        drop = float((intact.gather(1, pred[:, None]) - ref.gather(1, pred[:, None])).mean())
        site = H.attn_bias_hook(l)
        assert _value(result, site, "fdiff") == pytest.approx(drop, rel=1e-3, abs=1e-4)
        assert abs(drop) > 1e-3
        assert _value(result, site, "pe_abs") > 0
        assert _value(result, site, "rel_delta") < 0.05


# ---------------------------------------------------------------------------------------------- LeViT
LEVIT = {"img_size": 64, "num_classes": 5, "embed_dim": (32, 48), "depth": (1, 1), "num_heads": (2, 2), "key_dim": 8}


def build_levit(distilled: bool = False) -> nn.Module:
    """A tiny linear LeViT (two stages, one block each, 4x4 then 2x2 tokens): its residual projections' BNs
    start at 0, so they are set to 1; biases N(0, 3), matrices x2, head x20 (the bias changes the logits)."""
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, distilled=distilled, **LEVIT)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "attention_biases" in n:
                p.normal_(0, 3.0)
            elif n.endswith("bn.weight") and float(p.abs().max()) == 0:
                p.fill_(1.0)
            elif n.startswith("head") and p.ndim >= 2:
                p.mul_(20.0)
            elif p.ndim >= 2:
                p.mul_(2.0)
    return model.eval()


def levit_blocks(model: nn.Module) -> list[nn.Module]:
    return [b for stage in model.stages for b in stage.blocks]


def levit_copy(model: nn.Module, edit) -> nn.Module:
    """A copy with ``edit(attn)`` applied to every block's attention (caches cleared: timm caches the biases in
    eval mode)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i, blk in enumerate(levit_blocks(ref)):
            edit(i, blk.attn)
    for m in ref.modules():
        if hasattr(m, "attention_bias_cache"):
            m.attention_bias_cache = {}
    return ref


@pytest.fixture(scope="module")
def images64() -> torch.Tensor:
    return torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def test_levit_sites_and_capture(images64):
    model = build_levit()
    fam = family_for(model)
    assert isinstance(fam, AttnBiasFamily) and fam.grid == (4, 4) and fam.img_size == (64, 64)
    assert [s.name for s in fam.sites()] == [H.attn_bias_hook(0), H.attn_bias_hook(1)]
    assert {s.name for s in fam.sites()} <= set(pe_probe.hook_names(model))
    got = {}
    hs = [s.module.register_forward_hook(lambda m, a, o, n=s.name: got.__setitem__(n, o)) for s in fam.sites()]
    with torch.no_grad():
        routed = fam.run(images64)
    for h in hs:
        h.remove()
    assert torch.equal(routed, _logits(model, images64))
    for l, blk in enumerate(levit_blocks(model)):
        attn = blk.attn
        assert torch.equal(got[H.attn_bias_hook(l)], attn.attention_biases[:, attn.attention_bias_idxs].unsqueeze(0))


@pytest.mark.parametrize("which", [None, 0, 1])
def test_levit_off_is_zeroed_attention_biases(which, images64):
    model = build_levit()
    fam = family_for(model)
    sites = fam.sites() if which is None else fam.find_sites(select=[H.attn_bias_hook(which)])
    got = _with(fam, sites, "zero", images64)
    ref = levit_copy(model, lambda i, a: a.attention_biases.zero_() if which in (None, i) else None)
    want = _logits(ref, images64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - _logits(model, images64)).abs().max() > 1e-2


def test_levit_shuffle_is_a_permuted_bias_index(images64):
    model = build_levit()
    fam = family_for(model)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    got = _with(fam, fam.sites(), "shuffle", images64, perm)

    def permute(i, attn):
        n = attn.attention_bias_idxs.shape[0]
        p = window_perm(perm, n)
        attn.attention_bias_idxs = attn.attention_bias_idxs[p][:, p].contiguous()

    want = _logits(levit_copy(model, permute), images64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - _logits(model, images64)).abs().max() > 1e-2


@pytest.mark.parametrize("distilled", [False, True])
def test_levit_through_the_api(distilled, images64):
    model = build_levit(distilled)
    intact = _logits(model, images64)
    assert pe_probe.probe(model, images64[:4], progress=False) is not None
    result = pe_probe.ablate(model, images64, ["zero"], progress=False)
    attr = pe_probe.attribute(model, images64[:4], baseline="zero", n_steps=32, progress=False, batch_size=4)
    pred = intact[:4].argmax(-1)
    for l in (0, 1):
        ref = _logits(levit_copy(model, lambda i, a, l=l: a.attention_biases.zero_() if i == l else None), images64)
        kl, agree = _kl_agree(intact, ref)
        site = H.attn_bias_hook(l)
        assert _value(result, site, "kl", "zero") == pytest.approx(kl, rel=1e-4, abs=1e-7)
        assert _value(result, site, "agree", "zero") == pytest.approx(agree)
        drop = float((intact[:4].gather(1, pred[:, None]) - ref[:4].gather(1, pred[:, None])).mean())
        assert _value(attr, site, "fdiff") == pytest.approx(drop, rel=1e-3, abs=1e-4)
        assert _value(attr, site, "rel_delta") < 0.05


def test_levit_zero_biases_get_zero_pe_share(images64):
    model = levit_copy(build_levit(), lambda i, a: a.attention_biases.zero_())
    result = pe_probe.attribute(model, images64[:4], n_steps=8, progress=False, batch_size=4)
    for l in (0, 1):
        assert _value(result, H.attn_bias_hook(l), "pe_abs") == 0.0
        assert _value(result, H.attn_bias_hook(l), "pe_attr") == 0.0
