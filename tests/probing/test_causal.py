"""Causal tests of the PE (ablate, attribute) on toy models with known answers.

(a) PEs that are exactly zero; (b) a hand-built model whose only class information is positional; (c) agreement
with hand-written interventions; (d) completeness of the attributions within captum's delta; (e) no hook left.
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import timm
import torch
from torch.utils.data import TensorDataset

import pe_probe
import pe_probe.families.base as family_base
import pe_probe
from pe_probe import PEVisionTransformer
from pe_probe.analysis.causal import ablation_frame, attribution_of
from pe_probe.core.errors import DataError, UnknownNameError
from pe_probe.core.hook_points import INPUT, LAST
from pe_probe.probing.attribution import site_attributions
from pe_probe.probing.hooks import eval_grad
from pe_probe.probing.sites import find_sites, intervene, shuffle_permutation

from ..conftest import TINY

torch.set_num_threads(1)  # tiny models on shared cores: threads only add contention


# ---------------------------------------------------------------------------------------------- helpers
def ablate(*args, **kw) -> pd.DataFrame:
    """``pe_probe.ablate``'s result as the tidy frame these checks read, its meta as ``attrs``."""
    return ablation_frame(pe_probe.ablate(*args, **kw))


def attribute(*args, **kw):
    """``pe_probe.attribute``'s result as an ``Attribution`` (``.frame``, ``.meta``, maps)."""
    return attribution_of(pe_probe.attribute(*args, **kw))


def strong_pe(mode: str, qkv_scale: float = 10.0, **kw) -> PEVisionTransformer:
    """A random tiny model whose PEs are large enough for ablations to change predictions.

    At timm's init (std 0.02) attention is nearly uniform, and uniform attention cannot see a permutation of the
    PE rows (``mean_t v(tok_t + pe_pi(t))`` does not depend on pi): qkv is scaled up to make it selective.
    """
    torch.manual_seed(0)
    m = PEVisionTransformer(mode, **{**TINY, **kw})
    with torch.no_grad():
        m.pos_embed.mul_(50)
        for blk in m.blocks:
            blk.attn.qkv.weight.mul_(qkv_scale)
            if blk.pe_norm is not None:
                blk.pe_norm.weight.mul_(3)
    return m.eval()


def images(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def hooks_on(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def metrics(intact: torch.Tensor, ablated: torch.Tensor) -> dict[str, float]:
    """agree and kl written out by hand."""
    p = torch.softmax(intact.double(), -1)
    kl = (p * (torch.log(p) - torch.log_softmax(ablated.double(), -1))).sum(-1).mean()
    return dict(agree=float((intact.argmax(-1) == ablated.argmax(-1)).double().mean()), kl=float(kl))


def value(frame: pd.DataFrame, hook: str, intervention: str, metric: str) -> float:
    sel = frame[(frame.site == hook) & (frame.intervention == intervention) & (frame.metric == metric)]
    assert len(sel) == 1, (hook, intervention, metric)
    return float(sel.value.iloc[0])


def position_toy() -> tuple[PEVisionTransformer, TensorDataset, torch.Tensor]:
    """A hand-built GAP model whose only class information is positional (known answers).

    Each image is dark except one bright 4x4 patch at position u (16 positions, 4 copies each); the label is the
    grid row u // 4. patch_embed writes brightness as +-(e0 - e1); the PE of row t is e_{2+t} - e_{2+t+1}
    (cyclic). Every token then has entries {+1, -1, +1, -1}: mean 0, fixed norm, so LN is a known scaling
    (sqrt 8). Block 0's MLP has one unit per position t that fires only for a bright token whose PE is row t and
    writes class channel 18 + t // 4; all other attention/MLP outputs are exactly 0. GAP + head read the class
    channels; head bias 1e-3 on class 3 breaks the tie when no unit fires.
    Intact: top1 = 1. Zero or mean PE (the mean of the rows is exactly 0): no unit fires, every image -> 3.
    Shuffle: a bright patch at u reads PE row perm[u] -> class perm[u] // 4.
    """
    m = PEVisionTransformer("default", global_pool="avg", **{**TINY, "num_classes": 4})
    k, c = math.sqrt(8.0), 10.0
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for ln in [m.norm] + [b.norm1 for b in m.blocks] + [b.norm2 for b in m.blocks]:
            ln.weight.fill_(1.0)
        m.patch_embed.proj.weight[0].fill_(2.0 / 48)
        m.patch_embed.proj.bias[0] = -1.0
        m.patch_embed.proj.weight[1].fill_(-2.0 / 48)
        m.patch_embed.proj.bias[1] = 1.0
        for t in range(16):
            m.pos_embed[0, t, 2 + t] = 1.0
            m.pos_embed[0, t, 2 + (t + 1) % 16] = -1.0
        mlp = m.blocks[0].mlp
        for j in range(16):
            mlp.fc1.weight[j, 0], mlp.fc1.weight[j, 1] = c, -c
            mlp.fc1.weight[j, 2 + j], mlp.fc1.weight[j, 2 + (j + 1) % 16] = c, -c
            mlp.fc1.bias[j] = -3.5 * c * k  # match: c k (4 - 3.5) > 0; anything else <= c k (1 - 3.5)
            mlp.fc2.weight[18 + j // 4, j] = 1.0 / (0.5 * c * k)
        for g in range(4):
            m.head.weight[g, 18 + g] = 64.0  # confident logits
        m.head.bias[3] = 1e-3
    x = torch.zeros(64, 3, 16, 16)
    pos = torch.arange(64) % 16
    for n, u in enumerate(pos.tolist()):
        r, col = divmod(u, 4)
        x[n, :, 4 * r:4 * r + 4, 4 * col:4 * col + 4] = 1.0
    return m.eval(), TensorDataset(x, pos // 4), pos


def zero_pes(m: PEVisionTransformer) -> PEVisionTransformer:
    with torch.no_grad():
        for mod in [b.pe_norm for b in m.blocks if b.pe_norm is not None] + [m.last_pe_norm]:
            if mod is not None:
                mod.weight.zero_()
                mod.bias.zero_()
    return m


# ---------------------------------------------------------------------------------------------- (a) zero PEs
@pytest.mark.parametrize("mode", ["lape", "pvg", "mpvg"])
def test_zero_pes_change_nothing_and_get_no_attribution(mode):
    m = zero_pes(strong_pe(mode, qkv_scale=2.0))
    names = [s.hook for s in find_sites(m).sites if s.layer != INPUT]
    for effect in ("direct", "total"):
        f = ablate(m, images(), sites=names, effect=effect, batch_size=5, progress=False)
        assert list(dict.fromkeys(f.site)) == names
        assert (f[f.metric == "agree"].value == 1.0).all()
        assert (f[f.metric == "kl"].value == 0.0).all()  # bit-identical logits
    a = attribute(m, images(4), sites=names, n_steps=64, batch_size=2, progress=False)
    share = a.frame[a.frame.metric == "pe_share"]
    assert len(share) == len(names) and (share.value == 0.0).all()


# ---------------------------------------------------------------------------------------------- (b) position toy
def test_position_toy_known_answers():
    m, ds, pos = position_toy()
    f = ablate(m, ds, batch_size=16, seed=3, progress=False)
    assert list(f.columns) == ["site", "pe_kind", "layer", "intervention", "metric", "value"]
    assert f.attrs["intact_top1"] == 1.0
    assert set(f.site) == {"hook_input_pe"} and set(f.layer) == {INPUT}
    perm = shuffle_permutation(16, 3)
    assert f.attrs["shuffle_perm"] == perm.tolist()
    expect = float(((perm[pos] // 4) == (pos // 4)).double().mean())
    assert value(f, "hook_input_pe", "shuffle", "top1") == pytest.approx(expect, abs=1e-12)
    assert value(f, "hook_input_pe", "shuffle", "agree") == pytest.approx(expect, abs=1e-12)
    assert expect < 0.5
    for kind in ("zero", "mean"):  # every image -> class 3: accuracy destroyed
        assert value(f, "hook_input_pe", kind, "top1") == pytest.approx(0.25)
        assert value(f, "hook_input_pe", kind, "agree") == pytest.approx(0.25)
        assert value(f, "hook_input_pe", kind, "kl") > 0.1


def test_position_toy_as_timm_model_gives_the_same_frame():
    m, ds, _ = position_toy()
    t = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", class_token=False,
                          fc_norm=False, **{**TINY, "num_classes": 4})
    t.load_state_dict(m.state_dict())
    t.eval()
    x = ds.tensors[0]
    with torch.no_grad():
        assert torch.equal(t(x), m(x))
    f_pe, f_timm = ablate(m, ds, batch_size=16, progress=False), ablate(t, ds, batch_size=16, progress=False)
    pd.testing.assert_frame_equal(f_pe, f_timm)
    assert f_timm.attrs["pe_mode"] == "timm" and f_timm.attrs["reuse_prefix"] is False
    # pos_embed is read once, at the input: its total effect is the same frame under the other name
    total = ablate(t, ds, sites=["hook_pos_embed"], batch_size=16, progress=False)
    pd.testing.assert_frame_equal(total.replace({"site": {"hook_pos_embed": "hook_input_pe"}}), f_timm)


# ---------------------------------------------------------------------------------------------- (c) hand hooks
def test_total_effect_equals_a_hand_written_forward_hook():
    """Total effect at block 2: the chain value (``pe_norm``'s output) replaced, as a plain hook would."""
    m = strong_pe("pvg")
    x = images()
    perm = shuffle_permutation(16, 0)
    h = m.blocks[2].pe_norm.register_forward_hook(lambda mod, a, out: out[:, perm])  # GAP: no prefix row
    try:
        with torch.no_grad():
            hand = m(x)
    finally:
        h.remove()
    with torch.no_grad():
        intact = m(x)
    want = metrics(intact, hand)
    assert want["kl"] > 1e-6  # the intervention does something
    for reuse in (True, False):
        f = ablate(m, x, ["shuffle"], sites=["blocks.2.hook_pe"], effect="total", reuse_prefix=reuse, batch_size=5,
                   progress=False)
        assert value(f, "blocks.2.hook_pe", "shuffle", "agree") == pytest.approx(want["agree"], abs=1e-12)
        assert value(f, "blocks.2.hook_pe", "shuffle", "kl") == pytest.approx(want["kl"], rel=1e-6)


@pytest.mark.parametrize("mode,block", [("pvg", 1), ("mpvg", 2), ("lape", 0)])
def test_direct_effect_equals_a_hand_written_forward(mode, block):
    """Direct: only the term block i adds changes; the chain and the Last LN keep the intact PE."""
    m = strong_pe(mode)
    x = images()
    sources = m.pe_config.pe_sources(len(m.blocks))
    with torch.no_grad():
        intact = m(x)
        h, pos0 = m._embed(x)
        pes = []
        for i, (blk, src) in enumerate(zip(m.blocks, sources)):
            pe = None if src is None else blk.pe_norm(pos0 if src < 0 else pes[src])
            pes.append(pe)
            h = blk(h, torch.zeros_like(pe) if i == block else pe)
        hand = m.forward_head(m._last_ln(h, pos0, pes))
    want = metrics(intact, hand)
    name = f"blocks.{block}.hook_pe"
    for reuse in (True, False):
        f = ablate(m, x, ["zero"], sites=[name], reuse_prefix=reuse, batch_size=5, progress=False)
        assert value(f, name, "zero", "agree") == pytest.approx(want["agree"], abs=1e-12)
        assert value(f, name, "zero", "kl") == pytest.approx(want["kl"], rel=1e-6, abs=1e-12)
    total = ablate(m, x, ["zero"], sites=[name], effect="total", batch_size=5, progress=False)
    if block < len(m.blocks) - 1:  # a later block reads this PE through the chain
        assert value(total, name, "zero", "kl") != pytest.approx(want["kl"], rel=1e-3)


def test_direct_input_site_changes_only_x0():
    """mpvg: pos_0 also feeds block 1's LN' and the Last LN; the input site must change only x_0."""
    m = strong_pe("mpvg")
    x = images()
    with torch.no_grad():
        intact = m(x)
        x0 = m.norm_pre(m.patch_embed(x))  # GAP: no class token, and the input term is zero
        xl, pes = m._blocks(x0, m.pos_embed)
        hand = m.forward_head(m._last_ln(xl, m.pos_embed, pes))
    want = metrics(intact, hand)
    f = ablate(m, x, ["zero"], sites=["hook_input_pe"], batch_size=5, progress=False)
    assert value(f, "hook_input_pe", "zero", "kl") == pytest.approx(want["kl"], rel=1e-6)
    tot = ablate(m, x, ["zero"], effect="total", batch_size=5, progress=False)
    assert "hook_pos_embed" in set(tot.site) and "hook_input_pe" not in set(tot.site)
    assert value(tot, "hook_pos_embed", "zero", "kl") != pytest.approx(want["kl"], rel=1e-3)


@pytest.mark.parametrize("mode", ["default", "lape", "pvg", "mpvg"])
@pytest.mark.parametrize("effect", ["direct", "total"])
def test_prefix_reuse_gives_the_frame_of_full_passes(mode, effect):
    """Rerunning from the intact activations at the site (``_blocks(start=...)``) == full passes, at lower cost."""
    m = strong_pe(mode)
    x = images(10)
    ref = ablate(m, x, effect=effect, reuse_prefix=False, batch_size=4, progress=False)
    f = ablate(m, x, effect=effect, batch_size=4, progress=False)
    pd.testing.assert_frame_equal(f, ref, check_exact=False, rtol=1e-9, atol=1e-12)
    sites = len(set(ref.site))
    assert ref.attrs["cost"]["full_pass_equivalents_per_image"] == ref.attrs["cost"]["plain_passes_per_image"] \
        == 1 + 3 * sites
    if mode != "default":
        assert f.attrs["cost"]["full_pass_equivalents_per_image"] < f.attrs["cost"]["plain_passes_per_image"]


def test_timm_vit_input_pe_equals_writing_the_parameter():
    t = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval()  # class token, 17 PE rows
    with torch.no_grad():
        t.pos_embed.mul_(50)
    x = images()
    before = t.pos_embed.detach().clone()
    f = ablate(t, x, batch_size=5, seed=2, progress=False)
    assert torch.equal(t.pos_embed, before) and hooks_on(t) == 0
    perm = shuffle_permutation(16, 2)
    with torch.no_grad():
        intact = t(x)
        for kind in ("zero", "mean", "shuffle"):
            c = copy.deepcopy(t)
            c.pos_embed.copy_(intervene(t.pos_embed, kind, 1, perm))
            want = metrics(intact, c(x))
            assert value(f, "hook_input_pe", kind, "agree") == pytest.approx(want["agree"], abs=1e-12)
            assert value(f, "hook_input_pe", kind, "kl") == pytest.approx(want["kl"], rel=1e-6, abs=1e-12)
    assert (c.pos_embed[0, 0] == t.pos_embed[0, 0]).all()  # shuffle kept the class row


def test_mpvg_last_pe_is_a_constant_offset():
    """GAP + linear head: the Last-LN PE adds W @ mean_rows(pe) to every image; mean/shuffle keep that mean."""
    m = strong_pe("mpvg")
    with torch.no_grad():
        m.last_pe_norm.weight.mul_(20)
    f = ablate(m, images(), sites=["hook_last_pe"], batch_size=6, progress=False)
    assert set(f.layer) == {LAST}
    for kind in ("mean", "shuffle"):
        assert value(f, "hook_last_pe", kind, "agree") == 1.0
        assert value(f, "hook_last_pe", kind, "kl") < 1e-10
    assert value(f, "hook_last_pe", "zero", "kl") > 1e-4


# ---------------------------------------------------------------------------------------------- (d) completeness
def _hand_f(model: PEVisionTransformer, site, x, tgt, pe_value):
    """f at (tokens 0, PE = pe_value(PE)) of one site, by plain forward hooks (an independent path)."""
    hs = [site.tok.register_forward_hook(lambda mod, a, out: out * 0),
          site.pe.register_forward_hook(lambda mod, a, out: pe_value(out))]
    try:
        with torch.no_grad():
            return model(x).gather(1, tgt[:, None])[:, 0]
    finally:
        for h in hs:
            h.remove()


def _hand_act(model, module, x, batch: int):
    store = {}
    h = module.register_forward_hook(lambda m_, a, out: store.__setitem__("v", out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    v = store["v"]
    return v.expand(batch, *v.shape[1:])


@pytest.mark.parametrize("mode", ["lape", "mpvg"])
@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_completeness_within_delta(mode, baseline):
    m = strong_pe(mode, qkv_scale=2.0)
    x = images(6)
    runner = find_sites(m)
    with torch.no_grad():
        tgt = m(x).argmax(-1)
        fx = m(x).gather(1, tgt[:, None])[:, 0]
    checked = 0
    with eval_grad(m):
        for site in runner.sites:
            if site.layer == INPUT:
                continue
            base = ((lambda o: torch.zeros_like(o)) if baseline == "zero"
                    else (lambda o, n=site.n_prefix: intervene(o, "mean", n)))
            a_tok, a_pe, delta = site_attributions(runner, site, x, tgt, baseline=baseline, n_steps=32)
            assert a_pe.shape == (6, 17 if mode == "lape" else 16, 32)  # expanded: one PE copy per image
            total = a_tok.flatten(1).sum(1) + a_pe.flatten(1).sum(1)
            fdiff = fx - _hand_f(m, site, x, tgt, base)
            # captum's delta is exactly the completeness gap measured independently ...
            assert torch.allclose(total - fdiff, delta, atol=1e-5)
            # ... and small
            assert delta.abs().max() <= 5e-3 * fdiff.abs().max() + 1e-5
            # direct effect: tok and PE are summands of one sum -> one path gradient for both
            tok, pe = _hand_act(m, site.tok, x, 6), _hand_act(m, site.pe, x, 6)
            dpe = pe - base(pe[:1])
            mask = (tok.abs() > 1e-2) & (dpe.abs() > 1e-2)
            assert mask.sum() > 100
            assert torch.allclose(a_tok[mask] / tok[mask], a_pe[mask] / dpe[mask], rtol=1e-3, atol=1e-5)
            checked += 1
    assert checked == 4


def test_delta_shrinks_with_steps_and_flags_the_input_singularity():
    """Sharp attention needs more steps; the input site with (tokens 0, PE 0) never converges (LN at x_0 = 0)."""
    m = strong_pe("lape")  # qkv x10: block 0's integrand is peaked
    x = images(4)
    runner = find_sites(m, select=[0])
    with torch.no_grad():
        tgt = m(x).argmax(-1)

    def rel(r, **kw):
        with eval_grad(r.model):
            a, p, d = site_attributions(r, r.sites[0], x, tgt, **kw)
        return float(d.abs().sum() / (a.flatten(1).sum(1) + p.flatten(1).sum(1) - d).abs().sum())

    assert rel(runner, n_steps=256) < rel(runner, n_steps=32) / 10
    g = strong_pe("mpvg")
    with torch.no_grad():
        tgt = g(x).argmax(-1)
    inp = find_sites(g, select=["hook_input_pe"])
    assert rel(inp, n_steps=256) > 0.5  # ill-posed: does not converge
    assert rel(inp, n_steps=256, baseline="mean") < 1e-4
    assert rel(inp, n_steps=256, tokens="keep") < 1e-4
    with pytest.warns(RuntimeWarning, match="hook_input_pe"):
        attribute(g, x, sites=["hook_input_pe"], n_steps=16, baseline="zero", progress=False)


def test_last_site_attribution_has_the_linear_known_answer():
    """mpvg + GAP + linear head: f is linear in the Last-LN PE: sum attr_pe = W[t] . mean_rows(pe - base)."""
    m = strong_pe("mpvg")
    x = images(5)
    runner = find_sites(m, select=["hook_last_pe"])
    site = runner.sites[0]
    with torch.no_grad():
        tgt = m(x).argmax(-1)
        pe = m.last_pe_norm(m.pos_embed)
    with eval_grad(m):
        for baseline in ("zero", "mean"):
            _, a_pe, delta = site_attributions(runner, site, x, tgt, baseline=baseline, n_steps=4)
            base = torch.zeros_like(pe) if baseline == "zero" else intervene(pe, "mean", 0)
            want = m.head.weight[tgt] @ (pe - base)[0].mean(0)
            assert torch.allclose(a_pe.flatten(1).sum(1), want, atol=1e-5)
            assert delta.abs().max() < 1e-4  # linear in both terms: exact for any n_steps
    assert want.abs().max() < 1e-5  # mean baseline: the offset is all there is, and it cancels


def test_attribute_frame_and_maps():
    m = strong_pe("pvg")
    with pytest.warns(RuntimeWarning, match="hook_input_pe"):  # (tokens 0, PE 0) at the input: ill-posed
        a = attribute(m, images(5), batch_size=2, n_steps=8, n_maps=3, baseline="zero", progress=False)
    assert list(a.frame.columns) == ["site", "pe_kind", "layer", "metric", "value"]
    assert list(dict.fromkeys(a.frame.site)) == ["hook_input_pe", "blocks.1.hook_pe", "blocks.2.hook_pe",
                                                 "blocks.3.hook_pe"]
    assert list(dict.fromkeys(a.frame.layer)) == [INPUT, 1, 2, 3]
    for hook, maps in a.pe_maps.items():
        assert maps.shape == (3, 4, 4)
        assert a.tok_maps[hook].shape == (3, 4, 4)
    share = a.frame[a.frame.metric == "pe_share"].value
    assert ((share >= 0) & (share <= 1)).all()
    assert a.meta["cost"] == {"forwards_per_image": 1 + 4 * 12, "backwards_per_image": 4 * 8}
    assert a.meta["n_images"] == 5 and a.meta["n_steps"] == 8 and a.meta["target"] == "predicted"


# ---------------------------------------------------------------------------------------------- (e) no hooks left
def test_no_hook_left_after_errors(monkeypatch):
    m = strong_pe("mpvg")
    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = images(6)

    def bad_batches():
        yield x[:3]
        raise RuntimeError("data broke")

    with pytest.raises(RuntimeError, match="data broke"):
        ablate(m, bad_batches(), batch_size=3, progress=False)
    calls = {"n": 0}
    real = family_base.replace_additive  # what every additive site's replacement calls

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise ValueError("intervention broke")
        return real(*a, **k)

    for reuse in (False, True):
        calls["n"] = 0
        monkeypatch.setattr(family_base, "replace_additive", flaky)
        with pytest.raises(ValueError, match="intervention broke"):
            ablate(m, x, reuse_prefix=reuse, batch_size=3, progress=False)
        monkeypatch.setattr(family_base, "replace_additive", real)
    with pytest.raises(UnknownNameError):
        ablate(m, x, sites=["blocks.9.hook_pe"], progress=False)
    with pytest.raises(UnknownNameError):
        ablate(m, x, interventions=["scramble"], progress=False)
    with pytest.raises(UnknownNameError):
        ablate(m, x, effect="indirect", progress=False)
    with pytest.raises(DataError):
        ablate(m, torch.randn(2, 3, 8, 8), progress=False)
    with pytest.raises(ValueError, match="target"):
        attribute(m, x, target=99, n_steps=2, progress=False)

    real_head = m.head.forward

    def head_breaks_inside_captum(h):  # captum's path passes have n_steps * B rows
        if len(h) > len(x):
            raise RuntimeError("head broke")
        return real_head(h)

    monkeypatch.setattr(m.head, "forward", head_breaks_inside_captum)
    with pytest.raises(RuntimeError, match="head broke"):
        attribute(m, x, n_steps=2, batch_size=6, progress=False)
    monkeypatch.undo()
    assert hooks_on(m) == 0
    assert m.training and all(mod.training for mod in m.modules())
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_no_hook_left_after_errors_timm():
    t = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval()
    before = t.pos_embed.detach().clone()
    with pytest.raises(DataError):
        attribute(t, images(4), target="label", n_steps=2, progress=False)  # unlabelled data
    assert hooks_on(t) == 0 and torch.equal(t.pos_embed, before)
    a = attribute(t, images(4), n_steps=64, batch_size=2, baseline="mean", progress=False)
    assert set(a.frame.site) == {"hook_input_pe"}
    assert hooks_on(t) == 0 and torch.equal(t.pos_embed, before)


def test_labels_optional_and_top1_only_with_labels():
    m = strong_pe("pvg")
    x = images(8)
    f = ablate(m, x, batch_size=4, progress=False)
    assert "top1" not in set(f.metric) and f.attrs["intact_top1"] is None
    g = ablate(m, TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=4, max_images=6, progress=False)
    assert "top1" in set(g.metric) and g.attrs["n_images"] == 6
    assert list(g.columns) == ["site", "pe_kind", "layer", "intervention", "metric", "value"]
    assert list(dict.fromkeys(g.layer)) == [INPUT, 1, 2, 3]  # forward order: input, blocks


def test_public_names():
    from pe_probe.probing.ablation import run_ablation
    from pe_probe.probing.attribution import run_attribution

    assert pe_probe.ablate is run_ablation and pe_probe.attribute is run_attribution
    assert {"ablate", "attribute"} <= set(dir(pe_probe))
