"""A timm ViT block that can take a layer-wise position embedding into its attention input."""

from __future__ import annotations

from typing import Callable

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .hooks import HookPoint


class PEBlock(Block):
    """timm's pre-norm ``Block`` with hook points and an optional PE input.

    ``x = x + MSA(LN_l(x) + pe_l)``, then ``x = x + MLP(LN''_l(x))``. With ``pe=None`` this is
    exactly timm's block (same operations in the same order). A block that receives a PE owns the
    PE's LayerNorm ``LN'_l`` as ``pe_norm`` (see :meth:`enable_pe`).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hook_resid_pre = HookPoint()
        self.hook_tok = HookPoint()
        self.hook_resid_post = HookPoint()
        self.pe_norm: nn.Module | None = None
        self.hook_pe: HookPoint | None = None

    @property
    def receives_pe(self) -> bool:
        """Whether this block adds a layer-wise PE to its attention input."""
        return self.pe_norm is not None

    def enable_pe(self, norm_layer: Callable[[int], nn.Module]) -> None:
        """Give this block its own PE LayerNorm ``LN'_l`` (done once, at model construction)."""
        dim = self.norm1.normalized_shape[0]
        self.pe_norm = norm_layer(dim)
        self.hook_pe = HookPoint()

    def embed_pe(self, source: torch.Tensor) -> torch.Tensor:
        """The PE this block receives: ``LN'_l(source)`` (also the next block's source in a hierarchical chain).

        ``hook_pe`` sits where the block adds it (:meth:`forward`), so a hook on ``hook_pe`` changes only the
        term this block adds (its direct effect); the chain value is the output of the module ``pe_norm``.
        """
        return self.pe_norm(source)

    def forward(self, x: torch.Tensor, pe: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        x = self.hook_resid_pre(x)
        h = self.hook_tok(self.norm1(x))
        if pe is not None:
            h = h + (pe if self.hook_pe is None else self.hook_pe(pe))
        x = x + self.drop_path1(self.ls1(self.attn(h)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return self.hook_resid_post(x)
