"""Hook names, one-batch capture, input checks, and hooks that never leak."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from pe_probe import PEVisionTransformer, capture, hook_names
from pe_probe.core.errors import CheckpointError, DataError, UnknownNameError

from ..conftest import TINY
from .reference import all_forward_hooks, randomize_norms


def build(**kw) -> PEVisionTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = PEVisionTransformer(**{**TINY, **kw})
    randomize_norms(m)
    return m


def test_hook_names_follow_the_scheme():
    names = hook_names(build(pe_mode="pvg"))
    assert names[0] == "hook_pos_embed" and names[-1] == "hook_pooled"
    assert "blocks.0.hook_pe" not in names and "blocks.1.hook_pe" in names and "hook_last_pe" not in names
    assert names[1:6] == ["hook_input_pe", "blocks.0.hook_resid_pre", "blocks.0.hook_tok",
                          "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
    assert "hook_last_pe" in hook_names(build(pe_mode="mpvg"))
    lape = hook_names(build(pe_mode="lape"))
    assert "blocks.0.hook_pe" in lape and "hook_input_pe" not in lape  # LaPE adds no PE to the input
    default = hook_names(build(pe_mode="default"))
    assert not any("hook_pe" in n or "last_pe" in n for n in default)
    assert len(default) == 2 + 4 * 3 + 3


@pytest.mark.parametrize("mode", ["lape", "mpvg"])
def test_captured_tensors_are_what_the_names_say(mode):
    m = build(pe_mode=mode, pe_hierarchical=True)
    x = torch.randn(3, 3, 16, 16)
    cap = capture(m, x)
    D = m.embed_dim
    ln = lambda t, mod: F.layer_norm(t, (D,), mod.weight, mod.bias, mod.eps)  # noqa: E731
    assert torch.equal(cap["hook_pos_embed"], m.pos_embed)
    if m.pe_config.input_add:  # the term added to x_0 (mpvg), absent where the input gets no PE (lape)
        assert torch.equal(cap["hook_input_pe"], m.pos_embed)
    else:
        assert "hook_input_pe" not in cap
    prev = m.pos_embed
    for i, blk in enumerate(m.blocks):
        torch.testing.assert_close(cap[f"blocks.{i}.hook_tok"], ln(cap[f"blocks.{i}.hook_resid_pre"], blk.norm1))
        if blk.receives_pe:
            pe = ln(prev, blk.pe_norm)
            torch.testing.assert_close(cap[f"blocks.{i}.hook_pe"], pe)
            prev = pe
        if i + 1 < len(m.blocks):
            assert torch.equal(cap[f"blocks.{i}.hook_resid_post"], cap[f"blocks.{i + 1}.hook_resid_pre"])
    assert torch.equal(cap["blocks.3.hook_resid_post"], cap["hook_last_ln_in"])
    torch.testing.assert_close(cap["hook_last_ln_out"], ln(cap["hook_last_ln_in"], m.norm))
    with torch.no_grad():
        m.eval()
        logits = m(x)
    torch.testing.assert_close(m.head(cap["hook_pooled"]), logits)
    assert cap["blocks.1.hook_tok"].shape == (3, m.num_prefix_tokens + 16, D)


def test_capture_subset_eval_mode_and_flag_restored():
    m = build(pe_mode="pvg", drop_rate=0.5, attn_drop_rate=0.5)
    m.train()
    x = torch.randn(2, 3, 16, 16)
    a = capture(m, x, names=["hook_last_ln_out"])
    b = capture(m, x, names="hook_last_ln_out")
    assert list(a) == ["hook_last_ln_out"] and torch.equal(a["hook_last_ln_out"], b["hook_last_ln_out"])
    assert m.training and all_forward_hooks(m) == 0


def test_unknown_names_raise_before_any_hook():
    m = build(pe_mode="pvg")
    with pytest.raises(UnknownNameError, match="blocks.0.hook_pe"):
        capture(m, torch.randn(1, 3, 16, 16), names=["blocks.0.hook_pe"])  # block 0 gets no PE in pvg
    with pytest.raises(UnknownNameError, match="adapter"):
        hook_names(m, adapter="lens")
    assert all_forward_hooks(m) == 0


@pytest.mark.parametrize(
    "images,match",
    [
        (torch.randn(2, 3, 32, 32), "32x32 px; the model takes 16x16"),
        (torch.randn(2, 1, 16, 16), "1 channels; the model takes 3"),
        (torch.randn(3, 16, 16), "3 dims"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "floating-point"),
        (torch.randn(0, 3, 16, 16), "empty"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_bad_images_raise_data_error_before_the_model_runs(images, match):
    m = build(pe_mode="pvg")
    calls = []
    handle = m.patch_embed.register_forward_pre_hook(lambda mod, args: calls.append(1))
    try:
        with pytest.raises(DataError, match=match):
            capture(m, images)
    finally:
        handle.remove()
    assert calls == [] and all_forward_hooks(m) == 0


def test_no_hook_survives_an_error_inside_the_forward(monkeypatch):
    m = build(pe_mode="mpvg")
    m.train()

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(m.blocks[2].mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        capture(m, torch.randn(2, 3, 16, 16))
    assert all_forward_hooks(m) == 0 and m.training


def test_non_vit_models_are_refused():
    with pytest.raises(CheckpointError, match="VisionTransformer"):
        hook_names(torch.nn.Linear(3, 3))
