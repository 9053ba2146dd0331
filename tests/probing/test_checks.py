"""The MPVG constant-offset observation (docs/science.md): MPVG + linear head == PVG with a shifted head bias."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from pe_probe import PEVisionTransformer, mpvg_constant_offset_check
from pe_probe.core.errors import CheckpointError, DataError

from ..conftest import TINY
from .reference import randomize_norms


def trained(**kw) -> PEVisionTransformer:
    """A tiny model after a few optimiser steps (so pos_0, LN'_last and the head are all trained)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = PEVisionTransformer(**{**TINY, **kw})
    randomize_norms(m)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m


@pytest.mark.parametrize("kw", [dict(pe_mode="mpvg"), dict(pe_mode="pvg", last_ln_pe=2),
                                dict(pe_mode="mpvg", global_pool="token"),
                                dict(pe_mode="default", global_pool="avg", last_ln_pe=0)],
                         ids=["mpvg", "pvg-pos2", "mpvg-token", "default-gap-pe"])
def test_mpvg_equals_pvg_with_absorbed_bias(kw):
    m = trained(**kw)
    m.train()
    diff = mpvg_constant_offset_check(m)
    assert diff < 1e-4
    assert m.training and m.pe_config.last_ln_pe is not None  # the model itself is untouched
    # not vacuous: the same model with the Last-LN PE removed but no bias shift gives other logits
    x = torch.randn(4, 3, 16, 16)
    plain = copy.deepcopy(m).eval()
    plain.pe_config = plain.pe_config.replace(last_ln_pe=None)
    m.eval()
    with torch.no_grad():
        assert (m(x) - plain(x)).abs().max() > 1e-3
    assert mpvg_constant_offset_check(m, x) < 1e-4


def test_check_refuses_models_without_a_last_ln_pe_and_bad_images():
    m = PEVisionTransformer(pe_mode="pvg", **TINY)
    with pytest.raises(CheckpointError, match="Last LN"):
        mpvg_constant_offset_check(m)
    m = PEVisionTransformer(pe_mode="mpvg", **TINY)
    with pytest.raises(DataError, match="px"):
        mpvg_constant_offset_check(m, torch.randn(2, 3, 8, 8))
