"""The hook-name scheme: the only place the names of the activations pe_probe reads are spelled.

Names follow timm's module paths (TransformerLens-style hook points): ``hook_pos_embed``, per block
``blocks.{i}.hook_resid_pre | hook_tok | hook_pe | hook_resid_post``, then ``hook_last_ln_in``,
``hook_last_ln_out``, ``hook_last_pe`` and ``hook_pooled``. pe_probe models carry identity modules at
exactly these paths (a test checks it); the probe's timm adapter maps the same names onto a plain timm ViT.
Layers are block indices 0..L-1, and :data:`LAST` (-1) for the Last LN. Torch-free.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

LAST = -1  #: layer index of the Last LN

POS_EMBED = "hook_pos_embed"  #: the raw PE pos_0 (1, T, D)
RESID_PRE, TOK, PE, RESID_POST = "hook_resid_pre", "hook_tok", "hook_pe", "hook_resid_post"
BLOCK_POINTS = (RESID_PRE, TOK, PE, RESID_POST)  #: per-block hook points, in forward order
LAST_LN_IN, LAST_LN_OUT, LAST_PE, POOLED = "hook_last_ln_in", "hook_last_ln_out", "hook_last_pe", "hook_pooled"

#: What each name holds (docs/probe.md shows this table).
DESCRIPTIONS = {
    POS_EMBED: "raw pos_0, (1, T, D)",
    RESID_PRE: "residual stream entering block i, x_i, (B, T, D)",
    TOK: "LN_i(x_i): normalised tokens entering attention, before any PE is added, (B, T, D)",
    PE: "the PE block i receives, after its LN'_i (blocks that receive one), (1, T, D)",
    RESID_POST: "residual stream after block i, (B, T, D)",
    LAST_LN_IN: "x_L, (B, T, D)",
    LAST_LN_OUT: "LN(x_L), the Last LN without the PE, (B, T, D)",
    LAST_PE: "LN'_last(pos_k), the PE added after the Last LN (only where present), (1, T, D)",
    POOLED: "pooled features entering the head, (B, D)",
}


def block_hook(i: int, point: str) -> str:
    """The name of hook ``point`` (one of :data:`BLOCK_POINTS`) of block ``i``: ``blocks.{i}.{point}``."""
    if point not in BLOCK_POINTS:
        raise ValueError(f"{point!r} is not a block hook point; valid: {BLOCK_POINTS}")
    return f"blocks.{i}.{point}"


def hook_names(depth: int, pe_blocks: Iterable[int] = (), last_pe: bool = False) -> list[str]:
    """Every hook name of a ViT with ``depth`` blocks, in forward order.

    ``pe_blocks``: the blocks that receive a PE (they get a ``hook_pe``); ``last_pe``: whether a PE is added
    after the Last LN (``hook_last_pe``). For a :class:`~pe_probe.core.pe.PEConfig` ``cfg`` these are
    ``cfg.pe_blocks(depth)`` and ``cfg.last_ln_pe is not None``.
    """
    pe = set(pe_blocks)
    names = [POS_EMBED]
    for i in range(depth):
        names += [block_hook(i, p) for p in BLOCK_POINTS if p != PE or i in pe]
    names += [LAST_LN_IN, LAST_LN_OUT] + ([LAST_PE] if last_pe else []) + [POOLED]
    return names


class LayerHooks(NamedTuple):
    """The three names one layer's statistics read: residual stream, tokens and (where it has one) the PE.

    For block i: ``hook_resid_pre``, ``hook_tok``, ``hook_pe``; for the Last LN (:data:`LAST`):
    ``hook_last_ln_in``, ``hook_last_ln_out``, ``hook_last_pe``.
    """

    resid: str
    tok: str
    pe: str | None

    def names(self) -> tuple[str, ...]:
        """The names that are present (``pe`` only where the layer has a PE)."""
        return (self.resid, self.tok) + ((self.pe,) if self.pe else ())


def layer_hooks(layer: int, has_pe: bool) -> LayerHooks:
    """The :class:`LayerHooks` of ``layer`` (a block index, or :data:`LAST`)."""
    if layer == LAST:
        return LayerHooks(LAST_LN_IN, LAST_LN_OUT, LAST_PE if has_pe else None)
    return LayerHooks(block_hook(layer, RESID_PRE), block_hook(layer, TOK), block_hook(layer, PE) if has_pe else None)
