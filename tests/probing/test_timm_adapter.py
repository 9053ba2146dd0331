"""Foreign timm ViTs: tokens from norm1, PE derived as norm1(pos_embed), Last LN = model.norm."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from pe_probe.analysis import summary_frame
from pe_probe import PEVisionTransformer, capture, hook_names, probe
from pe_probe.core.errors import CheckpointError

from ..conftest import TINY
from .reference import all_forward_hooks, assert_metrics_match, expected_metrics, randomize_norms


@pytest.fixture(scope="module")
def deit() -> VisionTransformer:
    torch.manual_seed(0)
    m = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32)  # 2x2 grid + class token
    randomize_norms(m)
    with torch.no_grad():
        m.pos_embed.normal_(0, 0.5)
        m.cls_token.normal_(0, 0.5)
    return m.eval()


def test_deit_hook_names_and_derived_pe(deit):
    names = hook_names(deit)
    assert "blocks.11.hook_pe" in names and "hook_last_pe" not in names and names[0] == "hook_pos_embed"
    x = torch.randn(3, 3, 32, 32)
    cap = capture(deit, x)
    D = deit.embed_dim
    for i, blk in enumerate(deit.blocks):
        n1 = blk.norm1
        derived = F.layer_norm(deit.pos_embed, (D,), n1.weight, n1.bias, n1.eps)
        torch.testing.assert_close(cap[f"blocks.{i}.hook_pe"], derived)
        torch.testing.assert_close(cap[f"blocks.{i}.hook_tok"],
                                   F.layer_norm(cap[f"blocks.{i}.hook_resid_pre"], (D,), n1.weight, n1.bias, n1.eps))
        if i:
            assert torch.equal(cap[f"blocks.{i - 1}.hook_resid_post"], cap[f"blocks.{i}.hook_resid_pre"])
    # the residual stream entering block 0 is patch embedding + class token + PE (timm's own _pos_embed)
    with torch.no_grad():
        x0 = deit._pos_embed(deit.patch_embed(x))
        torch.testing.assert_close(cap["blocks.0.hook_resid_pre"], x0)
        torch.testing.assert_close(cap["hook_last_ln_out"], deit.forward_features(x))
        torch.testing.assert_close(deit.head(cap["hook_pooled"]), deit(x))
    assert all_forward_hooks(deit) == 0


def test_deit_probe_metrics_match_numpy(deit):
    x = torch.randn(9, 3, 32, 32)
    cap = capture(deit, x)
    report = probe(deit, x, batch_size=4, progress=False)
    meta = report.meta
    assert meta["pe_derived"] is True and meta["pe_mode"] == "timm" and meta["model"] == "deit_tiny_patch16_224"
    assert meta["receiving_blocks"] == list(range(12)) and meta["last_ln_pe"] is None and meta["grid"] == [2, 2]
    assert_metrics_match(report, expected_metrics(cap, deit.norm, 12, 1, "token"))
    _, pe = report.mean_maps(5)
    n1 = deit.blocks[5].norm1
    np.testing.assert_allclose(pe, F.layer_norm(deit.pos_embed[0], (192,), n1.weight, n1.bias, n1.eps)
                               .detach().double().numpy(), atol=1e-6)


def test_state_dict_into_a_fresh_model_gives_the_same_report(deit):
    fresh = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32)
    fresh.load_state_dict(deit.state_dict())
    x = torch.randn(5, 3, 32, 32)
    a, b = probe(deit, x, progress=False), probe(fresh, x, progress=False)
    for k in a.arrays:
        np.testing.assert_allclose(a.arrays[k], b.arrays[k], rtol=1e-6, atol=1e-7)


def test_no_embed_class_prefix_rows_have_no_pe():
    m = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                          no_embed_class=True, reg_tokens=2).eval()
    x = torch.randn(4, 3, 16, 16)
    cap = capture(m, x)
    assert cap["blocks.0.hook_pe"].shape == (1, 19, 32)
    assert torch.isnan(cap["blocks.0.hook_pe"][0, :3]).all() and torch.isfinite(cap["blocks.0.hook_pe"][0, 3:]).all()
    report = probe(m, x, progress=False)
    assert report.meta["num_prefix_tokens"] == 3
    frame = summary_frame(report)
    assert np.isfinite(frame.value).all()
    assert_metrics_match(report, expected_metrics(cap, m.norm, 2, 3, "token"))


def test_forcing_the_timm_adapter_on_a_pe_probe_model():
    m = PEVisionTransformer(pe_mode="default", **TINY).eval()
    assert "blocks.0.hook_pe" not in hook_names(m)
    assert "blocks.0.hook_pe" in hook_names(m, adapter="timm")
    r = probe(m, torch.randn(4, 3, 16, 16), adapter="timm", progress=False)
    assert r.meta["pe_derived"] is True and r.meta["pe_mode"] == "default"
    with pytest.raises(CheckpointError, match="adapter='pe'"):
        hook_names(timm.create_model("deit_tiny_patch16_224", img_size=32), adapter="pe")


# fc_norm / avg pooling, map pooling and pos_embed="none" models are read since issue 18 (PE families):
# tests/families/test_absolute.py checks them; what no family can measure is still refused in one line
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(global_pool="", num_classes=0), "global_pool"),  # every token out: there is no pooled head
    ],
)
def test_unsupported_timm_models_are_refused(kw, match):
    m = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, **kw)
    with pytest.raises(CheckpointError, match=match):
        probe(m, torch.randn(2, 3, 16, 16), progress=False)
    assert all_forward_hooks(m) == 0
