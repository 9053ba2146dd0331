"""Absolute PE in a hierarchical model with pooling (``pe_kind="absolute"``): timm's Hiera.

Hiera adds its absolute PE (``pos_embed`` (1, N, D); or the ``abs_win`` global + window tables, or separate
spatial/temporal ones) to the patch tokens in raster order inside ``Hiera._pos_embed``, then *unrolls* the
tokens (``Unroll``: an order in which each stage's 2x2 max-pooling of queries is a reshape). The site is
``hook_input_pe``, the term the patch tokens receive, (B, N, D) in raster order; it is routed by the zero
trick of :mod:`pe_probe.families._zoo` (a hook on ``patch_embed`` keeps the tokens and gives timm zeros, so
``_pos_embed`` yields the PE alone; a pre-hook on ``unroll`` puts ``tokens + PE`` back through the family's
hook points), exact to the bit with identity hook points, for all three PE variants.

Blocks are numbered globally (``blocks.{l}``, already one list in timm); the stream entering block l is
(B, T_l, D_l) in *unrolled* token order, with T and D changing where a stage pools (``uniform=False``).
Hiera has no norm on every token: its head pools, then normalises (``head.norm``), so there is no Last LN.
"""

from __future__ import annotations

import torch
from timm.models.hiera import Hiera
from torch import nn

from ..core import hook_points as H
from ..models import HookPoint
from . import register_family
from ._zoo import PooledTap, hooked
from .base import Family, Site


@register_family
class HieraFamily(PooledTap, Family):
    """Hiera: ``hook_input_pe`` (raster order, before the unroll); universal quantities per global block."""

    name, pe_kind, priority = "hiera", "absolute", 50
    measures = ("the absolute PE the patch tokens receive before the unroll (hook_input_pe, (B, N, D), raster order): "
                "capture, zero/mean/shuffle ablation, attribution; token norms and stream per global block")
    limits = ("streams are in Hiera's unrolled token order with T, D changing at pooling stages; no Last LN (the head "
              "pools before its norm); no per-block hook_pe; images only (no mask-unit masks)")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        """Whether ``model`` is a timm ``Hiera``."""
        return isinstance(model, Hiera)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if len(model.tokens_spatial_shape) != 2:
            raise self.unsupported(f"a {len(model.tokens_spatial_shape)}-d token grid (video Hiera) is not measured; "
                                   "the probe feeds (B, C, H, W) images")
        pool = getattr(model.head, "pool_type", "")
        if not pool:
            raise self.unsupported("the head has no pooling (global_pool=''), so there are no pooled features")
        self.blocks = list(model.blocks)
        self.embed_dim = int(model.num_features)
        self.num_prefix_tokens = 0
        self.grid = tuple(int(s) for s in model.tokens_spatial_shape)
        self.img_size = tuple(int(g) * int(s) for g, s in zip(self.grid, model.patch_stride))
        self.in_chans = int(model.in_chans)
        self.global_pool = str(pool)
        self.final_norm = None
        self.pooled_module = model.head.norm
        self.uniform = False
        self.input_pe = True
        self._hp = HookPoint()
        self._tok_hp = HookPoint()

    def sites(self, effect: str = "direct") -> list[Site]:
        """``hook_input_pe`` (read once: direct = total)."""
        return [Site(H.INPUT_PE, "absolute", H.INPUT, self._hp, tok=self._tok_hp, n_prefix=0,
                     note="Hiera's absolute PE, added to the patch tokens in raster order before the unroll")]

    def _registrations(self):
        model, kept = self.model, {}

        def keep_tokens(mod, args, out):
            kept["tok"] = out
            return torch.zeros_like(out)  # Hiera._pos_embed adds the PE to these zeros: the PE alone

        def put_back(mod, args):
            return (self._tok_hp(kept.pop("tok")) + self._hp(args[0]),) + tuple(args[1:])

        return [lambda: model.patch_embed.register_forward_hook(keep_tokens),
                lambda: model.unroll.register_forward_pre_hook(put_back)]

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The logits, the PE and the patch tokens routed through the family's hook points."""
        with hooked(self._registrations()):
            return self.model(images)

    def derived(self) -> dict:
        """``hook_pos_embed``: the plain ``pos_embed`` table (1, N, D), where the model has one."""
        model = self.model
        if model.pos_embed is None or model.pos_embed_win is not None:
            return {}
        return {H.POS_EMBED: lambda: model.pos_embed}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Hiera's head pooling of the final (B, T, D) tokens (before ``head.norm``)."""
        return self.model.head._global_pool(x)
