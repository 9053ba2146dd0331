"""The layer-wise family: pe_probe's own :class:`~pe_probe.models.PEVisionTransformer` (the ``pe_*`` models:
default, LaPE, PVG, MPVG and their knobs). Every name is one of the model's ``HookPoint`` modules; every PE
term is a module output, so capture and intervention are plain forward hooks.

Sites (docs/causal.md): ``hook_input_pe`` (the PE added to the input, where the scheme adds one),
``blocks.{l}.hook_pe`` (the PE block ``l`` adds to its attention input, ``LN_l(x) + pe_l``) and
``hook_last_pe`` (the PE added after the Last LN). ``effect="total"`` moves the block sites to the chain value
``pe_norm`` (what later blocks and the Last LN read) and the input site to ``hook_pos_embed``. Block and
Last-LN sites can rerun from the intact activations (:meth:`LayerwiseFamily.resume`) through the model's public
PE chain (:meth:`~pe_probe.models.PEVisionTransformer.run_blocks`, ``last_ln``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..core import hook_points as H
from ..models import PEVisionTransformer
from . import register_family
from .base import Family, Site, Tap


@register_family
class LayerwiseFamily(Family):
    """:class:`~pe_probe.models.PEVisionTransformer` read through its hook points."""

    name = "layerwise"
    pe_kind = "layerwise"
    priority = 100
    adapter = "pe"
    measures = ("per-block tokens vs the PE each block adds (terms of the forward), the PE chain, token norms, "
                "Last LN (+ its PE); ablation (direct/total, rerun from the site) and attribution of every site")
    limits = "fixed input size; token or avg pooling only (the Last LN acts on every token)"

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        return isinstance(model, PEVisionTransformer)

    def __init__(self, model: PEVisionTransformer) -> None:
        super().__init__(model)
        cfg = model.pe_config
        self.blocks = list(model.blocks)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.img_size = tuple(int(s) for s in model.patch_embed.img_size)
        self.in_chans = int(model.patch_embed.proj.in_channels)
        self.global_pool = str(model.global_pool)
        self.final_norm = model.norm
        self.receiving_blocks = model.pe_receiving_blocks()
        self.last_ln_pe = cfg.last_ln_pe
        self.input_pe = bool(cfg.input_add)
        self.pe_derived = False

    def stream_taps(self) -> dict[str, Tap]:
        modules = dict(self.model.named_modules())
        return {n: Tap(modules[n], "out") for n in self.names()}

    def taps(self) -> dict[str, Tap]:
        return self.stream_taps()

    def names(self) -> list[str]:
        return H.hook_point_names(self.depth, self.receiving_blocks, self.last_ln_pe is not None, self.input_pe)

    def static_arrays(self) -> dict[str, np.ndarray]:
        return {"pos_embed": self.model.pos_embed.detach()[0].double().cpu().numpy()}

    def derived(self) -> dict[str, Callable[[], torch.Tensor]]:
        return {}

    def sites(self, effect: str = "direct") -> list[Site]:
        m: PEVisionTransformer = self.model
        npre = self.num_prefix_tokens
        # the input term is an absolute PE (x_0 = p + pos_0, as in any timm ViT); the block and Last-LN terms are
        # the layer-wise ones
        total_input = Site(H.POS_EMBED, "absolute", H.INPUT, m.hook_pos_embed, tok=m.patch_embed, n_prefix=npre,
                           note="pos_0 everywhere it is read (input and the PE chain)")
        sites: list[Site] = []
        if self.input_pe:
            sites.append(total_input if effect == "total" else
                         Site(H.INPUT_PE, "absolute", H.INPUT, m.hook_input_pe, tok=m.patch_embed, n_prefix=npre,
                              note="the PE added to the input, x_0 = p + pos_0"))
        for i in self.receiving_blocks:
            blk = m.blocks[i]
            sites.append(Site(H.block_hook(i, H.PE), "layerwise", i, blk.hook_pe if effect == "direct" else blk.pe_norm,
                              tok=blk.hook_tok, n_prefix=npre, note=f"the PE block {i} adds to LN_{i}(x)"))
        if self.last_ln_pe is not None:
            sites.append(Site(H.LAST_PE, "layerwise", H.LAST, m.hook_last_pe, tok=m.hook_last_ln_out, n_prefix=npre,
                              note="the PE added after the Last LN"))
        return sites

    def find_sites(self, effect="direct", select=None) -> list[Site]:
        """As :meth:`Family.find_sites`; ``hook_pos_embed`` may be asked for under ``effect="direct"`` too (the
        total-effect input site, added first)."""
        wanted = None if select is None else ([select] if isinstance(select, (str, int)) else list(select))
        if wanted is None or H.POS_EMBED not in wanted or effect == "total":
            return super().find_sites(effect, wanted)
        rest = [w for w in wanted if w != H.POS_EMBED]
        sites = super().find_sites(effect, rest) if rest else []
        total = [s for s in self.sites("total") if s.name == H.POS_EMBED]
        if not total:  # input_add=False: pos_0 still feeds the chain
            m = self.model
            total = [Site(H.POS_EMBED, "absolute", H.INPUT, m.hook_pos_embed, tok=m.patch_embed,
                          n_prefix=self.num_prefix_tokens)]
        return total + [s for s in sites if s.name != H.POS_EMBED]

    # ------------------------------------------------------------------ rerunning from a site
    def resume_names(self) -> list[str]:
        names = [H.POS_EMBED, H.LAST_LN_IN]
        for i in self.receiving_blocks:
            names += [H.block_hook(i, H.RESID_PRE), H.block_hook(i, H.PE)]
        return names

    def resume(self, site: Site, rec: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Logits rerun from the intact activations at a block or Last-LN site through the model's public PE
        chain (``run_blocks(start=...)``, ``last_ln``, ``forward_head``)."""
        m: PEVisionTransformer = self.model
        pos0 = rec[H.POS_EMBED]
        pes = [rec.get(H.block_hook(j, H.PE)) for j in range(self.depth)]  # the intact chain values
        if site.layer == H.LAST:
            return m.forward_head(m.last_ln(rec[H.LAST_LN_IN], pos0, pes)), 0
        x, pes = m.run_blocks(rec[H.block_hook(site.layer, H.RESID_PRE)], pos0, start=site.layer, pes=pes)
        return m.forward_head(m.last_ln(x, pos0, pes)), self.depth - site.layer
