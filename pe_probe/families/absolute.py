"""The absolute family: timm ``VisionTransformer``s whose position is one table ``pos_embed`` added to the
tokens at the input (ViT, DeiT, DeiT distilled, DeiT-III, DINOv2 with or without registers, CLIP towers,
SigLIP ``map`` heads, ``avg`` pooling with ``fc_norm``, ``dynamic_img_size`` models at their native size).

What each block "sees" of the PE is derived as LaPE's authors did for default models: block ``l``'s
``norm1`` applied to the PE as it enters the blocks, ``blocks.{l}.hook_pe = norm1_l(pe_in)``, where
``pe_in = pos_embed`` or, for a pre-norm (CLIP) tower, ``norm_pre(pos_embed)`` (the table the first block
receives passes ``norm_pre`` first). Prefix rows the table has no row for (``no_embed_class``: DeiT-III,
DINOv2 with registers, whose class-token PE timm folds into ``cls_token``) are NaN there. The one PE term of
the forward pass is ``pos_embed`` itself, site ``hook_input_pe``: timm adds it inside ``_pos_embed``, so the
family runs the model with ``torch.func.functional_call`` and passes ``pos_embed`` through a
:class:`~pe_probe.models.HookPoint` it owns (exact, differentiable, no parameter written, no hook left on the
model). With ``dynamic_img_size`` timm resamples the table to the input grid after that tap; the probe runs
at the model's native size, where the resampling returns the table unchanged.

The Last LN is ``model.norm`` when it normalises every token before pooling; models that normalise after
pooling (``fc_norm``, e.g. ``global_pool="avg"``) or have no final norm get no Last-LN statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.func import functional_call

from ..core import hook_points as H
from ..models import HookPoint
from . import register_family
from .base import Family, Site, Tap


def _is_identity(m: nn.Module | None) -> bool:
    return m is None or isinstance(m, nn.Identity)


@register_family
class AbsoluteFamily(Family):
    """timm ``VisionTransformer`` (and subclasses such as ``VisionTransformerDistilled``) with a ``pos_embed``."""

    name = "absolute"
    pe_kind = "absolute"
    priority = 10
    adapter = "timm"
    measures = ("per-block tokens vs the derived PE norm1_l(pe_in) (after norm_pre for CLIP), token norms, "
                "Last LN; ablation and attribution of pos_embed (hook_input_pe)")
    limits = ("per-block PEs are derived, not terms of the forward; no Last-LN statistics with fc_norm or "
              "without a final norm; probes at the native input size only")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer) and getattr(model, "pos_embed", None) is not None

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__(model)
        pe = getattr(model, "patch_embed", None)
        if pe is None or getattr(pe, "img_size", None) is None:
            raise self.unsupported("the probe needs a fixed input size (patch_embed.img_size)")
        if not model.global_pool:
            raise self.unsupported("global_pool='' returns every token; the probe needs a pooled head "
                                   "(token, avg, max, avgmax or map)")
        self.blocks = list(model.blocks)
        for i, blk in enumerate(self.blocks):
            if not hasattr(blk, "norm1"):
                raise self.unsupported(f"block {i} ({type(blk).__name__}) has no norm1; not a pre-norm ViT block")
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.grid = tuple(int(g) for g in pe.grid_size)
        self.img_size = tuple(int(s) for s in pe.img_size)
        self.in_chans = int(pe.proj.in_channels)
        self.global_pool = str(model.global_pool)
        self.final_norm = None if _is_identity(getattr(model, "norm", None)) else model.norm
        self.norm_pre = None if _is_identity(getattr(model, "norm_pre", None)) else model.norm_pre
        cfg = getattr(model, "pe_config", None)  # a pe_probe model read as a timm one adds pos_0 only if so
        self.input_pe = cfg is None or bool(cfg.input_add)
        self.receiving_blocks = list(range(len(self.blocks)))
        self.pe_derived = True
        self.distilled = getattr(model, "dist_token", None) is not None
        rows, N = model.pos_embed.shape[1], self.grid[0] * self.grid[1]
        if rows not in (N, N + self.num_prefix_tokens):
            raise self.unsupported(f"pos_embed has {rows} rows; expected {N + self.num_prefix_tokens} or {N} for "
                                   f"a {self.grid} grid with {self.num_prefix_tokens} prefix tokens")
        self.n_prefix_pe = rows - N  # prefix rows the table has (0 with no_embed_class)
        self.tap = HookPoint()  # pos_embed passes through it under run()

    # ------------------------------------------------------------------ structure
    @property
    def pe_mode(self) -> str:
        return getattr(self.model, "pe_mode", "timm")

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """timm's pooling (class token, average, ``map`` attention pool, ...); DeiT distilled: the mean of the
        class and distillation tokens, as its ``forward_head(pre_logits=True)``."""
        if self.distilled:
            return (x[:, 0] + x[:, 1]) / 2
        return self.model.pool(x)

    def stream_taps(self) -> dict[str, Tap]:
        taps = super().stream_taps()
        if not self.distilled:
            taps[H.POOLED] = Tap(self.model.fc_norm, "in")
        return taps

    def pe_in(self) -> torch.Tensor:
        """The PE as the first block receives it, (1, T, D): ``pos_embed`` with NaN rows for prefix slots it has
        no row for, passed through ``norm_pre`` for pre-norm towers (NaN rows stay NaN: LayerNorm is per row)."""
        pos = self.model.pos_embed
        if self.n_prefix_pe < self.num_prefix_tokens:
            pad = pos.new_full((pos.shape[0], self.num_prefix_tokens - self.n_prefix_pe, pos.shape[2]), float("nan"))
            pos = torch.cat([pad, pos], dim=1)
        return pos if self.norm_pre is None else self.norm_pre(pos)

    def derived(self) -> dict[str, Callable[[], torch.Tensor]]:
        model = self.model
        out: dict[str, Callable[[], torch.Tensor]] = {H.POS_EMBED: lambda: model.pos_embed}
        if self.input_pe:
            out[H.INPUT_PE] = lambda: model.pos_embed  # timm adds pos_embed to x as it is
        for i, blk in enumerate(self.blocks):
            out[H.block_hook(i, H.PE)] = (lambda n=blk.norm1: n(self.pe_in()))
        return out

    def static_arrays(self) -> dict[str, np.ndarray]:
        return {"pos_embed": self.model.pos_embed.detach()[0].double().cpu().numpy()}

    def names(self) -> list[str]:
        names = H.hook_point_names(self.depth, self.receiving_blocks, False, self.input_pe)
        if self.final_norm is None:
            names = [n for n in names if n not in (H.LAST_LN_IN, H.LAST_LN_OUT)]
        if self.distilled:
            names.remove(H.POOLED)
        return names

    def meta(self) -> dict:
        out = super().meta()
        out["pre_norm"] = self.norm_pre is not None
        if self.n_prefix_pe < self.num_prefix_tokens:
            out["prefix_pe"] = ("none: pos_embed has no row for the prefix tokens (no_embed_class); their PE rows "
                                "are NaN (DINOv2 with registers folds the class-token PE into cls_token)")
        return out

    # ------------------------------------------------------------------ the site
    def sites(self, effect: str = "direct") -> list[Site]:
        """The one term, ``pos_embed`` added at the input (direct and total effects are one: it is read once);
        named ``hook_pos_embed`` under ``effect="total"``."""
        if not self.input_pe:
            return []
        name = H.POS_EMBED if effect == "total" else H.INPUT_PE
        return [Site(name, "absolute", H.INPUT, self.tap, tok=self.model.patch_embed, n_prefix=self.n_prefix_pe,
                     note="pos_embed as added to the tokens (before norm_pre for CLIP towers)")]

    def find_sites(self, effect: str = "direct", select: Sequence[str | int] | str | int | None = None) -> list[Site]:
        """As :meth:`Family.find_sites`; ``hook_pos_embed`` and ``hook_input_pe`` both name the one site (the
        first under that name)."""
        wanted = None if select is None else ([select] if isinstance(select, (str, int)) else list(select))
        if wanted is not None and H.POS_EMBED in wanted and H.INPUT_PE not in wanted and self.input_pe:
            effect = "total"
        if wanted is not None and effect == "total":
            wanted = [H.POS_EMBED if w == H.INPUT_PE else w for w in wanted]
        if wanted is not None and effect == "direct":
            wanted = [H.INPUT_PE if w == H.POS_EMBED else w for w in wanted]
        return super().find_sites(effect, wanted)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """``model(images)`` with ``pos_embed`` read through the family's HookPoint (plain forward when no hook
        is on it, e.g. while probing)."""
        tap = self.tap
        if not (tap._forward_hooks or tap._forward_pre_hooks):
            return self.model(images)
        return functional_call(self.model, {"pos_embed": tap(self.model.pos_embed)}, (images,))
