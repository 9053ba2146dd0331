"""The PE sites of a ViT (where a PE term is added), how to replace one, and how to run the model so the
replacement applies. Shared by :mod:`~pe_probe.probing.ablation` and :mod:`~pe_probe.probing.attribution`.

==========================  =====  ===============================================================
hook                        layer  the term
==========================  =====  ===============================================================
``hook_input_pe``            -2    the PE added to the input, ``x_0 = p + pos_0`` (models that add one; for
                                   a timm ViT its ``pos_embed``, its only PE)
``blocks.{i}.hook_pe``        i    the PE block ``i`` adds to its attention input, ``LN_i(x) + pe_i``
``hook_last_pe``             -1    the PE added after the Last LN (``last_ln_pe`` models, e.g. MPVG)
``hook_pos_embed``           -2    ``pos_0`` everywhere it is read: the input site under ``effect="total"``
==========================  =====  ===============================================================

``effect="direct"`` (the default) changes only the term added at the site: the model's ``hook_pe`` and
``hook_input_pe`` sit on the added terms, so a forward hook there is exactly that. ``effect="total"`` changes
the value every later reader sees: block ``i``'s ``pe_norm`` output (the chain value the next blocks' ``LN'``
and the Last LN read) and, for the input, ``hook_pos_embed``. In a hierarchical layer-wise model zeroing
``pe_i`` in total mode makes every later PE ``LN'(0) = beta``, so the two differ.

A timm ``VisionTransformer`` adds ``pos_embed`` in a method, not a module. It is run with
``torch.func.functional_call`` and its ``pos_embed`` passed through a temporary :class:`HookPoint` owned by
the :class:`Runner`: exact, differentiable, and no parameter is ever written and no hook put on the model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..core import hook_points as H
from ..core.causal import EFFECTS, INTERVENTIONS
from ..core.errors import UnknownNameError
from ..models import HookPoint, PEVisionTransformer
from .adapter import ModelView, view_model


@dataclass(frozen=True)
class Site:
    """One PE term: ``pe`` is the module whose output is the term (hooks replace it there), ``tok`` the module
    whose output is the token term of the same sum (``LN_i(x)`` for a block, ``LN(x_L)`` for the Last LN, the
    patch embeddings for the input), ``n_prefix`` the PE's leading rows that belong to no patch (class token)."""

    hook: str
    layer: int
    pe: nn.Module
    tok: nn.Module
    n_prefix: int = 0


@dataclass
class Runner:
    """Calls the model so that hooks on every site's ``pe`` module apply (``tap``: the timm ``pos_embed``)."""

    model: nn.Module
    view: ModelView
    sites: list[Site]
    tap: HookPoint | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.tap is None:
            return self.model(images)
        return functional_call(self.model, {"pos_embed": self.tap(self.model.pos_embed)}, (images,))

    @property
    def resumable(self) -> bool:
        """Whether block and Last-LN sites can rerun from the intact activations (pe_probe models)."""
        return self.tap is None


def find_sites(model: nn.Module, effect: str = "direct", select: Sequence[str | int] | None = None) -> Runner:
    """The model's PE sites in forward order (input, blocks, Last LN), filtered by ``select`` (hook names or
    layer ints; ``"hook_pos_embed"`` adds the total-effect input site on request).

    The model's class decides, not an adapter: a pe_probe model is read through its hook points, any other
    timm ViT through its ``pos_embed`` (its only PE term; the per-block PEs the probe's timm adapter derives
    are not terms of the forward pass). Unsupported models raise
    :class:`~pe_probe.core.errors.CheckpointError`; unknown sites or effects
    :class:`~pe_probe.core.errors.UnknownNameError`.
    """
    if effect not in EFFECTS:
        raise UnknownNameError(f"effect={effect!r} is unknown; valid values: {EFFECTS}")
    view = view_model(model)  # validates: fixed size, absolute PE, Last LN on tokens, token/avg pooling
    sites: list[Site] = []
    tap = None
    npre = view.num_prefix_tokens
    if view.kind == "pe":
        m: PEVisionTransformer = model  # type: ignore[assignment]
        total_input = Site(H.POS_EMBED, H.INPUT, m.hook_pos_embed, m.patch_embed, npre)
        if m.pe_config.input_add:
            sites.append(total_input if effect == "total" else
                         Site(H.INPUT_PE, H.INPUT, m.hook_input_pe, m.patch_embed, npre))
        for i in view.receiving_blocks:
            blk = m.blocks[i]
            sites.append(Site(H.block_hook(i, H.PE), i, blk.hook_pe if effect == "direct" else blk.pe_norm,
                              blk.hook_tok, npre))
        if view.last_ln_pe is not None:
            sites.append(Site(H.LAST_PE, H.LAST, m.hook_last_pe, m.hook_last_ln_out, npre))
        if select is not None and H.POS_EMBED in select and all(s.hook != H.POS_EMBED for s in sites):
            sites.insert(0, total_input)
    else:
        tap = HookPoint()  # pos_embed is read once, at the input: its direct and total effects are one
        rows = model.pos_embed.shape[1]
        asked_total = select is not None and H.POS_EMBED in select and H.INPUT_PE not in select
        sites.append(Site(H.POS_EMBED if effect == "total" or asked_total else H.INPUT_PE, H.INPUT, tap,
                          model.patch_embed, max(0, rows - view.grid[0] * view.grid[1])))
    if select is not None:
        wanted = [select] if isinstance(select, (str, int)) else list(select)
        known = {s.hook for s in sites} | {s.layer for s in sites} | {H.POS_EMBED, H.INPUT_PE}
        bad = [w for w in wanted if w not in known]
        if bad:
            raise UnknownNameError(f"unknown PE site(s) {bad}; this model has: {[s.hook for s in sites]} "
                                   f"(layers {[s.layer for s in sites]})")
        sites = [s for s in sites if s.hook in wanted or s.layer in wanted]
    if not sites:
        raise UnknownNameError("the model has no PE site to analyse" + (f" among {list(select)}" if select else ""))
    return Runner(model, view, sites, tap)


def shuffle_permutation(n: int, seed: int) -> torch.Tensor:
    """The fixed permutation of ``n`` patch rows used by ``shuffle``: row t receives row ``perm[t]``
    (``torch.randperm`` seeded with ``seed``; rolled once if it is the identity, so it always moves rows)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if n > 1 and torch.equal(perm, torch.arange(n)):
        perm = perm.roll(1)
    return perm


def intervene(pe: torch.Tensor, kind: str, n_prefix: int, perm: torch.Tensor | None = None) -> torch.Tensor:
    """``pe`` (…, T, D) with its position information removed:

    - ``zero``: every row 0, the class-token row included;
    - ``mean``: every patch row replaced by the mean patch row (position removed, offset kept);
    - ``shuffle``: the patch rows permuted by ``perm`` (row t gets row ``perm[t]``).

    ``mean`` and ``shuffle`` keep the ``n_prefix`` leading rows: the class slot's PE is part of that token's
    constant identity, not position among patches.
    """
    if kind == "zero":
        return torch.zeros_like(pe)
    patches = pe[..., n_prefix:, :]
    if kind == "mean":
        new = patches.mean(dim=-2, keepdim=True).expand_as(patches)
    elif kind == "shuffle":
        if perm is None:
            raise ValueError("shuffle needs a permutation (shuffle_permutation)")
        new = patches[..., perm.to(pe.device), :]
    else:
        raise UnknownNameError(f"intervention {kind!r} is unknown; valid values: {INTERVENTIONS}")
    return torch.cat([pe[..., :n_prefix, :], new], dim=-2)


@contextlib.contextmanager
def replaced(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, ``module``'s output is ``fn(output)``; the hook is removed on exit, also after errors."""
    handle = module.register_forward_hook(lambda mod, args, out: fn(out))
    try:
        yield
    finally:
        handle.remove()
