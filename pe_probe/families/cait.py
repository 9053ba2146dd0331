"""Absolute PE with a late class token (``pe_kind="absolute"``): timm's CaiT (``Cait``).

CaiT adds its learned ``pos_embed`` (1, N, D) to the patch tokens only; the class token joins later, in the
class-attention blocks (``blocks_token_only``), which read ``cat(cls, patches)`` and update the class token
alone. The site is ``hook_input_pe`` (the PE is read once, at the input, so its direct and total effects
are one): timm adds the parameter inside ``forward_features``, so :meth:`CaitFamily.run` calls the model with
``torch.func.functional_call`` and ``pos_embed`` passed through a :class:`~pe_probe.models.HookPoint` the
family owns (exact, differentiable, no parameter written).

Blocks are numbered globally: ``blocks.{0..L-1}`` are the self-attention blocks, ``blocks.{L..}`` the
class-attention blocks. The stream entering a class-attention block is ``cat(cls, patches)`` (B, 1 + N, D)
(its ``norm1`` input); since such a block returns the class token only, its ``hook_resid_post`` is read where
the next reader receives the concatenation (the next block's ``norm1``, else the final norm). Since the
stream grows from N to 1 + N tokens, no per-block PE is derived for the token-vs-PE statistics.
"""

from __future__ import annotations

import torch
from timm.models.cait import Cait
from torch import nn
from torch.func import functional_call

from ..core import hook_points as H
from ..models import HookPoint
from . import register_family
from ._zoo import PooledTap
from .base import Family, Site, Tap


def late_class_stream_taps(family: Family, n_self: int, taps: dict[str, Tap]) -> dict[str, Tap]:
    """``taps`` (a family's stream taps) for models whose blocks ``n_self..`` are class-attention blocks
    returning the class token only: their ``hook_resid_post`` is the next reader's input ((B, 1 + N, D))."""
    readers = [blk.norm1 for blk in family.blocks[1:]] + [family.final_norm]
    for i in range(n_self, family.depth):
        taps[H.block_hook(i, H.RESID_POST)] = Tap(readers[i], "in")
    return taps


@register_family
class CaitFamily(PooledTap, Family):
    """CaiT: ``hook_input_pe`` (kind ``absolute``, patch rows only); class token from the class-attention blocks."""

    name, pe_kind, priority = "cait", "absolute", 50
    measures = ("the learned pos_embed added to the patch tokens (hook_input_pe): capture, zero/mean/shuffle "
                "ablation, attribution; token norms and stream per block (self- then class-attention blocks)")
    limits = ("no per-block hook_pe (the stream grows from N to 1 + N tokens when the class token joins); the class "
              "token has no PE; fixed input size only")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        """Whether ``model`` is a timm ``Cait``."""
        return isinstance(model, Cait)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if model.global_pool not in ("token", "avg"):
            raise self.unsupported(f"global_pool={model.global_pool!r} gives no pooled features; valid: token, avg")
        pe = model.patch_embed
        if getattr(pe, "dynamic_img_size", False):
            raise self.unsupported("dynamic_img_size=True: the probe needs one fixed input size and PE table")
        self.n_self = len(model.blocks)
        self.blocks = list(model.blocks) + list(model.blocks_token_only)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = 1  # the class token, from the first class-attention block on
        self.block_prefix = [0] * self.n_self + [1] * len(model.blocks_token_only)
        self.grid = tuple(int(g) for g in pe.grid_size)
        self.img_size = tuple(int(s) for s in pe.img_size)
        self.in_chans = int(pe.proj.in_channels)
        self.global_pool = model.global_pool
        self.final_norm = model.norm
        self.pooled_module = model.head_drop
        self.input_pe = True
        self.uniform = False  # N tokens in the self-attention blocks, 1 + N in the class-attention ones
        self._hp = HookPoint()

    def sites(self, effect: str = "direct") -> list[Site]:
        """The one site, ``hook_input_pe``: the pos_embed added to the patch tokens (direct = total)."""
        return [Site(H.INPUT_PE, "absolute", H.INPUT, self._hp, tok=self.model.patch_embed, n_prefix=0,
                     note="CaiT's pos_embed, added to the patch tokens before the self-attention blocks")]

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The logits, ``pos_embed`` routed through the family's hook point (functional_call)."""
        return functional_call(self.model, {"pos_embed": self._hp(self.model.pos_embed)}, (images,))

    def stream_taps(self) -> dict[str, Tap]:
        """Default taps; a class-attention block's ``hook_resid_post`` is the next reader's (B, 1 + N, D) input."""
        return late_class_stream_taps(self, self.n_self, super().stream_taps())

    def derived(self) -> dict:
        """``hook_pos_embed``: the table (1, N, D), patch rows only."""
        model = self.model
        return {H.POS_EMBED: lambda: model.pos_embed}

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """CaiT's pooling of the final tokens: the class token, or the patch mean for ``avg``."""
        return x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
