"""Conditional PE (``pe_kind="conditional"``): timm's Twins (PCPVT and SVT), whose position is generated from
the tokens by a PEG (``PosConv``, a depthwise 3x3 conv) after each stage's first block.

timm's ``PosConv.forward(x, size)`` returns ``proj(x) + x`` (stride 1), so the PEG term of stage ``s`` is
``proj(x)``, the conv's output, one per image: (B, T_s, D_s). It is read at ``pos_block.{s}.hook_peg``: a
forward hook on ``pos_block[s].proj`` passes that output, laid out (B, T, D), through a
:class:`~pe_probe.models.HookPoint` the family owns and hands timm a fresh (B, D, H, W) copy (timm then adds
its input in place), so reading, replacing (``zero``: a PEG whose conv contributes nothing, output = input)
and attributing are exact. Blocks are numbered globally across the stages (``blocks.{l}`` is the l-th block
in forward order); the stream entering each block is already (B, T, D).
"""

from __future__ import annotations

import torch
from timm.models.twins import Twins
from torch import nn

from ..core import hook_points as H
from ..models import HookPoint
from . import register_family
from ._zoo import PooledTap, hooked
from .base import Family, Site


@register_family
class ConditionalFamily(PooledTap, Family):
    """Twins PCPVT/SVT: one PEG site per stage, ``pos_block.{s}.hook_peg`` (kind ``conditional``)."""

    name, pe_kind, priority = "conditional", "conditional", 50
    measures = ("each stage's PEG term (PosConv output minus its input, (B, T, D) per image) at pos_block.{s}.hook_peg: "
                "capture, zero/mean/shuffle ablation, attribution; token norms and stream per global block")
    limits = ("no per-block hook_pe (the PEG term depends on the image, so the token-vs-PE map statistics do not "
              "apply); T and D change across stages; global_pool must be 'avg'")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        """Whether ``model`` is a timm ``Twins``."""
        return isinstance(model, Twins)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if model.global_pool != "avg":
            raise self.unsupported(f"global_pool={model.global_pool!r} gives no pooled features; only 'avg' is "
                                   "measured")
        for s, peg in enumerate(model.pos_block):
            if peg.stride != 1:
                raise self.unsupported(f"pos_block.{s} has stride {peg.stride}: timm's PosConv then does not add "
                                       "its input, so its output is no additive PE term")
        self.stage_first: list[int] = []  # global index of each stage's first block (the block its PEG follows)
        self.block_stage: list[int] = []
        for s, stage in enumerate(model.blocks):
            self.stage_first.append(len(self.blocks))
            self.blocks += list(stage)
            self.block_stage += [s] * len(stage)
        pe0 = model.patch_embeds[0]
        self.embed_dim = int(model.embed_dims[-1])
        self.num_prefix_tokens = 0
        self.grid = (int(pe0.H), int(pe0.W))
        self.img_size = tuple(int(s) for s in pe0.img_size)
        self.in_chans = int(pe0.proj.in_channels)
        self.global_pool = "avg"
        self.final_norm = model.norm
        self.pooled_module = model.head_drop
        self.uniform = False
        self.block_grid = []  # (H, W) of the tokens each block sees
        for s, stage in enumerate(model.blocks):
            pe = model.patch_embeds[s]
            self.block_grid += [(int(pe.H), int(pe.W))] * len(stage)
        self.final_grid = self.block_grid[-1]  # the grid of the tokens the final norm sees
        self._peg_hp = nn.ModuleList(HookPoint() for _ in model.pos_block)

    def sites(self, effect: str = "direct") -> list[Site]:
        """One PEG site per stage (the term is read once, so ``direct`` and ``total`` are the same)."""
        return [Site(H.peg_hook(s), "conditional", self.stage_first[s], self._peg_hp[s],
                     tok=self.blocks[self.stage_first[s]], n_prefix=0,
                     note=f"stage {s}'s PosConv output minus its input (after block {self.stage_first[s]})")
                for s in range(len(self._peg_hp))]

    def names(self) -> list[str]:
        """Every hook name in forward order: a stage's PEG comes right after the output of the block it follows."""
        names = [n for n in super().names() if not n.endswith(H.PEG)]
        for s in reversed(range(len(self._peg_hp))):
            names.insert(names.index(H.block_hook(self.stage_first[s], H.RESID_POST)) + 1, H.peg_hook(s))
        return names

    def _route(self, s: int):
        hp = self._peg_hp[s]

        def hook(mod, args, out):
            b, c, h, w = out.shape
            term = hp(out.flatten(2).transpose(1, 2))  # (B, T, D): what the PEG adds to its input
            # a fresh tensor: timm adds the PEG's input to it in place
            return term.transpose(1, 2).reshape(b, c, h, w).clone(memory_format=torch.contiguous_format)

        return lambda: self.model.pos_block[s].proj.register_forward_hook(hook)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The logits, each PEG term routed through its ``pos_block.{s}.hook_peg`` hook point."""
        with hooked([self._route(s) for s in range(len(self._peg_hp))]):
            return self.model(images)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Twins' average over the final tokens (B, T, D) -> (B, D)."""
        return x.mean(dim=1)
