"""Helpers shared by the families of timm's stage and class-attention models (conditional, pvt_v2, cait,
xcit, naflexvit, hiera): the input size a model takes, hooks registered for one forward pass only, and the
"zero trick" that routes a PE added inside a timm method through a :class:`~pe_probe.models.HookPoint`.

The zero trick, for a PE ``x + pe`` added between two module boundaries ``a`` (whose output is the tokens
``x``) and ``b`` (whose input or output is the sum): a forward hook on ``a`` keeps ``x`` and hands timm zeros
instead, so timm's own code computes ``0 + pe = pe`` exactly (whatever table, interpolation or per-sample
grid it uses); a hook at ``b`` then puts ``tok_hp(x) + pe_hp(pe)`` back. With identity hook points this is
the very float sum timm computes, so the intact model's outputs are unchanged to the bit, and a forward
hook on ``pe_hp`` reads or replaces the term exactly as the blocks receive it. No forward is copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn


def input_size(model: nn.Module, fallback: Sequence[int] | None = None) -> tuple[int, int]:
    """The (H, W) a model takes: ``fallback`` when given (the model's own fixed size), else its timm
    ``pretrained_cfg["input_size"]`` (set a small one with ``timm.create_model(...,
    pretrained_cfg_overlay=dict(input_size=(3, H, W)))``)."""
    if fallback is not None:
        size = tuple(int(s) for s in (fallback if isinstance(fallback, (tuple, list)) else (fallback, fallback)))
        return size[-2], size[-1]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    if size is None:
        raise ValueError(f"{type(model).__name__} records no input size (pretrained_cfg['input_size'])")
    return int(size[-2]), int(size[-1])


@contextlib.contextmanager
def hooked(registrations: Sequence[Callable[[], torch.utils.hooks.RemovableHandle]]) -> Iterator[None]:
    """Register every hook of ``registrations`` (callables returning a handle) for the block's duration; all
    are removed on exit, also after errors or when a later registration fails."""
    handles = []
    try:
        for register in registrations:
            handles.append(register())
        yield
    finally:
        for h in handles:
            h.remove()


def patch_rows(x: torch.Tensor, n_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B, P + N, D) split into its ``P = n_prefix`` prefix rows and its N patch rows."""
    return x[:, :n_prefix], x[:, n_prefix:]


def conv_stride_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution (timm's patch embeddings with overlap)."""
    return (size + 2 * padding - kernel) // stride + 1


class PooledTap:
    """Mixin for the zoo families: ``hook_pooled``, the pooled features entering the head (B, D), read at the
    input of ``self.pooled_module`` (set by the family's ``__init__``: the module right after the pooling)."""

    pooled_module: nn.Module

    def stream_taps(self):
        from ..core import hook_points as H
        from .base import Tap

        return {**super().stream_taps(), H.POOLED: Tap(self.pooled_module, "in")}

    def names(self) -> list[str]:
        from ..core import hook_points as H

        return super().names() + [H.POOLED]
