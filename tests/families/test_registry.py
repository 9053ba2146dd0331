"""The PE-family registry: a family defined and registered in this test alone is probed, ablated, attributed
and reported end to end (adding a family is one module plus its tests), and the result containers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pe_probe
from pe_probe.core import hook_points as H
from pe_probe.core.causal import AblationResult, AttributionResult
from pe_probe.core.errors import DataError, UnsupportedModelError
from pe_probe.core.report import ProbeReport
from pe_probe.families import (
    Family,
    Site,
    families,
    family_for,
    register_family,
    unregister_family,
)
from pe_probe.models import HookPoint


class _Patch(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, 4)
        self.img_size, self.grid_size = (16, 16), (4, 4)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(x).tanh()


class ToyViT(nn.Module):
    """No timm: a patch embedding, a learned PE added through ``hook_pe`` (an identity), 2 blocks, GAP head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch_embed = _Patch(dim)
        self.pe = nn.Parameter(torch.randn(1, 16, dim) * 2)
        self.hook_pe = HookPoint()
        self.blocks = nn.ModuleList([_Block(dim), _Block(dim)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch_embed(x) + self.hook_pe(self.pe)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(1))


class ToyFamily(Family):
    name, pe_kind, priority = "toy", "absolute", 500

    @classmethod
    def recognise(cls, model):
        return isinstance(model, ToyViT)

    def __init__(self, model):
        super().__init__(model)
        self.blocks = list(model.blocks)
        self.embed_dim, self.num_prefix_tokens, self.grid = 16, 0, (4, 4)
        self.img_size, self.in_chans, self.global_pool = (16, 16), 3, "avg"
        self.final_norm = model.norm

    def sites(self, effect="direct"):
        return [Site(H.INPUT_PE, "absolute", H.INPUT, self.model.hook_pe, tok=self.model.patch_embed)]

    def pool(self, x):
        return x.mean(1)


@pytest.fixture
def toy():
    register_family(ToyFamily)
    try:
        torch.manual_seed(0)
        yield ToyViT().eval()
    finally:
        unregister_family("toy")


def _data(n=8):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.filterwarnings("ignore:hook_input_pe. sum")
def test_a_family_registered_from_a_test_is_probed_ablated_attributed_and_reported(toy, tmp_path):
    assert families()[0] is ToyFamily and isinstance(family_for(toy), ToyFamily)
    names = pe_probe.hook_names(toy)
    assert names[:3] == ["hook_input_pe", "blocks.0.hook_resid_pre", "blocks.0.hook_tok"] and "hook_last_ln_out" in names
    x = _data()
    cap = pe_probe.capture(toy, x)
    torch.testing.assert_close(cap["hook_input_pe"], toy.pe)
    torch.testing.assert_close(cap["blocks.0.hook_resid_pre"], toy.patch_embed(x) + toy.pe)

    report = pe_probe.probe(toy, x, batch_size=3, progress=False)
    assert report.meta["family"] == "toy" and report.meta["pe_kind"] == "absolute" and report.meta["last_ln"]
    np.testing.assert_allclose(report.arrays["tok_norm@1"],
                               cap["blocks.1.hook_tok"].double().norm(dim=-1).mean(0).numpy(), rtol=1e-5)
    frame = pe_probe.summary_frame(report)
    assert {"site", "pe_kind", "layer", "metric"} <= set(frame.columns)
    pe_probe.save_report(report, tmp_path / "r")
    assert ProbeReport.load(tmp_path / "r").meta["family"] == "toy"

    abl = pe_probe.ablate(toy, x, ["zero"], batch_size=4, progress=False)
    assert isinstance(abl, AblationResult) and abl.sites == ["hook_input_pe"]
    with torch.no_grad():  # the hand-edited forward: the PE removed
        intact, hand = toy(x), toy.head(toy.norm(_blocks(toy, toy.patch_embed(x))).mean(1))
    p = F.log_softmax(intact.double(), -1)
    kl = float((p.exp() * (p - F.log_softmax(hand.double(), -1))).sum(-1).mean())
    f = abl.frame()
    assert list(f.columns) == ["site", "pe_kind", "layer", "intervention", "metric", "value"]
    assert f.loc[f.metric == "kl", "value"].item() == pytest.approx(kl, rel=1e-6)
    agree = float((intact.argmax(-1) == hand.argmax(-1)).double().mean())
    assert f.loc[f.metric == "agree", "value"].item() == agree
    abl.save(tmp_path / "a")
    back = AblationResult.load(tmp_path / "a")
    assert back.rows == abl.rows and back.meta["family"] == "toy"

    att = pe_probe.attribute(toy, x[:4], n_steps=16, batch_size=2, progress=False)
    assert isinstance(att, AttributionResult) and set(att.frame().pe_kind) == {"absolute"}
    att.save(tmp_path / "t")
    again = AttributionResult.load(tmp_path / "t")
    np.testing.assert_array_equal(again.pe_maps["hook_input_pe"], att.pe_maps["hook_input_pe"])
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in toy.modules()) == 0


def _blocks(model, x):
    for blk in model.blocks:
        x = blk(x)
    return x


def test_unknown_models_and_old_results_are_refused_in_one_line(tmp_path):
    with pytest.raises(UnsupportedModelError, match="no PE family reads a Linear"):
        family_for(nn.Linear(2, 2))
    (tmp_path / "ablation.csv").write_text("hook,layer,intervention,metric,value\nhook_input_pe,-2,zero,kl,0.1\n")
    with pytest.raises(pe_probe.CheckpointError, match="schema 1.*measure it again") as err:
        AblationResult.load(tmp_path)
    assert "\n" not in str(err.value)
    report = ProbeReport({k: 0 for k in ("run", "model", "pe_mode", "global_pool", "num_prefix_tokens", "grid",
                                         "depth", "embed_dim", "n_images", "pe_derived", "receiving_blocks",
                                         "last_ln_pe")}, {"x": np.zeros(2)})
    report.save(tmp_path / "old")
    meta = (tmp_path / "old" / "meta.json")
    old = json.loads(meta.read_text())
    del old["schema_version"]  # as pe_probe wrote reports before PE families
    meta.write_text(json.dumps(old))
    with pytest.raises(DataError, match="schema 1, this pe_probe reads schema 2; probe again"):
        ProbeReport.load(tmp_path / "old")
