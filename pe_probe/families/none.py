"""The ``none`` family: ViTs that carry no position embedding at all (e.g. a timm ``VisionTransformer`` built
with ``pos_embed="none"``). They have no PE site, but get the universal per-layer quantities every model
gets: the token stream at each block (its mean map), token and residual-stream norms, the Last LN.

It is the fallback tried last, and it only accepts a model in which no module or parameter looks like a PE
(``pos_embed``, ``rope``, relative-position tables, attention biases, position generators): a model of
another family whose own module is not registered is refused, never reported as PE-free.
"""

from __future__ import annotations

from torch import nn

from . import register_family
from .base import Family

#: Parameter, buffer or module names that mean a model carries a PE of some kind.
PE_MARKERS = ("pos_embed", "rope", "relative_position", "rel_pos", "attention_bias", "pos_block", "pos_conv",
              "pos_drop_peg", "pos_embd", "position")


def pe_like_names(model: nn.Module) -> list[str]:
    """Names of parameters, buffers and submodules of ``model`` that look like a PE (``pos_drop`` aside)."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    names += [n for n, m in model.named_modules() if n]
    hits = []
    for n in names:
        leaf = n.lower()
        if any(k in leaf for k in PE_MARKERS):
            hits.append(n)
    return hits


@register_family
class NoneFamily(Family):
    """A ViT with ``blocks`` (pre-norm, ``norm1``), ``patch_embed`` and ``pool`` and no PE."""

    name = "none"
    pe_kind = "none"
    priority = -100
    measures = "the token stream at each block, token and residual norms, Last LN (universal quantities)"
    limits = "no PE site: no token-vs-PE statistics, ablation or attribution"

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        if getattr(model, "pos_embed", None) is not None:
            return False
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not len(blocks):
            return False
        if getattr(model, "patch_embed", None) is None:
            return False
        return not pe_like_names(model)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        pe = model.patch_embed
        if getattr(pe, "img_size", None) is None or getattr(pe, "grid_size", None) is None:
            raise self.unsupported("the probe needs a fixed input size (patch_embed.img_size, grid_size)")
        if getattr(model, "pool", None) is None:
            raise self.unsupported(f"{type(model).__name__} has no pool(); the probe needs the model's pooling")
        if not getattr(model, "global_pool", "token"):
            raise self.unsupported("global_pool='' returns every token; the probe needs a pooled head")
        self.blocks = list(model.blocks)
        self.embed_dim = int(getattr(model, "embed_dim", 0) or self.blocks[0].norm1.normalized_shape[0])
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.grid = tuple(int(g) for g in pe.grid_size)
        self.img_size = tuple(int(s) for s in pe.img_size)
        self.in_chans = int(getattr(getattr(pe, "proj", None), "in_channels", 3))
        self.global_pool = str(getattr(model, "global_pool", ""))
        norm = getattr(model, "norm", None)
        self.final_norm = None if norm is None or isinstance(norm, nn.Identity) else norm

    @property
    def pe_mode(self) -> str:
        return "none"
