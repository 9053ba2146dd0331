"""Variable-size absolute PE (``pe_kind="absolute"``): timm's NaFlexViT (``NaFlexVit``).

NaFlexViT's embedding module (``NaFlexEmbeds``) adds a learned table (``learned``, (1, h, w, D), or
``factorized`` rows + columns), resized to the input's patch grid inside timm methods (``x.add_(pe)``), to
the patch tokens, then prepends the class and register tokens (which get no PE). The site is
``hook_input_pe``, the term the patch tokens actually receive, (B, N, D), at whatever grid the input has:
it is routed by the zero trick of :mod:`pe_probe.families._zoo` (a hook on ``embeds.norm`` keeps the tokens
and gives timm zeros, so timm's own resizing code yields the PE alone; a hook on ``embeds`` puts
``tokens + PE`` back through the family's hook points), exact to the bit with identity hook points.

Measured on fixed-size (B, C, H, W) images (the probe's input), where the PE is the same for every image.
NaFlex's pre-patchified dict inputs (``patch_coord``/``patch_valid`` from its collator, one grid per
sample) are not what the probe, ablation and attribution feed, so they are not measured; models with a
rotary PE (``rope_type``) are refused.
"""

from __future__ import annotations

import torch
from timm.models.naflexvit import NaFlexVit
from torch import nn

from ..core import hook_points as H
from ..models import HookPoint
from . import register_family
from ._zoo import PooledTap, hooked, input_size
from .base import Family, Site


@register_family
class NaFlexVitFamily(PooledTap, Family):
    """NaFlexViT in image mode: ``hook_input_pe`` (the resized table the patch tokens receive)."""

    name, pe_kind, priority = "naflexvit", "absolute", 50
    measures = ("the learned or factorized PE at the input's grid as the patch tokens receive it (hook_input_pe, "
                "(B, N, D)): capture, zero/mean/shuffle ablation, attribution; token norms and stream per block")
    limits = ("fixed-size image input only (NaFlex dict inputs with per-sample patch_coord grids are not fed by the "
              "probe); rotary NaFlexViTs refused; no per-block hook_pe")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        """Whether ``model`` is a timm ``NaFlexVit``."""
        return isinstance(model, NaFlexVit)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        emb = model.embeds
        if getattr(model, "rope", None) is not None:
            raise self.unsupported(f"rotary PE ({type(model.rope).__name__}) in a NaFlexViT is not read (its rope "
                                   "embeds are passed per block by NaFlexVit.forward_features, not routed here)")
        if model.global_pool not in ("token", "avg", "max", "avgmax", "map"):
            raise self.unsupported(f"global_pool={model.global_pool!r} gives no pooled features")
        try:
            self.img_size = tuple(emb.default_img_size) if emb.default_img_size is not None else input_size(model)
        except ValueError as e:
            raise self.unsupported(f"{e}; the probe needs a fixed input size") from None
        self.blocks = list(model.blocks)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.grid = tuple(int(s) // int(p) for s, p in zip(self.img_size, emb.patch_size))
        self.in_chans = int(model.in_chans)
        self.global_pool = model.global_pool
        self.final_norm = None if isinstance(model.norm, nn.Identity) else model.norm
        self.pooled_module = model.fc_norm
        self.input_pe = emb.pos_embed_type != "none"
        if not self.input_pe:
            self.pe_kind = "none"
        self._hp = HookPoint()
        self._tok_hp = HookPoint()

    def sites(self, effect: str = "direct") -> list[Site]:
        """``hook_input_pe`` (patch rows only; read once: direct = total); none for ``pos_embed='none'``."""
        if not self.input_pe:
            return []
        return [Site(H.INPUT_PE, "absolute", H.INPUT, self._hp, tok=self._tok_hp, n_prefix=0,
                     note=f"NaFlexViT's {self.model.embeds.pos_embed_type} PE at the {self.grid} grid, "
                          "added to the patch tokens")]

    def _registrations(self):
        emb, npt, kept = self.model.embeds, self.num_prefix_tokens, {}

        def keep_tokens(mod, args, out):
            kept["tok"] = out
            return torch.zeros_like(out)  # timm adds the PE to these zeros: the PE alone

        def put_back(mod, args, out):
            x, grid = out
            pe = x[:, npt:]
            return torch.cat([x[:, :npt], self._tok_hp(kept.pop("tok")) + self._hp(pe)], dim=1), grid

        return [lambda: emb.norm.register_forward_hook(keep_tokens), lambda: emb.register_forward_hook(put_back)]

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The logits, the PE and the patch tokens routed through the family's hook points."""
        if not self.input_pe:
            return self.model(images)
        with hooked(self._registrations()):
            return self.model(images)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """NaFlexViT's pooling (``_pool``: token, average, max or attention pool), before ``fc_norm``."""
        return self.model._pool(x)
