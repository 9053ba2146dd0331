"""Exact checks of claims about trained checkpoints (docs/science.md, "pe-probe's own observations")."""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from ..core.errors import CheckpointError
from ..models import PEVisionTransformer
from .hooks import eval_inference
from .inputs import check_images
from .adapter import view_model


def mpvg_constant_offset_check(
    model: PEVisionTransformer | str | os.PathLike,
    images: torch.Tensor | None = None,
    *,
    n_images: int = 8,
    seed: int = 0,
) -> float:
    """Max |logit difference| between an MPVG model and the PVG model whose head bias absorbs the PE term.

    With a PE in the Last LN, ``pool(LN(x_L) + LN'(pos_k)) = pool(LN(x_L)) + c`` where
    ``c = pool(LN'(pos_k))`` is the same for every image (``pos_k`` depends on parameters only), and a
    linear head turns it into ``W @ c``. The check copies the model, removes the Last-LN PE (a PVG forward),
    adds ``W @ c`` to the copy's head bias and compares logits on ``images`` (default: ``n_images`` standard
    normal images from ``seed``). A result at float rounding level (~1e-5) confirms that at inference MPVG
    computes the same function as that PVG. ``model`` may be a run directory (loaded with
    :func:`pe_probe.load_model`; the random images then have the run's input size and channels). Raises :class:`~pe_probe.core.errors.CheckpointError` for models without a Last-LN PE
    or with a non-linear head.
    """
    if isinstance(model, (str, os.PathLike)):
        from ..training.checkpoints import load_model

        model = load_model(model)
    if not isinstance(model, PEVisionTransformer) or model.pe_config.last_ln_pe is None:
        raise CheckpointError("the constant-offset check needs a pe_probe model with a PE in the Last LN (e.g. mpvg)")
    if not isinstance(model.head, nn.Linear) or not isinstance(model.fc_norm, nn.Identity):
        raise CheckpointError("the constant-offset check needs a linear head directly after pooling")
    view = view_model(model, "pe")
    if images is None:
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(n_images, view.in_chans, *view.img_size, generator=g)
    images = check_images(images, view)

    if model.head.bias is None:
        raise CheckpointError("the head has no bias to absorb the constant offset")
    pvg = copy.deepcopy(model)
    pvg.pe_config = pvg.pe_config.replace(last_ln_pe=None)  # the Last LN now adds nothing: a PVG forward
    pvg.last_pe_norm = None
    pvg.hook_last_pe = None
    with torch.no_grad():
        k = model.pe_config.last_ln_pe
        src = model.pos_embed if k == 0 else _pe_of_block(model, k)
        c = model.pool(model.last_pe_norm(src))[0]
        pvg.head.bias.add_(model.head.weight @ c)
    with eval_inference(model), eval_inference(pvg):
        diff = (model(images) - pvg(images)).abs().max().item()
    return float(diff)


def _pe_of_block(model: PEVisionTransformer, k: int) -> torch.Tensor:
    """``pos_k``: the PE block ``k`` receives, along the model's public PE chain from ``pos_0``."""
    return model.pe_chain()[k]
