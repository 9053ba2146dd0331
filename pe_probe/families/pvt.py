"""No explicit PE (``pe_kind="none"``): timm's PVT-v2 (``PyramidVisionTransformerV2``).

PVT-v2 has no position embedding, table or generator. Its overlapping patch embeddings (zero-padded convs)
and the depthwise 3x3 conv inside every block's MLP (``MlpWithDepthwiseConv``) carry position implicitly
(zero padding tells a border token apart); pe_probe does not treat them as PE sites, since there is no
term to switch off that would leave the model otherwise intact. The family gives the universal per-layer
quantities only (token norms, the stream entering each block), with blocks numbered globally across the
four stages (``stages.{s}.blocks.{b}`` is ``blocks.{l}``, l in forward order); the stream is already
(B, T, D) where the blocks read it. The final norm is the last stage's ``norm``.
"""

from __future__ import annotations

import torch
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from torch import nn

from . import register_family
from ._zoo import PooledTap, conv_stride_out, input_size
from .base import Family


@register_family
class PvtV2Family(PooledTap, Family):
    """PVT-v2: no PE site; universal quantities for every global block."""

    name, pe_kind, priority = "pvt_v2", "none", 50
    measures = "token norms and the token stream entering each global block (all four stages), final-norm tokens"
    limits = ("no PE site: the MLP's depthwise conv and the zero-padded patch convs carry position implicitly and "
              "are not treated as a PE; the input size is the model's pretrained_cfg input_size")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        """Whether ``model`` is a timm ``PyramidVisionTransformerV2``."""
        return isinstance(model, PyramidVisionTransformerV2)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if model.global_pool != "avg":
            raise self.unsupported(f"global_pool={model.global_pool!r} gives no pooled features; only 'avg' is "
                                   "measured")
        try:
            self.img_size = input_size(model)
        except ValueError as e:
            raise self.unsupported(f"{e}; the probe needs a fixed input size") from None
        self.block_stage: list[int] = []
        for s, stage in enumerate(model.stages):
            self.blocks += list(stage.blocks)
            self.block_stage += [s] * len(stage.blocks)
        pe = model.patch_embed
        k, st = pe.proj.kernel_size, pe.proj.stride
        pad = pe.proj.padding
        self.grid = tuple(conv_stride_out(self.img_size[i], k[i], st[i], pad[i]) for i in range(2))
        self.embed_dim = int(model.num_features)
        self.num_prefix_tokens = 0
        self.in_chans = int(pe.proj.in_channels)
        self.global_pool = "avg"
        self.final_norm = model.stages[-1].norm
        self.pooled_module = model.head_drop
        h, w = self.grid
        for stage in model.stages[1:]:  # each later stage downsamples with a stride-2 overlapping conv
            c = stage.downsample.proj
            h = conv_stride_out(h, c.kernel_size[0], c.stride[0], c.padding[0])
            w = conv_stride_out(w, c.kernel_size[1], c.stride[1], c.padding[1])
        self.final_grid = (h, w)  # the grid of the tokens the final norm sees
        self.uniform = False

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """PVT-v2's average over the final tokens (B, T, D) -> (B, D) (timm averages the same over (H, W))."""
        return x.mean(dim=1)
