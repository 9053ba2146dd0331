"""One read-only view of a ViT for the probe: where each named activation is read.

Two adapters give the same hook names:

- ``"pe"``: a :class:`~pe_probe.models.PEVisionTransformer`; every name is one of its ``HookPoint`` modules.
- ``"timm"``: any timm ``VisionTransformer`` with an absolute PE (e.g. ``deit_tiny_patch16_224``). Tokens
  are read from each block's ``norm1`` (its input is the residual stream, its output ``LN_l(x)``), the block
  output is the residual stream after the block, the Last LN is ``model.norm``. The PE a layer "sees" is
  *derived* as ``norm1_l(pos_embed)`` (as LaPE's authors did for default models), so ``pe_derived=True``.
  Prefix rows the model gives no PE row (``no_embed_class`` models) are NaN in that derived PE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..core import hook_points as H
from ..core.errors import CheckpointError, UnknownNameError
from ..models import PEVisionTransformer

AdapterKind = Literal["auto", "pe", "timm"]
ADAPTERS: tuple[str, ...] = ("auto", "pe", "timm")
POOLS: tuple[str, ...] = ("token", "avg")


@dataclass(frozen=True)
class Tap:
    """Where one named activation is read: the ``"in"`` (first positional input) or ``"out"`` of a module."""

    module: nn.Module
    side: Literal["in", "out"] = "out"


@dataclass
class ModelView:
    """What the probe needs to know about a model, resolved once.

    ``taps`` maps hook names to module hooks; ``derived`` maps hook names to functions computing
    image-independent tensors (derived PEs, the raw PE of a timm model) without any forward pass.
    """

    model: nn.Module
    kind: Literal["pe", "timm"]
    depth: int
    embed_dim: int
    num_prefix_tokens: int
    grid: tuple[int, int]
    img_size: tuple[int, int]
    in_chans: int
    global_pool: str
    pe_derived: bool
    receiving_blocks: list[int]
    last_ln_pe: int | None
    last_norm: nn.Module
    input_pe: bool = True  #: whether the PE is added to the input (``hook_input_pe``; always for timm ViTs)
    taps: dict[str, Tap] = field(default_factory=dict)
    derived: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Tokens per image, prefix tokens included."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    @property
    def pe_mode(self) -> str:
        """The model's PE scheme, or ``"timm"`` for a foreign model."""
        return getattr(self.model, "pe_mode", "timm")

    def names(self) -> list[str]:
        """Every hook name this model offers, in forward order (:func:`pe_probe.core.hook_points.hook_names`)."""
        return H.hook_names(self.depth, self.receiving_blocks, self.last_ln_pe is not None, self.input_pe)

    def check_names(self, names: list[str]) -> None:
        """Raise :class:`UnknownNameError` listing the valid names when one is not offered."""
        valid = self.names()
        bad = [n for n in names if n not in valid]
        if bad:
            raise UnknownNameError(f"unknown hook name(s) {bad}; this model offers: {valid}")


def _common(model: VisionTransformer) -> dict:
    pe = getattr(model, "patch_embed", None)
    if pe is None or getattr(pe, "img_size", None) is None:
        raise CheckpointError("the probe needs a fixed input size (patch_embed.img_size); "
                              "dynamic-size models are not supported")
    if getattr(model, "pos_embed", None) is None:
        raise CheckpointError("the model has no absolute position embedding (pos_embed is None); nothing to probe")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in POOLS:
        raise CheckpointError(f"global_pool={model.global_pool!r} is not supported by the probe; valid values: {POOLS}")
    if not isinstance(model.norm, nn.LayerNorm):
        raise CheckpointError(
            f"the model's final norm is {type(model.norm).__name__}, not a LayerNorm acting on every token "
            "(timm models with fc_norm normalise after pooling); there is no Last LN to probe")
    if model.global_pool == "token" and model.cls_token is None:
        raise CheckpointError("global_pool='token' without a class token")
    return dict(
        depth=len(model.blocks),
        embed_dim=model.embed_dim,
        num_prefix_tokens=model.num_prefix_tokens,
        grid=tuple(int(g) for g in pe.grid_size),
        img_size=tuple(int(s) for s in pe.img_size),
        in_chans=int(pe.proj.in_channels),
        global_pool=model.global_pool,
        last_norm=model.norm,
    )


def _pe_view(model: PEVisionTransformer) -> ModelView:
    view = ModelView(model=model, kind="pe", pe_derived=False, receiving_blocks=model.pe_receiving_blocks(),
                     last_ln_pe=model.pe_config.last_ln_pe, input_pe=model.pe_config.input_add, **_common(model))
    modules = dict(model.named_modules())
    for name in view.names():
        view.taps[name] = Tap(modules[name], "out")
    return view


def _timm_view(model: VisionTransformer) -> ModelView:
    common = _common(model)
    cfg = getattr(model, "pe_config", None)  # a pe_probe model read as a timm one adds pos_0 only if its config says so
    view = ModelView(model=model, kind="timm", pe_derived=True, receiving_blocks=list(range(common["depth"])),
                     last_ln_pe=None, input_pe=cfg is None or cfg.input_add, **common)
    npt, T = view.num_prefix_tokens, view.num_tokens

    def pos_embed() -> torch.Tensor:
        return model.pos_embed

    def padded_pos() -> torch.Tensor:
        pos = model.pos_embed
        if pos.shape[1] == T:
            return pos
        if pos.shape[1] == T - npt:  # no_embed_class / register tokens: no PE row for the prefix slots
            pad = pos.new_full((pos.shape[0], npt, pos.shape[2]), float("nan"))
            return torch.cat([pad, pos], dim=1)
        raise CheckpointError(f"pos_embed has {pos.shape[1]} rows; expected {T} or {T - npt} for a {view.grid} grid")

    view.derived[H.POS_EMBED] = pos_embed
    if view.input_pe:
        view.derived[H.INPUT_PE] = pos_embed  # timm adds pos_embed to x as it is (its only PE term)
    for i, blk in enumerate(model.blocks):
        if not hasattr(blk, "norm1"):
            raise CheckpointError(f"block {i} ({type(blk).__name__}) has no norm1; not a pre-norm ViT block")
        view.taps[H.block_hook(i, H.RESID_PRE)] = Tap(blk.norm1, "in")
        view.taps[H.block_hook(i, H.TOK)] = Tap(blk.norm1, "out")
        view.derived[H.block_hook(i, H.PE)] = (lambda n=blk.norm1: n(padded_pos()))
        view.taps[H.block_hook(i, H.RESID_POST)] = Tap(blk, "out")
    view.taps[H.LAST_LN_IN] = Tap(model.norm, "in")
    view.taps[H.LAST_LN_OUT] = Tap(model.norm, "out")
    view.taps[H.POOLED] = Tap(model.fc_norm, "in")
    return view


def view_model(model: nn.Module, adapter: AdapterKind = "auto") -> ModelView:
    """Resolve how to read ``model``: ``"pe"`` for pe_probe models, ``"timm"`` for other timm ViTs.

    ``adapter="timm"`` can be forced on a pe_probe model too (then its PEs are derived from ``norm1``,
    e.g. to compare a default model with LaPE's derived maps). Unsupported models raise
    :class:`~pe_probe.core.errors.CheckpointError`.
    """
    if adapter not in ADAPTERS:
        raise UnknownNameError(f"adapter={adapter!r} is unknown; valid values: {ADAPTERS}")
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(
            f"{type(model).__name__} is not a timm VisionTransformer; the probe reads ViTs with an absolute PE")
    if adapter == "pe" and not isinstance(model, PEVisionTransformer):
        raise CheckpointError("adapter='pe' needs a pe_probe PEVisionTransformer; use adapter='timm'")
    if adapter == "timm" or not isinstance(model, PEVisionTransformer):
        return _timm_view(model)
    return _pe_view(model)
