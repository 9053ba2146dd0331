"""The hook-name scheme: the only place the names of the activations pe_probe reads are spelled.

Names follow timm's module paths (TransformerLens-style hook points): ``hook_pos_embed``, ``hook_input_pe``
(the PE added to the input, where the model adds one), per block
``blocks.{i}.hook_resid_pre | hook_tok | hook_pe | hook_resid_post``, then ``hook_last_ln_in``,
``hook_last_ln_out``, ``hook_last_pe`` and ``hook_pooled``. pe_probe models carry identity modules at
exactly these paths (a test checks it); the probe's timm adapter maps the same names onto a plain timm ViT.
Layers are block indices 0..L-1, :data:`LAST` (-1) for the Last LN and :data:`INPUT` (-2) for the input
(the PE added to ``x_0``). Blocks are numbered globally in forward order across stages (a Swin
``layers.{s}.blocks.{b}`` is ``blocks.{l}`` here), whatever the module path. Sites of the other PE kinds
(:data:`PE_KINDS`) are named by :func:`rope_hook`, :func:`attn_bias_hook` and :func:`peg_hook`. Torch-free.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

LAST = -1  #: layer index of the Last LN
INPUT = -2  #: layer index of the input: the PE added to the patch embeddings, ``x_0 = p + pos_0``

POS_EMBED = "hook_pos_embed"  #: the raw PE pos_0 (1, T, D)
INPUT_PE = "hook_input_pe"  #: the PE term added to the input (1, T, D); only in models that add one
RESID_PRE, TOK, PE, RESID_POST = "hook_resid_pre", "hook_tok", "hook_pe", "hook_resid_post"
BLOCK_POINTS = (RESID_PRE, TOK, PE, RESID_POST)  #: per-block hook points, in forward order
LAST_LN_IN, LAST_LN_OUT, LAST_PE, POOLED = "hook_last_ln_in", "hook_last_ln_out", "hook_last_pe", "hook_pooled"

#: What each name holds (docs/probe.md shows this table).
DESCRIPTIONS = {
    POS_EMBED: "raw pos_0, (1, T, D)",
    INPUT_PE: "the PE term added to the input, x_0 = p + pos_0 (models that add one; the source of the PE chain "
              "is hook_pos_embed), (1, T, D)",
    RESID_PRE: "residual stream entering block i, x_i, (B, T, D)",
    TOK: "LN_i(x_i): normalised tokens entering attention, before any PE is added, (B, T, D)",
    PE: "the PE block i adds to its attention input, after its LN'_i (blocks that receive one), (1, T, D)",
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


def hook_point_names(depth: int, pe_blocks: Iterable[int] = (), last_pe: bool = False,
                     input_pe: bool = False) -> list[str]:
    """Every hook name of a ViT with ``depth`` blocks, in forward order, from its structure alone (the names a
    given model offers: :func:`pe_probe.hook_names`, through its family).

    ``pe_blocks``: the blocks that receive a PE (they get a ``hook_pe``); ``last_pe``: whether a PE is added
    after the Last LN (``hook_last_pe``); ``input_pe``: whether the PE is added to the input
    (``hook_input_pe``). For a :class:`~pe_probe.core.pe.PEConfig` ``cfg`` these are ``cfg.pe_blocks(depth)``,
    ``cfg.last_ln_pe is not None`` and ``cfg.input_add``.
    """
    pe = set(pe_blocks)
    names = [POS_EMBED] + ([INPUT_PE] if input_pe else [])
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


def pe_site_hook(layer: int) -> str:
    """The hook of the PE term added at ``layer``: ``hook_input_pe`` (:data:`INPUT`), ``hook_last_pe``
    (:data:`LAST`) or ``blocks.{layer}.hook_pe``."""
    if layer == INPUT:
        return INPUT_PE
    if layer == LAST:
        return LAST_PE
    if layer < 0:
        raise ValueError(f"layer {layer} is not a block index, LAST ({LAST}) or INPUT ({INPUT})")
    return block_hook(layer, PE)


#: The PE kinds a family declares for its sites (docs/probe.md, "Supported families"): a learned or fixed
#: absolute table added to the tokens; a layer-wise PE added to each block's attention input (pe_* models);
#: rotary tables rotating queries and keys; attention bias tables or MLPs added to the attention logits; a
#: convolutional (conditional) PE computed from the tokens; no PE at all.
PE_KINDS = ("absolute", "layerwise", "rotary", "attn_bias", "conditional", "none")
#: Per-block hook points of the new kinds (beside :data:`BLOCK_POINTS`), relative to ``blocks.{l}``.
ROPE, ATTN_BIAS = "attn.hook_rope", "attn.hook_attn_bias"
#: The conditional PE of stage ``s`` (``pos_block.{s}.hook_peg``): the term a PEG adds to the tokens.
PEG = "hook_peg"

DESCRIPTIONS.update({
    f"blocks.{{l}}.{ROPE}": "the rotary table block l's attention applies to queries and keys (sin/cos, "
                            "layout of the family's rope module)",
    f"blocks.{{l}}.{ATTN_BIAS}": "the position bias added to block l's attention logits, (H, T, T) or (B, H, T, T)",
    f"pos_block.{{s}}.{PEG}": "the term stage s's position generator (a depthwise conv) adds to its tokens, (B, T, D)",
})


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`PE_KINDS`, else :class:`ValueError` naming the valid kinds."""
    if kind not in PE_KINDS:
        raise ValueError(f"PE kind {kind!r} is unknown; valid: {PE_KINDS}")
    return kind


def rope_hook(layer: int) -> str:
    """The rotary site of block ``layer`` (global index, forward order): ``blocks.{layer}.attn.hook_rope``."""
    return f"blocks.{_block_index(layer)}.{ROPE}"


def attn_bias_hook(layer: int) -> str:
    """The attention-bias site of block ``layer`` (global index): ``blocks.{layer}.attn.hook_attn_bias``."""
    return f"blocks.{_block_index(layer)}.{ATTN_BIAS}"


def peg_hook(stage: int) -> str:
    """The conditional-PE site of stage ``stage``: ``pos_block.{stage}.hook_peg``."""
    if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
        raise ValueError(f"stage {stage!r} is not a stage index >= 0")
    return f"pos_block.{stage}.{PEG}"


def _block_index(layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer {layer!r} is not a block index >= 0")
    return layer


def layer_label(layer: int) -> str:
    """How figures and tables name ``layer``: ``input``, ``Last LN`` or ``block {i}``."""
    return {INPUT: "input", LAST: "Last LN"}.get(layer, f"block {layer}")
