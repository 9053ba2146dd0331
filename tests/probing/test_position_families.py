"""Position per layer on PE families other than pe_* models (issue 19 on issue 18's family-based probe): timm
ViTs (absolute), rope Eva (rotary), Swin (attention bias, hierarchical), CaiT (late class token) and Hiera
(unrolled streams). The decomposition is checked against numpy on the family's captured ``hook_resid_pre``
streams, the PE-ablated decoding control against a probe of a hand-edited copy without the PE, the logit
decomposition against the model's own logits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

import pe_probe
from pe_probe.analysis.metrics import summary_frame
from pe_probe.core import hook_points as H
from pe_probe.probing.adapter import view_model

torch.set_num_threads(1)

VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}
SWIN = {"img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 2), "window_size": 4,
        "num_classes": 5}
MODELS = {
    "vit": ("vit_tiny_patch16_224", VIT),
    "rope": ("vit_small_patch16_rope_224", VIT),
    "swin": ("swin_tiny_patch4_window7_224", SWIN),
    "cait": ("cait_xxs24_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "depth_token_only": 1,
                                "num_heads": 2, "num_classes": 5}),
    "hiera": ("hiera_tiny_224", {"img_size": (32, 32), "embed_dim": 16, "num_heads": 1, "stages": (1, 1, 1),
                                 "q_pool": 2, "mask_unit_size": (4, 4), "mask_unit_attn": (True, False, False),
                                 "num_classes": 5}),
    "twins": ("twins_pcpvt_small", {"img_size": 32, "depths": (1, 1, 1, 1), "embed_dims": (16, 32, 32, 32),
                                    "num_heads": (1, 1, 1, 1), "mlp_ratios": (2, 2, 2, 2), "sr_ratios": (1, 1, 1, 1),
                                    "num_classes": 5}),
    "pvt": ("pvt_v2_b0", {"pretrained_cfg_overlay": {"input_size": (3, 32, 32)}, "depths": (1, 1, 1, 1),
                          "embed_dims": (16, 16, 32, 32), "num_heads": (1, 1, 1, 1), "num_classes": 5}),
}


def build(key: str) -> torch.nn.Module:
    name, kw = MODELS[key]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    pe = getattr(model, "pos_embed", None)
    if isinstance(pe, torch.nn.Parameter):
        with torch.no_grad():
            pe.normal_(0, 1.0)  # a PE that matters
    if key == "rope":  # layer scales 1 and sharp attention, so the rotation of q and k matters
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(("gamma", "gamma_1", "gamma_2")):
                    p.fill_(1.0)
                elif p.ndim >= 2 and "qkv" in n:
                    p.mul_(20.0)
    return model


def images(n: int = 10) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _shares(x: np.ndarray) -> tuple[float, float, float]:
    """(pos, img, resid) shares of a (n, N, D) stream, computed directly (numpy, float64)."""
    mu = x.mean((0, 1))
    pos = x.mean(0) - mu
    img = x.mean(1) - mu
    resid = x - mu - pos[None] - img[:, None]
    ss = lambda a: float((a * a).sum())
    n, N = x.shape[:2]
    total = ss(x - mu)
    return n * ss(pos) / total, N * ss(img) / total, ss(resid) / total


def _value(frame, layer: int, metric: str) -> float:
    rows = frame[(frame.layer == layer) & (frame.metric == metric)]
    assert len(rows) == 1, (layer, metric, rows)
    return float(rows.value.iloc[0])


@pytest.fixture(scope="module")
def reports():
    out = {}
    for key in MODELS:
        m = build(key)
        out[key] = (m, pe_probe.probe(m, images(), batch_size=4, progress=False, decode=True, decode_images=5))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", list(MODELS))
def test_decomposition_shares_sum_to_one_and_match_numpy_at_every_layer(reports, key):
    model, report = reports[key]
    view = view_model(model)
    frame = summary_frame(report)
    pos_rows = frame[frame.metric.isin(["pos_share", "img_share", "resid_share"])]
    assert {"site", "pe_kind"} <= set(frame.columns) and not pos_rows.site.isna().any()
    names = [H.block_hook(l, H.RESID_PRE) for l in range(view.depth)]
    cap = pe_probe.capture(model, images(), names=names)
    prefix = getattr(view, "block_prefix", [view.num_prefix_tokens] * view.depth)
    for l in range(view.depth):
        got = [_value(frame, l, m) for m in ("pos_share", "img_share", "resid_share")]
        assert sum(got) == pytest.approx(1.0, abs=1e-9)
        x = cap[names[l]][:, prefix[l]:].double().numpy()
        np.testing.assert_allclose(got, _shares(x), rtol=1e-5, atol=1e-6)  # float32 passes, float64 sums
        row = frame[(frame.layer == l) & (frame.metric == "pos_share")].iloc[0]
        assert (row.site, row.pe_kind) == (names[l], "none")
    if view.final_norm is not None:  # the stream after the last block, as layer -1
        assert sum(_value(frame, H.LAST, m) for m in ("pos_share", "img_share", "resid_share")) == pytest.approx(1.0)
    else:
        assert str(H.LAST) in report.meta["position"]["skipped"]


@pytest.mark.slow
def test_pe_term_and_logit_share_only_with_an_additive_pe_and_a_last_ln(reports):
    for key, (model, report) in reports.items():
        pos = report.meta["position"]
        frame = summary_frame(report)
        additive = key in ("vit", "cait")  # rope, bias: no additive PE; Hiera: no Last LN, unrolled streams
        assert (pos["pe_term"] == H.INPUT_PE) == (key in ("vit", "cait", "hiera")), key
        assert pos["logits"] == additive, key
        assert ("pe_logit_share" in set(frame.metric)) == additive, key
        assert ("logits" in pos["skipped"]) == (not additive), key  # and says why not
        if additive:
            row = frame[frame.metric == "pe_logit_share"].iloc[0]
            assert (row.site, row.pe_kind) == (H.INPUT_PE, "absolute")
            row = frame[(frame.metric == "pe_pos_share") & (frame.layer == 0)].iloc[0]
            assert (row.site, row.pe_kind) == (H.INPUT_PE, "absolute")
            x = images()
            with torch.inference_mode():
                logits = model(x).double()
            pred = logits.argmax(-1)
            want = (logits.gather(1, pred[:, None])[:, 0] - model.head.bias.double()[pred]).mean()
            assert report.arrays["logit_total"][1] == pytest.approx(float(want), abs=1e-5)
            assert report.arrays["logit_sum_rmse"][0] < 1e-9
    assert "pe_pos_share" not in set(summary_frame(reports["hiera"][1]).metric)  # raster PE vs unrolled stream


def _no_pe_copy(key: str, model: torch.nn.Module) -> torch.nn.Module:
    """A hand-edited copy without the PE: pos_embed zeroed (ViT), rope removed (Eva)."""
    m = copy.deepcopy(model)
    if key == "vit":
        with torch.no_grad():
            m.pos_embed.zero_()
    else:
        m.rope = None
    return m


@pytest.mark.slow
@pytest.mark.parametrize("key", ["vit", "rope"])
def test_ablated_control_equals_the_hand_edited_model_without_pe(reports, key):
    model, report = reports[key]
    plain = pe_probe.probe(_no_pe_copy(key, model), images(), batch_size=4, progress=False, decode=True,
                           decode_images=5)
    got, want = summary_frame(report), summary_frame(plain)
    for l in [*range(view_model(model).depth), H.LAST]:
        assert _value(got, l, "pos_r2_ablated") == pytest.approx(_value(want, l, "pos_r2"), abs=1e-6)
        assert _value(got, l, "pos_acc_ablated") == pytest.approx(_value(want, l, "pos_acc"), abs=1e-9)
        row = got[(got.layer == l) & (got.metric == "pos_r2_ablated")].iloc[0]
        assert row.pe_kind == report.meta["pe_kind"]
    # where the PE has acted (block 0's input for an input PE, after the blocks for rope) the control differs
    l = 0 if key == "vit" else H.LAST
    a, b = report.arrays, plain.arrays
    np.testing.assert_allclose(a[f"decode_r2_ablated@{l}"], b[f"decode_r2@{l}"], rtol=1e-6, atol=1e-8)
    assert np.abs(a[f"decode_r2@{l}"][1:] - a[f"decode_r2_ablated@{l}"][1:]).max() > 1e-4
    if key == "rope":  # no PE in the stream entering block 0: the control is the model there
        assert _value(got, 0, "pos_r2_ablated") == pytest.approx(_value(got, 0, "pos_r2"), abs=1e-9)


@pytest.mark.slow
def test_hierarchical_rows_decode_on_their_stage_grid_or_say_why_not(reports):
    swin = summary_frame(reports["swin"][1])
    for l in range(4):  # two stages: 8x8 then 4x4 tokens, each decoded on its own grid
        assert np.isfinite(_value(swin, l, "pos_r2"))
    assert reports["swin"][1].arrays["decode_r2@3"].shape[0] == 3
    skipped = reports["hiera"][1].meta["position"]["skipped"]
    assert all("raster" in skipped[str(l)] for l in range(3))
    assert not {"pos_r2", "pos_acc"} & set(summary_frame(reports["hiera"][1]).metric)
    for key in ("twins", "pvt"):  # stages of 8x8, 4x4, 2x2 tokens decoded; the last stage's single token not
        frame, skipped = summary_frame(reports[key][1]), reports[key][1].meta["position"]["skipped"]
        assert sorted(frame[frame.metric == "pos_r2"].layer.unique()) == [0, 1, 2]
        assert "1 patch token" in skipped["3"] and "1 patch token" in skipped["-1"]
    assert "no PE site" in reports["pvt"][1].meta["position"]["skipped"]["ablated"]
