"""The nouns of the attention and input-side measurements (issue 20), defined once and torch-free: the columns
and file names of their results and the metric names (docs/probe.md, "Attention and the input").

- attention statistics per block and head (:func:`pe_probe.probing.attention.attention_stats`);
- patch-shuffle sensitivity per shuffle block size (:func:`pe_probe.probing.perturb.patch_shuffle`);
- resolution sweeps: the probe's per-layer numbers and top-1 per input size
  (:func:`pe_probe.pipeline.attention.resolution_sweep`, over :func:`pe_probe.probing.perturb.probe_at_sizes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .results import Result

#: Per-head attention statistics (every block with multi-head attention).
ATTENTION_METRICS = ("attn_distance", "attn_prefix_share", "attn_entropy")
#: The four terms of the logit split (content/position of the query x content/position of the key).
LOGIT_TERMS = ("cc", "cp", "pc", "pp")
#: Logit-split metrics (blocks whose attention input has an additive PE term).
LOGIT_METRICS = tuple(f"logit_{t}_ms" for t in LOGIT_TERMS) + ("logit_pos_share",)

#: Columns of an attention frame (``attention.csv``): ``site`` is the block's attention (``blocks.{l}.attn``),
#: ``pe_kind`` the kind of the PE that reaches that attention (``none`` where none does).
ATTENTION_COLUMNS = ("site", "pe_kind", "layer", "head", "metric", "value")
#: Columns of a patch-shuffle frame (``shuffle.csv``): ``block`` is the side of the shuffled blocks in patches.
SHUFFLE_COLUMNS = ("block", "metric", "value")
#: Patch-shuffle metrics per block size: agreement with the intact prediction, and top-1 where labels exist.
SHUFFLE_METRICS = ("agree", "top1")
#: Columns of a resolution-sweep frame (``resolution.csv``): the probe's tidy rows per input size, plus
#: ``top1`` at layer :data:`WHOLE_MODEL`.
RESOLUTION_COLUMNS = ("img_size", "site", "pe_kind", "layer", "metric", "value")
#: ``layer`` of rows that describe the whole model (top-1), not one layer.
WHOLE_MODEL = -3

ATTENTION_CSV, ATTENTION_JSON = "attention.csv", "attention.json"
SHUFFLE_CSV, SHUFFLE_JSON = "shuffle.csv", "shuffle.json"
RESOLUTION_CSV, RESOLUTION_JSON = "resolution.csv", "resolution.json"


def attention_site(layer: int) -> str:
    """The ``site`` of block ``layer``'s attention statistics: ``blocks.{layer}.attn``."""
    return f"blocks.{layer}.attn"


@dataclass
class AttentionResult(Result):
    """What :func:`pe_probe.attention_stats` returns: rows ``(site, pe_kind, layer, head, metric, value)`` per block and
    head, and ``meta`` (``n_images``, ``grid``, ``heads``, ``decomposed_layers``, ``not_measured``, ...)."""

    rows: list
    meta: dict[str, Any] = field(default_factory=dict)

    COLUMNS: ClassVar[tuple[str, ...]] = ATTENTION_COLUMNS
    TYPES: ClassVar[dict[str, type]] = {"layer": int, "head": int, "value": float}
    CSV, JSON, KIND = ATTENTION_CSV, ATTENTION_JSON, "attention statistics"


@dataclass
class ShuffleResult(Result):
    """What :func:`pe_probe.patch_shuffle` returns: rows ``(block, metric, value)`` (``agree``; ``top1`` with
    labels) per shuffle block size, and ``meta`` (``n_images``, ``seed``, ``grid``, ``patch``, ``blocks``)."""

    rows: list
    meta: dict[str, Any] = field(default_factory=dict)

    COLUMNS: ClassVar[tuple[str, ...]] = SHUFFLE_COLUMNS
    TYPES: ClassVar[dict[str, type]] = {"block": int, "value": float}
    CSV, JSON, KIND = SHUFFLE_CSV, SHUFFLE_JSON, "patch shuffle"


@dataclass
class ResolutionResult(Result):
    """What :func:`pe_probe.resolution_sweep` returns: rows ``(img_size, site, pe_kind, layer, metric, value)``
    (the probe's tidy rows at each input size, and ``top1`` at layer :data:`WHOLE_MODEL`), and ``meta``
    (``run``, ``sizes``, ``n_images``, and ``per_size``: what was done to the model at each size, ``grid``,
    ``pe_resampled``, and ``top1`` with labels)."""

    rows: list
    meta: dict[str, Any] = field(default_factory=dict)

    COLUMNS: ClassVar[tuple[str, ...]] = RESOLUTION_COLUMNS
    TYPES: ClassVar[dict[str, type]] = {"img_size": int, "layer": int, "value": float}
    CSV, JSON, KIND = RESOLUTION_CSV, RESOLUTION_JSON, "resolution sweep"
