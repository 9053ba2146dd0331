"""The paper's numbers are data with sources, and runs map to the right backbone column."""

from __future__ import annotations

import pytest

from pe_probe.analysis import paper
from pe_probe.core.errors import UnknownNameError

from ..fakes import make_run


def test_reported_numbers():
    assert paper.ACCURACY["DeiT-Ti"] == {"default": 72.14, "lape": 72.94, "pvg": 73.17, "mpvg": 73.51}
    assert paper.ACCURACY["ViT-Lite-7/4"]["mpvg"] == 76.87
    assert dict(paper.FIG2_CORRELATION) == {1: -0.37, 4: -0.67, 7: -0.82, 9: -0.85, 11: -0.95}
    assert dict(paper.FIG6_BETA_VARIANCE) == {"pvg": 0.2387, "mpvg": 0.0193}
    assert dict(paper.FIG6_COSINE) == {"token": 0.4597, "avg": 0.2995}
    assert dict(paper.FIG5) == {"gap": 72.40, "gap_last_ln_pe": 72.14}
    assert dict(paper.TABLE5) == {11: 73.30, 8: 73.38, 5: 73.39, 0: 73.51}
    assert paper.TABLE6[(False, True, True)] == 73.51
    for ref in paper.REFERENCES.values():
        assert ref.source and ref.unit


def test_reference_lookup():
    assert paper.reference("table5") is paper.TABLE5
    with pytest.raises(UnknownNameError, match="valid names"):
        paper.reference("fig3")


def test_backbone_of():
    deit = {"model": "pe_deit_tiny_patch16_224", "model_kwargs": {}, "data": {"dataset": "imagenet", "img_size": 224}}
    assert paper.backbone_of(deit) == "DeiT-Ti"
    assert paper.backbone_of({**deit, "data": {"dataset": "digits", "img_size": 224}}) == "DeiT-Ti (digits)"
    assert paper.backbone_of({**deit, "model_kwargs": {"depth": 4}}) == "pe_deit_tiny_patch16_224 (custom, imagenet)"
    lite = {"model": "pe_vit_lite_7_4_32", "data": {"dataset": "CIFAR-100", "img_size": 32}}
    assert paper.backbone_of(lite) == "ViT-Lite-7/4"
    assert paper.backbone_of({"model": "my_vit", "data": {"dataset": "digits"}}) == "my_vit (digits)"
    assert make_run("r").backbone == "pe_deit_tiny_patch16_224 (custom, digits)"
