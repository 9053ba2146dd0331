"""Attention-bias PE: a position bias added to the attention logits. timm's BEiT (``Beit``: per-block
``relative_position_bias_table`` or one shared ``RelativePositionBias``), Swin v1 (``SwinTransformer``: a table
per block, per window), Swin v2 (``SwinTransformerV2``: ``16 * sigmoid`` of a continuous-position MLP,
``cpb_mlp``; ``SwinTransformerV2Cr``: its ``meta_mlp`` through ``_relative_positional_encodings``),
``VisionTransformerRelPos`` (``vit_relpos_*``: ``RelPosBias`` tables or ``RelPosMlp`` MLPs, per
block or shared) and the linear LeViT (``Levit``: ``attention_biases`` gathered by ``get_attention_biases``).

Site ``blocks.{l}.attn.hook_attn_bias`` (kind ``attn_bias``, blocks numbered globally across Swin stages): the
bias block ``l`` adds to its attention logits, ``(1, heads, T, T)`` (BEiT, vit_relpos: T tokens, prefix rows
and columns first) or ``(1, heads, N, N)`` per window (Swin: N = window area, the same bias in every window).
timm computes it in a method (``Attention._get_rel_pos_bias``, ``WindowAttention._get_rel_pos_bias``,
``RelPosBias.get_bias`` / ``RelPosMlp.get_bias``, called by the fused and the unfused attention alike) or
passes a shared one as a keyword (``shared_rel_pos_bias=``, ``shared_rel_pos=``). While
:meth:`AttnBiasFamily.run` runs, the method's result (or the keyword, through a forward pre-hook with kwargs)
is routed through a :class:`~pe_probe.models.HookPoint` the family owns: the bound method is shadowed on the
instance for the duration and deleted in ``finally`` (the attention's forward is not copied and no parameter
is written). A term expanded to the batch, (B, heads, T, T), is applied per image (Swin: per image's windows).

Swin v2 computes its bias inline in ``WindowAttention.forward``: ``16 * sigmoid(cpb_mlp(coords)[index])``. A
forward hook on ``cpb_mlp`` forms that bias from the MLP's output (the same three operations) and passes it
through the HookPoint; only when something replaced it does a forward pre-hook on the attention's ``softmax``
module add the difference ``b' - b`` to the logits (exact up to float rounding). Its term is the bias after
``16 * sigmoid``, so ``zero`` removes it; a ``cpb_mlp`` whose output is 0 instead gives the constant bias 8,
which softmax ignores: the same PE off (tested against that hand edit).

Interventions: ``zero`` is the PE off (no bias: zero table, zero MLP output); ``mean`` replaces the
patch-by-patch block of each head by its mean (position removed, the offset against the prefix rows kept; for
a model without prefix tokens softmax ignores that constant, so it equals ``zero`` up to rounding);
``shuffle`` moves patches: ``b'[i, j] = b[perm[i], perm[j]]`` over patch indices (Swin: the permutation of
the window's positions that ``perm`` induces, ``perm[perm < N]``).

LeViT: sites are the biases of its ``LevitBlock`` attentions (blocks numbered across stages; the stream is the
block input, which the attention reads without a norm); the biases of the stage-changing
``AttentionDownsample`` (queries on the coarser grid) are not sites. timm caches the gathered biases in eval
mode; the shadowed ``get_attention_biases`` routes the cached value, which equals the gathered one.

Not supported (one line each from the constructor): BEiT with both per-block and shared tables, Swin with an
absolute PE (``ape=True``), ``levit_conv_*`` (tokens kept as (B, C, H, W) maps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..core import hook_points as H
from ..core.errors import UnknownNameError
from ..models import HookPoint
from . import register_family
from .base import Family, Site, Tap


@dataclass(frozen=True)
class _Source:
    """Where block ``l``'s bias comes from: ``owner.method()`` (shadowed during runs), the keyword ``kwarg``
    of ``attn``'s forward, or (``cpb``, Swin v2) ``attn.cpb_mlp``'s output. ``windows``: the attention runs on
    ``B * nW`` windows (Swin)."""

    attn: nn.Module
    owner: nn.Module | None = None
    method: str = ""
    kwarg: str = ""
    windows: bool = False
    cpb: bool = False  #: Swin v2: the bias is 16 * sigmoid(cpb_mlp(...)) computed inline in the forward


def _types() -> dict[str, type]:
    """The timm classes this family reads (imported lazily; missing ones are left out)."""
    out: dict[str, type] = {}
    try:
        from timm.models.beit import Beit
        out["beit"] = Beit
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.models.swin_transformer import SwinTransformer
        out["swin"] = SwinTransformer
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.models.swin_transformer_v2 import SwinTransformerV2
        out["swinv2"] = SwinTransformerV2
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.models.swin_transformer_v2_cr import SwinTransformerV2Cr
        out["swinv2cr"] = SwinTransformerV2Cr
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.models.vision_transformer_relpos import VisionTransformerRelPos
        out["relpos"] = VisionTransformerRelPos
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.models.levit import Levit
        out["levit"] = Levit
    except ImportError:  # pragma: no cover
        pass
    return out


def window_perm(perm: torch.Tensor, n: int) -> torch.Tensor:
    """A permutation of ``0..n-1`` induced by ``perm`` (a permutation of ``0..m-1``, m >= n): the entries of
    ``perm`` below ``n`` in their order. ``perm`` itself when m == n."""
    if len(perm) == n:
        return perm
    if len(perm) < n:
        raise ValueError(f"a permutation of {len(perm)} patches cannot shuffle {n} positions")
    return perm[perm < n]


def shuffle_bias(bias: torch.Tensor, n_prefix: int, perm: torch.Tensor) -> torch.Tensor:
    """``bias`` (…, T, T) with its patches moved: ``b'[i, j] = b[perm[i], perm[j]]`` over patch indices
    (the ``n_prefix`` leading rows and columns follow their patches' new places)."""
    idx = torch.cat([torch.arange(n_prefix, device=bias.device), n_prefix + perm.to(bias.device)])
    return bias[..., idx, :][..., :, idx]


def mean_bias(bias: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """``bias`` (…, T, T) with the patch-by-patch block replaced by its mean (per head); prefix rows and
    columns kept."""
    out = bias.clone()
    block = bias[..., n_prefix:, n_prefix:]
    out[..., n_prefix:, n_prefix:] = block.mean(dim=(-2, -1), keepdim=True).expand_as(block)
    return out


@register_family
class AttnBiasFamily(Family):
    """BEiT, Swin v1/v2/v2-cr, vit_relpos and LeViT: one attention-bias site per block (global numbering across stages)."""

    name = "attn_bias"
    pe_kind = "attn_bias"
    priority = 50
    measures = ("per block the position bias added to the attention logits (blocks.{l}.attn.hook_attn_bias; "
                "(1, heads, T, T), Swin per window), BEiT's absolute pos_embed where present; token norms, stream")
    limits = ("attribution moves the bias linearly from 0 (tokens kept, no PE share); LeViT's downsampling "
              "attention biases are not sites; levit_conv_* refused; no per-block additive PE (receiving_blocks empty)")

    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        return isinstance(model, tuple(_types().values()))

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        types = _types()
        self._sources: list[_Source] = []
        self._res_post = False
        self._windows = False
        self._levit = "levit" in types and isinstance(model, types["levit"])
        if self._levit:
            self._init_levit(model)
            self._hp = nn.ModuleList([HookPoint() for _ in self._sources])
            self._ape_hp = HookPoint()
            return
        pe = getattr(model, "patch_embed", None)
        if pe is None or getattr(pe, "img_size", None) is None:
            raise self.unsupported("the model has no fixed input size (patch_embed.img_size)")
        self.grid = tuple(int(g) for g in pe.grid_size)
        self.img_size = tuple(int(s) for s in pe.img_size)
        self.in_chans = int(pe.proj.in_channels)
        self._windows = isinstance(model, tuple(types[k] for k in ("swin", "swinv2", "swinv2cr") if k in types))
        if self._windows:
            self._init_swin(model)
        else:
            self._init_vit(model, beit="beit" in types and isinstance(model, types["beit"]))
        self._hp = nn.ModuleList([HookPoint() for _ in self._sources])
        self._ape_hp = HookPoint()

    def _init_levit(self, model: nn.Module) -> None:
        if model.use_conv:
            raise self.unsupported("levit_conv_* keeps its tokens as (B, C, H, W) feature maps; only the linear "
                                   "LeViT (tokens (B, N, C)) is supported")
        if model.global_pool != "avg":
            raise self.unsupported(f"global_pool={model.global_pool!r}; the family pools LeViT tokens by their mean")
        self.blocks = [blk for stage in model.stages for blk in stage.blocks]
        first = self.blocks[0].attn
        stride = int(model.stem.stride)
        self.grid = tuple(int(r) for r in first.resolution)
        self.img_size = (self.grid[0] * stride, self.grid[1] * stride)
        self.in_chans = int(model.in_chans)
        self.embed_dim = int(model.num_features)
        self.num_prefix_tokens = 0
        self.global_pool = "avg"
        self.final_norm = None
        self.uniform = False
        self.has_ape = False
        self._res_post = True  # x + attn(x): no norm before the attention, which reads the stream itself
        self._sources = [_Source(blk.attn, blk.attn, "get_attention_biases") for blk in self.blocks]
        last = self.blocks[-1].attn.resolution
        self.final_grid = (int(last[0]), int(last[1]))

    def _init_swin(self, model: nn.Module) -> None:
        types = _types()
        cr = "swinv2cr" in types and isinstance(model, types["swinv2cr"])
        stages = model.stages if cr else model.layers
        self.blocks = [blk for stage in stages for blk in stage.blocks]
        self.embed_dim = int(model.num_features)
        self.num_prefix_tokens = 0
        self.global_pool = model.head.global_pool.pool_type if cr else model.global_pool
        if self.global_pool != "avg":
            raise self.unsupported(f"global_pool={self.global_pool!r}; the family pools Swin tokens by their mean ('avg')")
        self.final_norm = None if cr else model.norm  # Swin v2 cr: no final norm on the tokens
        self.uniform = False
        self.has_ape = getattr(model, "absolute_pos_embed", None) is not None
        if self.has_ape:
            raise self.unsupported("Swin with absolute_pos_embed (ape=True) is not supported; only its bias tables")
        merges = sum(not isinstance(getattr(stage, "downsample", None), (nn.Identity, type(None))) for stage in stages)
        self.final_grid = (self.grid[0] // 2 ** merges, self.grid[1] // 2 ** merges)
        if cr:  # res-post blocks; the bias comes from the method _relative_positional_encodings (meta_mlp)
            self._res_post = True
            self._sources = [_Source(blk.attn, blk.attn, "_relative_positional_encodings", windows=True)
                             for blk in self.blocks]
        elif "swinv2" in types and isinstance(model, types["swinv2"]):
            self._res_post = True  # x + norm1(attn(x)): the attention reads the stream itself
            self._sources = [_Source(blk.attn, windows=True, cpb=True) for blk in self.blocks]
        else:
            self._sources = [_Source(blk.attn, blk.attn, "_get_rel_pos_bias", windows=True) for blk in self.blocks]

    def _init_vit(self, model: nn.Module, beit: bool) -> None:
        self.blocks = list(model.blocks)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.global_pool = model.global_pool
        if self.global_pool not in ("avg", "token"):
            raise self.unsupported(f"global_pool={self.global_pool!r}; valid: 'avg', 'token'")
        self.final_norm = None if isinstance(model.norm, nn.Identity) else model.norm
        self.has_ape = getattr(model, "pos_embed", None) is not None
        self.input_pe = self.has_ape
        if beit:
            shared = model.rel_pos_bias is not None
            own = [b.attn.relative_position_bias_table is not None for b in self.blocks]
            if shared and any(own):
                raise self.unsupported("BEiT with both a shared rel_pos_bias and per-block tables (their sum is not "
                                       "one term)")
            if shared:
                self._sources = [_Source(b.attn, kwarg="shared_rel_pos_bias") for b in self.blocks]
            else:
                self._sources = [_Source(b.attn, b.attn, "_get_rel_pos_bias") for b, o in zip(self.blocks, own) if o]
                if 0 < len(self._sources) < len(self.blocks):
                    raise self.unsupported("BEiT with relative position tables in only some blocks")
        else:
            from timm.models.vision_transformer_relpos import ResPostRelPosBlock

            self._res_post = any(isinstance(b, ResPostRelPosBlock) for b in self.blocks)
            if model.shared_rel_pos is not None:
                self._sources = [_Source(b.attn, kwarg="shared_rel_pos") for b in self.blocks]
            else:
                self._sources = [_Source(b.attn, b.attn.rel_pos, "get_bias") for b in self.blocks
                                 if b.attn.rel_pos is not None]
        self.pe_kind = "attn_bias" if self._sources else ("absolute" if self.has_ape else "none")

    # ------------------------------------------------------------------ stream
    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """Swin's (B, H, W, C) stream as (B, H*W, C); (B, T, D) as it is."""
        return x.reshape(x.shape[0], -1, x.shape[-1]) if x.ndim == 4 else x

    def stream_taps(self) -> dict[str, Tap]:
        """The defaults (``norm1`` in/out), except for res-post blocks (``vit_relpos_*_rpn``: ``norm1`` follows
        the attention), where the stream is the block's input and the attention reads it as it is; plus
        ``hook_pooled`` (the input of ``fc_norm``; Swin: of the head's ``fc``)."""
        pooled = Tap(self.model.head.fc, "in") if self._windows else \
            Tap(self.model.head, "in") if self._levit else Tap(self.model.fc_norm, "in")
        if not self._res_post:
            return {**super().stream_taps(), H.POOLED: pooled}
        taps: dict[str, Tap] = {}
        flat = self._flat()
        for i, blk in enumerate(self.blocks):
            taps[H.block_hook(i, H.RESID_PRE)] = Tap(blk, "in", flatten=flat)
            # the attention reads the stream as it is (Swin v2: after windowing, so the block's input is read)
            taps[H.block_hook(i, H.TOK)] = Tap(blk, "in", flatten=flat) if self._windows else Tap(blk.attn, "in")
            taps[H.block_hook(i, H.RESID_POST)] = Tap(blk, "out", flatten=flat)
        if self.final_norm is not None:
            taps[H.LAST_LN_IN] = Tap(self.final_norm, "in", flatten=flat)
            taps[H.LAST_LN_OUT] = Tap(self.final_norm, "out", flatten=flat)
        taps[H.POOLED] = pooled
        return taps

    def names(self) -> list[str]:
        """The base order, then ``hook_pooled``."""
        return super().names() + [H.POOLED]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D) as the model's head pools (before its ``fc_norm``): the mean of the patch tokens
        (``avg``; Swin: of every token) or the class token (``token``)."""
        if self.global_pool == "token":
            return x[:, 0]
        return x[:, self.num_prefix_tokens:].mean(dim=1)

    # ------------------------------------------------------------------ sites
    def sites(self, effect: str = "direct") -> list[Site]:
        """``hook_input_pe`` (BEiT with ``use_abs_pos_emb``), then ``blocks.{l}.attn.hook_attn_bias`` per block.
        Each bias is read by its block only, so direct and total effects are the same sites."""
        sites: list[Site] = []
        if self.has_ape:
            rows = self.model.pos_embed.shape[1]
            sites.append(Site(H.INPUT_PE, "absolute", H.INPUT, self._ape_hp, tok=self.model.patch_embed,
                              n_prefix=max(0, rows - self.grid[0] * self.grid[1]),
                              note="pos_embed added to the tokens (read through functional_call)"))
        npre = 0 if self._sources and self._sources[0].windows else self.num_prefix_tokens
        for l, src in enumerate(self._sources):
            where = "per window, N = window area" if src.windows else "T tokens, prefix first"
            sites.append(Site(H.attn_bias_hook(l), "attn_bias", l, self._hp[l], additive=False, n_prefix=npre,
                              note=f"the position bias block l adds to its attention logits, (1, heads, N, N) ({where})"))
        return sites

    def replacement(self, site: Site, kind: str, perm: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """Bias sites: ``zero`` no bias, ``mean`` the patch block's mean per head, ``shuffle`` patches moved by
        ``perm`` (rows and columns). The absolute site: the additive defaults."""
        if site.kind != "attn_bias":
            return super().replacement(site, kind, perm)
        if kind not in site.interventions:
            raise UnknownNameError(f"{site.name}: intervention {kind!r} is unknown; valid here: {site.interventions}")
        npre = site.n_prefix
        if kind == "zero":
            return torch.zeros_like
        if kind == "mean":
            return lambda b: mean_bias(b, npre)
        if perm is None:
            raise ValueError("shuffle needs a permutation (shuffle_permutation)")
        return lambda b: shuffle_bias(b, npre, window_perm(perm, b.shape[-1] - npre))

    # ------------------------------------------------------------------ running
    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Plain ``model(x)`` calls route each block's bias through the family's HookPoints (BEiT's absolute
        ``pos_embed`` needs :meth:`run`)."""
        handles, shadowed = [], []
        try:
            for l, src in enumerate(self._sources):
                hp = self._hp[l]
                rows = {"n": 1}  # the attention's batch (B, or B * nW windows), read before the bias is asked for

                def record(module, args, kwargs, rows=rows):
                    x = args[0] if args else kwargs["x"]
                    rows["n"] = x.shape[0]

                def route(bias, hp=hp, rows=rows, windows=src.windows):
                    term = bias if bias.ndim == 4 else bias.unsqueeze(0)
                    out = hp(term)
                    if out is term:
                        return bias
                    if windows and out.shape[0] > 1:  # one bias per image: repeat it over that image's windows
                        out = out.repeat_interleave(rows["n"] // out.shape[0], dim=0)
                    return out

                if src.cpb:
                    handles += self._route_cpb(src.attn, hp)
                elif src.kwarg:
                    def pre(module, args, kwargs, route=route, key=src.kwarg):
                        if kwargs.get(key) is None:
                            return None
                        return args, {**kwargs, key: route(kwargs[key])}
                    handles.append(src.attn.register_forward_pre_hook(pre, with_kwargs=True))
                else:
                    handles.append(src.attn.register_forward_pre_hook(record, with_kwargs=True))
                    original = getattr(src.owner, src.method)
                    object.__setattr__(src.owner, src.method,
                                       lambda *a, original=original, route=route: route(original(*a)))
                    shadowed.append(src)
            yield
        finally:
            for h in handles:
                h.remove()
            for src in shadowed:
                src.owner.__dict__.pop(src.method, None)

    @staticmethod
    def _route_cpb(attn: nn.Module, hp: HookPoint) -> list:
        """Swin v2: a forward hook on ``attn.cpb_mlp`` turns its table into the bias the attention adds,
        ``16 * sigmoid(table[relative_position_index])`` (1, heads, N, N), and passes it through ``hp``; when
        something replaced it, a forward pre-hook on ``attn.softmax`` adds the difference to the logits (per
        image's windows for a (B, ...) term). The model's own bias is left in place otherwise."""
        state: dict[str, torch.Tensor | None] = {"delta": None}

        def after_cpb(module, args, table):
            n = attn.window_size[0] * attn.window_size[1]
            index = attn.relative_position_index.view(-1)
            bias = table.view(-1, attn.num_heads)[index].view(n, n, -1).permute(2, 0, 1).contiguous()
            term = (16 * torch.sigmoid(bias)).unsqueeze(0)
            out = hp(term)
            state["delta"] = None if out is term else out - term

        def before_softmax(module, args):
            delta, state["delta"] = state["delta"], None
            if delta is None:
                return None
            logits = args[0]
            if delta.shape[0] > 1:
                delta = delta.repeat_interleave(logits.shape[0] // delta.shape[0], dim=0)
            return (logits + delta,) + tuple(args[1:])

        return [attn.cpb_mlp.register_forward_hook(after_cpb), attn.softmax.register_forward_pre_hook(before_softmax)]

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """Logits with every site routed through its HookPoint (``pos_embed`` via ``functional_call``)."""
        with self.running():
            if self.has_ape:
                return functional_call(self.model, {"pos_embed": self._ape_hp(self.model.pos_embed)}, (images,))
            return self.model(images)

    def meta(self) -> dict:
        """The base meta plus ``bias_source``: the timm class or method each block's bias comes from (e.g.
        ``RelPosMlp.get_bias``, ``WindowAttention._get_rel_pos_bias``, ``shared_rel_pos`` keyword,
        ``cpb_mlp``), and ``bias_windows`` (per window)."""
        out = super().meta()
        src = self._sources[0] if self._sources else None
        if src is None:
            out["bias_source"] = None
        elif src.cpb:
            out["bias_source"] = "WindowAttention.cpb_mlp (16 * sigmoid)"
        elif src.kwarg:
            out["bias_source"] = f"{src.kwarg} keyword (shared)"
        else:
            out["bias_source"] = f"{type(src.owner).__name__}.{src.method}"
        out["bias_windows"] = bool(src is not None and src.windows)
        return out

    # ------------------------------------------------------------------ probe quantities
    def derived(self) -> dict[str, Callable[[], torch.Tensor]]:
        """``hook_pos_embed``: the raw ``pos_embed`` (BEiT with ``use_abs_pos_emb``)."""
        return {H.POS_EMBED: lambda: self.model.pos_embed} if self.has_ape else {}

    def static_arrays(self) -> dict[str, np.ndarray]:
        """``pos_embed`` (where present) and ``attn_bias``: block 0's bias as its attention receives it."""
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            if self.has_ape:
                out["pos_embed"] = self.model.pos_embed.detach()[0].double().cpu().numpy()
            if self._sources:
                src = self._sources[0]
                if src.cpb:
                    got: dict[str, torch.Tensor] = {}
                    hp = HookPoint()
                    hp.register_forward_hook(lambda m, a, o: got.__setitem__("b", o))
                    hs = self._route_cpb(src.attn, hp)
                    try:
                        src.attn.cpb_mlp(src.attn.relative_coords_table)
                    finally:
                        for h in hs:
                            h.remove()
                    bias = got["b"]
                elif src.owner is not None:
                    args = (src.owner.attention_biases.device,) if self._levit else ()
                    bias = getattr(src.owner, src.method)(*args)
                else:
                    shared = self.model.rel_pos_bias if src.kwarg == "shared_rel_pos_bias" else self.model.shared_rel_pos
                    bias = shared() if src.kwarg == "shared_rel_pos_bias" else shared.get_bias()
                bias = bias if bias.ndim == 4 else bias.unsqueeze(0)
                out["attn_bias"] = bias.detach().double().cpu().numpy()
        return out


__all__ = ["AttnBiasFamily", "mean_bias", "shuffle_bias", "window_perm"]
