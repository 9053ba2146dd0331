"""Rotary PE (RoPE): timm's ``Eva`` class (EVA02, the rope-ViT axial / mixed / ``_ape`` variants
``vit_*_rope_*``, the RoPE-only register GAP models ``vit_*_rope_reg*_gap_*``, DINOv3 ``vit_*_dinov3``).

``Eva.forward_features`` builds one rotary table (``model.rope.get_embed()``) and passes it to every block as
``blk.attn(x, rope=...)`` (mixed RoPE: the table of block ``l`` is ``rope[l]``, one per head); the attention
rotates the patch rows of its queries and keys with it, prefix tokens are not rotated
(``timm/models/eva.py``, ``apply_rot_embed_cat`` in ``timm/layers/pos_embed_sincos.py``).

Sites:

- ``blocks.{l}.attn.hook_rope`` (kind ``rotary``, one per block): the ``(sin | cos)`` table block ``l``'s
  attention receives, as ``(1, 1, N, 2 * head_dim)`` (axial, shared by every head) or
  ``(1, heads, N, 2 * head_dim)`` (mixed), N = patches. A forward pre-hook with kwargs on ``blk.attn`` routes
  the ``rope`` keyword through a :class:`~pe_probe.models.HookPoint` the family owns (the leading axes only
  add broadcast dimensions: the attention sees the same values). Interventions: ``zero`` is the PE off, the
  identity rotation (sin 0, cos 1); ``shuffle`` permutes the patch rows, so each patch is rotated by another
  patch's angles; ``mean`` is refused (the mean of rotations is no rotation).
- ``hook_input_pe`` (kind ``absolute``), where the model also adds a learned ``pos_embed`` (EVA02, ``_ape``):
  the model runs under ``torch.func.functional_call`` with its ``pos_embed`` passed through a HookPoint.

Everything is registered inside :meth:`RotaryFamily.run` / :meth:`RotaryFamily.running` and removed in
``finally``; no parameter is written and no timm forward copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..core import hook_points as H
from ..core.errors import UnknownNameError
from ..models import HookPoint
from . import register_family
from .base import Family, Site, Tap


def identity_rope(table: torch.Tensor) -> torch.Tensor:
    """The identity rotation in the layout of ``table`` (``(..., 2 * d)``, sin then cos): sin 0, cos 1."""
    sin, cos = table.chunk(2, -1)
    return torch.cat([torch.zeros_like(sin), torch.ones_like(cos)], -1)


def _eva_class() -> type | None:
    try:
        from timm.models.eva import Eva
    except ImportError:  # pragma: no cover - timm always has Eva in the supported versions
        return None
    return Eva


@register_family
class RotaryFamily(Family):
    """timm ``Eva`` models: a rotary site per block, plus the absolute ``pos_embed`` where there is one."""

    name = "rotary"
    pe_kind = "rotary"
    priority = 50
    measures = ("per block the rotary (sin|cos) table its attention applies (blocks.{l}.attn.hook_rope; axial "
                "or mixed), the absolute pos_embed where present (EVA02, _ape); token norms and stream")
    limits = ("rotary sites: zero (identity rotation) and shuffle (patch rows permuted), no mean; attribution "
              "moves the table linearly from the identity (tokens kept, no PE share); the per-block additive PE "
              "is derived (norm1_l(pos_embed)) only where pos_embed exists; post-norm Eva blocks refused")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        eva = _eva_class()
        return eva is not None and isinstance(model, eva)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from timm.models.eva import EvaBlock

        pe = getattr(model, "patch_embed", None)
        if pe is None or getattr(pe, "img_size", None) is None:
            raise self.unsupported("the model has no fixed input size (patch_embed.img_size)")
        post = [i for i, b in enumerate(model.blocks) if not isinstance(b, EvaBlock)]
        if post:
            raise self.unsupported(f"block {post[0]} is a {type(model.blocks[post[0]]).__name__} (post-norm: norm1 "
                                   "follows the attention), so the stream entering it is not norm1's input")
        self.blocks = list(model.blocks)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.grid = tuple(int(g) for g in pe.grid_size)
        self.img_size = tuple(int(s) for s in pe.img_size)
        self.in_chans = int(pe.proj.in_channels)
        if not model.global_pool:
            raise self.unsupported("global_pool='' returns every token; the probe needs a pooled head "
                                   "(token, avg, max, avgmax or map)")
        self.global_pool = str(model.global_pool)
        self.final_norm = None if isinstance(model.norm, nn.Identity) else model.norm
        self.norm_pre = None if isinstance(model.norm_pre, nn.Identity) else model.norm_pre
        self.has_rope = getattr(model, "rope", None) is not None
        self.has_ape = getattr(model, "pos_embed", None) is not None
        self.input_pe = self.has_ape
        if self.has_ape:  # as the absolute family: what block l sees of pos_embed is derived, norm1_l(pe_in)
            self.receiving_blocks = list(range(len(self.blocks)))
            self.pe_derived = True
            rows, n = model.pos_embed.shape[1], self.grid[0] * self.grid[1]
            if rows not in (n, n + self.num_prefix_tokens):
                raise self.unsupported(f"pos_embed has {rows} rows; expected {n + self.num_prefix_tokens} or {n} "
                                       f"for a {self.grid} grid with {self.num_prefix_tokens} prefix tokens")
            self.n_prefix_pe = rows - n
        self.pe_kind = "rotary" if self.has_rope else ("absolute" if self.has_ape else "none")
        self._rope_hp = nn.ModuleList([HookPoint() for _ in self.blocks])
        self._ape_hp = HookPoint()

    # ------------------------------------------------------------------ sites
    def sites(self, effect: str = "direct") -> list[Site]:
        """``hook_input_pe`` (where ``pos_embed`` exists), then ``blocks.{l}.attn.hook_rope`` per block. The
        rotary table of a block is read by that block only and ``pos_embed`` once at the input, so the direct
        and total effects are the same sites (the input one named ``hook_pos_embed`` under ``total``, as in the
        absolute family)."""
        sites: list[Site] = []
        if self.has_ape:
            sites.append(Site(H.POS_EMBED if effect == "total" else H.INPUT_PE, "absolute", H.INPUT, self._ape_hp,
                              tok=self.model.patch_embed, n_prefix=self.n_prefix_pe,
                              note="Eva pos_embed added to the tokens (read through functional_call)"))
        if self.has_rope:
            for l in range(self.depth):
                sites.append(Site(H.rope_hook(l), "rotary", l, self._rope_hp[l], additive=False,
                                  interventions=("zero", "shuffle"),
                                  note="the (sin|cos) rotary table block l's attention applies to patch queries "
                                       "and keys, (1, 1 or heads, N, 2*head_dim)"))
        return sites

    def find_sites(self, effect: str = "direct", select: Sequence[str | int] | str | int | None = None) -> list[Site]:
        """As :meth:`Family.find_sites`; ``hook_pos_embed`` and ``hook_input_pe`` both name the input site."""
        if select is not None and self.has_ape:
            wanted = [select] if isinstance(select, (str, int)) else list(select)
            alias = {H.INPUT_PE: H.POS_EMBED} if effect == "total" else {H.POS_EMBED: H.INPUT_PE}
            select = [alias.get(w, w) if isinstance(w, str) else w for w in wanted]
        return super().find_sites(effect, select)

    def replacement(self, site: Site, kind: str, perm: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """Rotary sites: ``zero`` the identity rotation, ``shuffle`` the patch rows (dim -2) permuted by
        ``perm``; ``mean`` is refused. The absolute site: the additive defaults."""
        if site.kind != "rotary":
            return super().replacement(site, kind, perm)
        if kind not in site.interventions:
            raise UnknownNameError(f"{site.name}: intervention {kind!r} does not apply to a rotary site (the mean of "
                                   f"rotations is no rotation); valid here: {site.interventions}")
        if kind == "zero":
            return identity_rope
        if perm is None:
            raise ValueError("shuffle needs a permutation (shuffle_permutation)")
        return lambda table: table[..., perm.to(table.device), :]

    # ------------------------------------------------------------------ running
    def _rope_pre_hook(self, l: int):
        hp = self._rope_hp[l]

        def hook(module, args, kwargs):
            rope = kwargs.get("rope")
            if rope is None:
                return None
            term = rope.reshape((1,) * max(0, 4 - rope.ndim) + tuple(rope.shape))
            out = hp(term)
            if out is term:  # nothing replaced it: the attention sees its own tensor
                return None
            return args, {**kwargs, "rope": out}

        return hook

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Plain ``model(x)`` calls route each block's ``rope`` keyword through the family's HookPoints (the
        absolute ``pos_embed`` needs :meth:`run`)."""
        handles = []
        try:
            if self.has_rope:
                for l, blk in enumerate(self.blocks):
                    handles.append(blk.attn.register_forward_pre_hook(self._rope_pre_hook(l), with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """Logits with every site routed through its HookPoint (``pos_embed`` via ``functional_call`` while a
        hook is on its HookPoint; a plain forward otherwise, the same numbers)."""
        tap = self._ape_hp
        with self.running():
            if self.has_ape and (tap._forward_hooks or tap._forward_pre_hooks):
                return functional_call(self.model, {"pos_embed": tap(self.model.pos_embed)}, (images,))
            return self.model(images)

    # ------------------------------------------------------------------ stream
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``Eva.pool`` (class token, average over patches, ``map`` attention pool, ...)."""
        return self.model.pool(x)

    def stream_taps(self) -> dict[str, Tap]:
        """The base taps plus ``hook_pooled`` (the input of ``fc_norm``, after pooling)."""
        taps = super().stream_taps()
        taps[H.POOLED] = Tap(self.model.fc_norm, "in")
        return taps

    def names(self) -> list[str]:
        """The base order, then ``hook_pooled``."""
        return super().names() + [H.POOLED]

    def meta(self) -> dict:
        """The base meta plus ``rope`` (the rope module's class, None without one) and ``rope_mixed``."""
        out = super().meta()
        out["rope"] = type(self.model.rope).__name__ if self.has_rope else None
        out["rope_mixed"] = bool(getattr(self.model, "rope_mixed", False))
        return out

    # ------------------------------------------------------------------ probe quantities
    def pe_in(self) -> torch.Tensor:
        """``pos_embed`` as the first block receives it, (1, T, D): NaN rows for prefix slots it has no row for
        (``no_embed_class``), then ``norm_pre`` where the model has one."""
        pos = self.model.pos_embed
        if self.n_prefix_pe < self.num_prefix_tokens:
            pad = pos.new_full((pos.shape[0], self.num_prefix_tokens - self.n_prefix_pe, pos.shape[2]), float("nan"))
            pos = torch.cat([pad, pos], dim=1)
        return pos if self.norm_pre is None else self.norm_pre(pos)

    def derived(self) -> dict[str, Callable[[], torch.Tensor]]:
        """Models with a ``pos_embed``: ``hook_pos_embed`` and ``hook_input_pe`` (the raw table) and per block
        the derived ``blocks.{l}.hook_pe = norm1_l(pe_in)``; none otherwise (the rotary tables are captured)."""
        if not self.has_ape:
            return {}
        model = self.model
        out: dict[str, Callable[[], torch.Tensor]] = {H.POS_EMBED: lambda: model.pos_embed,
                                                      H.INPUT_PE: lambda: model.pos_embed}
        for i, blk in enumerate(self.blocks):
            out[H.block_hook(i, H.PE)] = (lambda n=blk.norm1: n(self.pe_in()))
        return out

    def static_arrays(self) -> dict[str, np.ndarray]:
        """``pos_embed`` (where present, (T, D)) and ``rope_table``: the model's rotary table as its rope module
        returns it (sin | cos; axial (N, 2*head_dim), shared by every block; mixed (depth, heads, N, 2*head_dim))."""
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            if self.has_ape:
                out["pos_embed"] = self.model.pos_embed.detach()[0].double().cpu().numpy()
            if self.has_rope:
                rope = self.model.rope
                table = rope.get_embed() if getattr(rope, "feat_shape", None) is not None else \
                    rope.get_embed(shape=list(self.grid))
                out["rope_table"] = table.detach().double().cpu().numpy()
        return out


__all__ = ["RotaryFamily", "identity_rope"]
