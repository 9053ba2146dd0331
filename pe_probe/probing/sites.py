"""The PE sites of a model (where a PE term enters the computation), how to replace one, and how to run the
model so the replacement applies. Shared by :mod:`~pe_probe.probing.ablation` and
:mod:`~pe_probe.probing.attribution`; the sites themselves come from the model's PE family
(:meth:`pe_probe.families.base.Family.sites`).

For the layer-wise (pe_* models) and absolute (timm ViTs) families:

==========================  =====  ===============================================================
hook                        layer  the term
==========================  =====  ===============================================================
``hook_input_pe``            -2    the PE added to the input, ``x_0 = p + pos_0`` (models that add one; for
                                   a timm ViT its ``pos_embed``, its only PE)
``blocks.{i}.hook_pe``        i    the PE block ``i`` adds to its attention input, ``LN_i(x) + pe_i``
``hook_last_pe``             -1    the PE added after the Last LN (``last_ln_pe`` models, e.g. MPVG)
``hook_pos_embed``           -2    ``pos_0`` everywhere it is read: the input site under ``effect="total"``
==========================  =====  ===============================================================

Other families add ``blocks.{l}.attn.hook_rope`` (rotary), ``blocks.{l}.attn.hook_attn_bias`` (attention bias)
and ``pos_block.{s}.hook_peg`` (conditional); docs/probe.md lists them. ``effect="direct"`` (the default) changes
only the term added at the site; ``effect="total"`` changes the value every later reader sees (block ``i``'s
``pe_norm`` output in a layer-wise chain, ``hook_pos_embed`` for the input). Every site's term is the output of
a module while :meth:`Runner.__call__` runs the model (a timm ``pos_embed`` passes through a ``HookPoint`` the
family owns, by ``torch.func.functional_call``): exact, differentiable, no parameter written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..families import Family, Site, replace_additive, replaced
from .adapter import view_model

__all__ = ["Runner", "Site", "find_sites", "intervene", "replaced", "shuffle_permutation"]


@dataclass
class Runner:
    """A model's family and the selected sites; calling it runs the model so hooks on every site's module apply."""

    model: nn.Module
    view: Family
    sites: list[Site]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.view.run(images)

    @property
    def resumable(self) -> bool:
        """Whether block and Last-LN sites can rerun from the intact activations (:meth:`Family.resume`)."""
        return bool(self.view.resume_names())


def find_sites(model: nn.Module, effect: str = "direct", select: Sequence[str | int] | None = None) -> Runner:
    """The model's PE sites in forward order (input, blocks, Last LN), filtered by ``select`` (hook names or
    layer ints; ``"hook_pos_embed"`` adds the total-effect input site on request).

    The model's family decides (:func:`pe_probe.families.family_for`): a pe_probe model is read through its hook
    points, a timm ViT with a ``pos_embed`` through that table (its only PE term; the per-block PEs the probe
    derives are not terms of the forward pass), other families through their own sites. Unsupported models raise
    :class:`~pe_probe.core.errors.CheckpointError`; unknown sites or effects, or a model without any site,
    :class:`~pe_probe.core.errors.UnknownNameError`.
    """
    view = view_model(model)
    return Runner(model, view, view.find_sites(effect, select))


def shuffle_permutation(n: int, seed: int) -> torch.Tensor:
    """The fixed permutation of ``n`` patch rows used by ``shuffle``: row t receives row ``perm[t]``
    (``torch.randperm`` seeded with ``seed``; rolled once if it is the identity, so it always moves rows)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if n > 1 and torch.equal(perm, torch.arange(n)):
        perm = perm.roll(1)
    return perm


def intervene(pe: torch.Tensor, kind: str, n_prefix: int, perm: torch.Tensor | None = None) -> torch.Tensor:
    """An additive PE term (…, T, D) with its position information removed (``zero``, ``mean``, ``shuffle``);
    :func:`pe_probe.families.base.replace_additive`."""
    return replace_additive(pe, kind, n_prefix, perm)
