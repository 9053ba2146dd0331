"""Absolute Fourier PE (``pe_kind="absolute"``): timm's XCiT (``Xcit``).

XCiT's ``pos_embed`` is a module, ``PositionalEncodingFourier(B, Hp, Wp)``: sin/cos features of the patch
coordinates through a learned 1x1 conv, returned as (B, D, Hp, Wp) and added to the patch tokens (the class
token joins later, in the class-attention blocks ``cls_attn_blocks``). The site is ``hook_input_pe``: a
forward hook on that module passes its output, laid out (B, T, D), through a
:class:`~pe_probe.models.HookPoint` the family owns and gives timm the same values back in its layout, so
capture, ablation (``zero`` is the PE off) and attribution are exact; the patch embeddings (the token term of
the same sum) pass through a second hook point. The local patch interaction (``LPI``, depthwise convs) in
every block carries position implicitly and is not treated as a PE site. Blocks are numbered globally:
the XCA blocks, then the class-attention blocks (their stream is (B, 1 + N, D)).
"""

from __future__ import annotations

import torch
from timm.models.xcit import Xcit
from torch import nn

from ..core import hook_points as H
from ..models import HookPoint
from . import register_family
from ._zoo import PooledTap, hooked
from .base import Family, Site


@register_family
class XcitFamily(PooledTap, Family):
    """XCiT: ``hook_input_pe`` (the Fourier encoding's output, kind ``absolute``); none without ``pos_embed``."""

    name, pe_kind, priority = "xcit", "absolute", 50
    measures = ("the Fourier positional encoding added to the patch tokens (hook_input_pe, (B, T, D)): capture, "
                "zero/mean/shuffle ablation, attribution; token norms and stream per block")
    limits = ("the LPI depthwise convs carry position implicitly and are not a PE site; no per-block hook_pe; "
              "the class token has no PE; use_pos_embed=False models have no site (pe_kind none)")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        """Whether ``model`` is a timm ``Xcit``."""
        return isinstance(model, Xcit)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if model.global_pool not in ("token", "avg"):
            raise self.unsupported(f"global_pool={model.global_pool!r} gives no pooled features; valid: token, avg")
        pe = model.patch_embed
        self.n_self = len(model.blocks)
        self.blocks = list(model.blocks) + list(model.cls_attn_blocks)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = 1
        self.block_prefix = [0] * self.n_self + [1] * len(model.cls_attn_blocks)
        self.img_size = tuple(int(s) for s in pe.img_size)
        self.grid = tuple(int(s) // int(pe.patch_size) for s in self.img_size)
        self.in_chans = int(model.in_chans)
        self.global_pool = model.global_pool
        self.final_norm = model.norm
        self.pooled_module = model.head_drop
        self.uniform = False
        self.input_pe = model.pos_embed is not None
        if not self.input_pe:
            self.pe_kind = "none"
        self._hp = HookPoint()
        self._tok_hp = HookPoint()

    def sites(self, effect: str = "direct") -> list[Site]:
        """``hook_input_pe`` where the model has a ``pos_embed`` (read once: direct = total); else none."""
        if not self.input_pe:
            return []
        return [Site(H.INPUT_PE, "absolute", H.INPUT, self._hp, tok=self._tok_hp, n_prefix=0,
                     note="XCiT's Fourier positional encoding, added to the patch tokens")]

    def _registrations(self):
        model = self.model

        def tok(mod, args, out):
            x, size = out
            return self._tok_hp(x), size

        def pos(mod, args, out):
            b, d, h, w = out.shape
            term = self._hp(out.flatten(2).transpose(1, 2))  # (B, T, D), row t = patch t in raster order
            return term.transpose(1, 2).reshape(b, d, h, w)

        regs = [lambda: model.patch_embed.register_forward_hook(tok)]
        if self.input_pe:
            regs.append(lambda: model.pos_embed.register_forward_hook(pos))
        return regs

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The logits, the encoding and the patch embeddings routed through the family's hook points."""
        with hooked(self._registrations()):
            return self.model(images)

    def derived(self) -> dict:
        """``hook_pos_embed``: the encoding for one image, (1, T, D)."""
        if not self.input_pe:
            return {}
        model, (h, w) = self.model, self.grid
        return {H.POS_EMBED: lambda: model.pos_embed(1, h, w).flatten(2).transpose(1, 2)}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """XCiT's pooling: the class token, or the patch mean for ``avg``."""
        return x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
