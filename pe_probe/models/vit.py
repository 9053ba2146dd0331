"""One ViT family for every PE-delivery scheme, built on timm's ``VisionTransformer``."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from timm.layers import LayerNorm, get_norm_layer
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer

from torch.utils.checkpoint import checkpoint

from ..core.pe import KNOB_NAMES, resolve_pe_config
from .block import PEBlock
from .hooks import HookPoint

# timm kwargs that this family sets itself or cannot honour, with why.
_FIXED_KWARGS = {
    "class_token": "it follows global_pool ('token' has a class token, 'avg' has none)",
    "fc_norm": "the Last LN always acts on every token before pooling (paper Fig 3)",
    "block_fn": "blocks are PEBlock",
    "no_embed_class": "the PE has a row for the class slot, as in DeiT",
    "reg_tokens": "register tokens have no PE row here",
    "dynamic_img_size": "the PE is defined for one patch grid",
    "pos_embed": "an absolute PE is what this family studies",
    "final_norm": "the Last LN is part of every scheme",
}


class PEVisionTransformer(VisionTransformer):
    """A timm ``VisionTransformer`` whose position embedding is delivered by a :class:`PEConfig`.

    Construct with a preset (``pe_mode`` in ``default``, ``lape``, ``pvg``, ``mpvg``) and optional
    independent knob overrides (``pe_input_add``, ``pe_layer0``, ``pe_hierarchical``, ``last_ln_pe``,
    ``global_pool``, ``pe_type``: :data:`pe_probe.core.pe.KNOBS`, resolved by
    :func:`~pe_probe.core.pe.resolve_pe_config`); every other keyword goes to timm's ``VisionTransformer``.
    With ``pe_mode="default"`` the model is timm's ViT/DeiT with the same state-dict keys and the same logits.

    Hook points (identity modules, see :func:`pe_probe.hook_names`): ``hook_pos_embed``, ``hook_input_pe``
    (where the PE is added to the input), ``blocks.{i}.hook_resid_pre|hook_tok|hook_pe|hook_resid_post``,
    ``hook_last_ln_in``, ``hook_last_ln_out``, ``hook_last_pe``, ``hook_pooled``. Each PE hook sits on the term
    where it is added (a hook there changes that term only); ``hook_pos_embed`` is ``pos_0`` everywhere it is read.
    """

    def __init__(self, pe_mode: str = "default", **kwargs: Any) -> None:
        for name, why in _FIXED_KWARGS.items():
            if name in kwargs:
                raise ValueError(f"{name} cannot be set on a pe_probe model: {why}")
        cfg = resolve_pe_config(pe_mode, **{k: kwargs.pop(k) for k in KNOB_NAMES if k in kwargs})
        depth = kwargs.get("depth", 12)
        sources = cfg.pe_sources(depth)  # validates
        if cfg.layerwise and kwargs.get("patch_drop_rate", 0.0) > 0:
            raise ValueError("patch_drop_rate > 0 cannot be combined with a layer-wise PE (rows would not match)")
        if cfg.last_ln_pe is not None and cfg.global_pool == "token":
            warnings.warn(
                "a PE in the Last LN (MPVG) with a class token is allowed but unusual: the paper designs it for GAP",
                stacklevel=2,
            )
        super().__init__(
            global_pool=cfg.global_pool,
            class_token=cfg.global_pool == "token",
            fc_norm=False,
            block_fn=PEBlock,
            **kwargs,
        )
        self.pe_mode = pe_mode
        self.pe_config = cfg
        self._pe_sources = sources
        norm_layer = get_norm_layer(kwargs.get("norm_layer")) or LayerNorm
        for blk, src in zip(self.blocks, sources):
            if src is not None:
                blk.enable_pe(norm_layer)
        self.last_pe_norm = norm_layer(self.embed_dim) if cfg.last_ln_pe is not None else None

        self.hook_pos_embed = HookPoint()
        self.hook_input_pe = HookPoint() if cfg.input_add else None
        self.hook_last_ln_in = HookPoint()
        self.hook_last_ln_out = HookPoint()
        self.hook_last_pe = HookPoint() if cfg.last_ln_pe is not None else None
        self.hook_pooled = HookPoint()

        if cfg.pe_type == "sincos":
            self.pos_embed.requires_grad_(False)
            self._fill_sincos()

    # ------------------------------------------------------------------ construction helpers
    @torch.no_grad()
    def _fill_sincos(self) -> None:
        """Fixed 2-D sin-cos PE (zeros for the class slot)."""
        grid = list(self.patch_embed.grid_size)
        table = build_sincos2d_pos_embed(grid, dim=self.embed_dim).to(self.pos_embed.dtype)
        self.pos_embed.zero_()
        self.pos_embed[0, self.num_prefix_tokens:] = table

    def set_input_size(self, img_size=None, patch_size=None) -> None:  # noqa: D102 - timm's, sin-cos rebuilt
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        if getattr(self, "pe_config", None) is not None and self.pe_config.pe_type == "sincos":
            self._fill_sincos()  # a fixed table is rebuilt for the new grid, not resampled

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:  # noqa: D102 - timm's
        super().init_weights(mode, needs_reset=needs_reset)
        if getattr(self, "pe_config", None) is not None and self.pe_config.pe_type == "sincos":
            self._fill_sincos()

    # ------------------------------------------------------------------ forward
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch embedding, class token and (optionally) the input PE: ``(x_0, pos_0)``, the residual stream
        entering block 0 and the raw PE the chain starts from (public: the probe's layer-wise family reads it)."""
        x = self.patch_embed(x)
        pos0 = self.hook_pos_embed(self.pos_embed)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pe_config.input_add:
            x = x + self.hook_input_pe(pos0)
        x = self.pos_drop(x)
        x = self.patch_drop(x)
        return self.norm_pre(x), pos0

    def run_blocks(self, x: torch.Tensor, pos0: torch.Tensor, keep: list | None = None, stop: int | None = None,
                   start: int = 0, pes: list | None = None):
        """Run the blocks with their PE chain; returns ``(x_L, pes)``. ``keep`` collects block outputs.

        ``start``: run blocks ``start..L-1`` only, ``x`` being the residual stream entering block ``start``;
        ``pes`` then holds the PEs of the blocks before ``start`` (their chain values, read by later blocks).
        """
        if start and (pes is None or len(pes) < start):
            raise ValueError(f"start={start} needs the PEs of blocks 0..{start - 1} (pes)")
        pes = list(pes[:start]) if start else []
        for i, (blk, src) in enumerate(zip(self.blocks, self._pe_sources)):
            if i < start:
                continue
            pe = None if src is None else blk.embed_pe(pos0 if src < 0 else pes[src])
            pes.append(pe)
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(blk, x, pe, use_reentrant=False)
            else:
                x = blk(x, pe)
            if keep is not None:
                keep.append(x)
            if stop is not None and i >= stop:
                break
        return x, pes

    def last_ln(self, x: torch.Tensor, pos0: torch.Tensor, pes: list) -> torch.Tensor:
        """The Last LN on every token, plus ``LN'_last(pos_k)`` where the scheme adds one (``pes``: the chain
        values of :meth:`run_blocks` or :meth:`pe_chain`)."""
        x = self.hook_last_ln_out(self.norm(self.hook_last_ln_in(x)))
        k = self.pe_config.last_ln_pe
        if k is not None:
            x = x + self.hook_last_pe(self.last_pe_norm(pos0 if k == 0 else pes[k]))
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - timm's interface
        x, pos0 = self.embed(x)
        x, pes = self.run_blocks(x, pos0)
        return self.last_ln(x, pos0, pes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:  # noqa: D102
        x = self.hook_pooled(self.pool(x))
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's intermediate-feature interface, with the PE chain applied (block outputs ``x_{l+1}``)."""
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; valid values: ('NCHW', 'NLC')")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x, pos0 = self.embed(x)
        outs: list[torch.Tensor] = []
        x, pes = self.run_blocks(x, pos0, keep=outs, stop=max_index if stop_early else None)
        inter = [self.norm(outs[i]) if norm else outs[i] for i in take]
        npt = self.num_prefix_tokens
        prefix = [y[:, :npt] for y in inter] if npt else None
        inter = [y[:, npt:] for y in inter]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            inter = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in inter]
        if return_prefix_tokens and prefix is not None:
            inter = list(zip(inter, prefix))
        if intermediates_only:
            return inter
        if stop_early and max_index < len(self.blocks) - 1:
            return None, inter
        return self.last_ln(x, pos0, pes), inter

    # ------------------------------------------------------------------ introspection
    def pe_receiving_blocks(self) -> list[int]:
        """Indices of the blocks that add a layer-wise PE to their attention input."""
        return [i for i, src in enumerate(self._pe_sources) if src is not None]

    @property
    def pe_sources(self) -> list[int | None]:
        """Per block, where its PE comes from: None (no PE), -1 (``pos_0``) or the index of the block whose PE
        it normalises again (hierarchical chains)."""
        return list(self._pe_sources)

    def pe_chain(self, pos0: torch.Tensor | None = None) -> list[torch.Tensor | None]:
        """What each block receives of the PE: ``pes[i] = LN'_i(source)`` (None for blocks without a PE),
        built along the chain from ``pos0`` (default: ``pos_embed``); image-independent."""
        pos0 = self.pos_embed if pos0 is None else pos0
        pes: list[torch.Tensor | None] = []
        for blk, src in zip(self.blocks, self._pe_sources):
            pes.append(None if src is None else blk.embed_pe(pos0 if src < 0 else pes[src]))
        return pes

    def last_pe(self, pos0: torch.Tensor | None = None) -> torch.Tensor | None:
        """``LN'_last(pos_k)``, the PE added after the Last LN (None where the scheme adds none)."""
        k = self.pe_config.last_ln_pe
        if k is None:
            return None
        pos0 = self.pos_embed if pos0 is None else pos0
        return self.last_pe_norm(pos0 if k == 0 else self.pe_chain(pos0)[k])

    # private names of the public methods above (kept for existing callers)
    _embed = embed
    _blocks = run_blocks
    _last_ln = last_ln

    def extra_repr(self) -> str:  # noqa: D102
        return f"pe_mode={self.pe_mode!r}, pe_config={self.pe_config}"
