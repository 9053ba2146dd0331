"""Position in attention: attention capture with fused attention switched off, and streaming per-head statistics.

timm's attention modules compute ``F.scaled_dot_product_attention`` when their ``fused_attn`` flag is set (the
default), so the attention matrix never exists and hooks on ``attn_drop`` (timm's own
``AttentionExtract`` default) stay empty. :func:`unfused` switches the flag off on every attention module for
the duration of a block and restores each module's own value after, also after an error. The probabilities are
then read at ``attn_drop`` (identity in eval mode), one batch at a time, and reduced at once to running sums:
nothing of size (B, H, T, T) outlives the batch.

Per layer and head (docs/probe.md, "Attention"):

- ``attn_distance``: for patch queries, the attention-weighted Euclidean distance on the patch grid (in
  patches) to patch keys, normalised by the attention mass on patch keys;
- ``attn_prefix_share``: the attention mass patch queries put on prefix tokens (class, registers);
- ``attn_entropy``: the entropy (nats) of each patch query's attention distribution over all keys;
- where the block's attention input is a token term plus an additive PE term (``LN_l(x_l) + pe_l`` in a
  layer-wise block; the input PE of block 0 through the block's LayerNorm with its per-token scale frozen),
  the split of the logits ``scale * q k^T`` into content-content, content-position, position-content and
  position-position terms (q/k biases go with the content side; the four terms sum to the logits):
  ``logit_{cc,cp,pc,pp}_ms`` (mean square over images, patch queries and patch keys) and
  ``logit_pos_share`` (the three position terms' mean squares over the four's).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from ..core import hook_points as H
from ..core.attention import ATTENTION_METRICS, LOGIT_METRICS, LOGIT_TERMS, attention_site  # noqa: F401
from ..core.errors import CheckpointError
from .adapter import view_model
from .hooks import eval_inference, recording
from .inputs import iter_images, open_data



#: The softmax calls whose input is an attention module's logits (timm calls ``attn.softmax(dim=-1)``; Swin's
#: ``nn.Softmax`` module calls ``F.softmax``).
_SOFTMAX = (torch.Tensor.softmax, torch.softmax, F.softmax)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of each block of ``model`` (``blocks[i].attn``), in block order.

    Any module with timm's ``fused_attn`` flag, ``num_heads`` and ``scale`` is read (its logits are the input of
    the softmax it calls once its fused path is off); any other block raises :class:`CheckpointError` naming it.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise CheckpointError(f"{type(model).__name__} has no .blocks; attention statistics read ViT blocks")
    mods = []
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        missing = [a for a in ("num_heads", "scale", "fused_attn") if not hasattr(attn, a)]
        if attn is None or missing:
            raise CheckpointError(f"block {i}'s attention ({type(attn).__name__}) is not a timm multi-head attention "
                                  f"(missing {missing or ['attn']}); attention statistics are not supported for it")
        mods.append(attn)
    return mods


@contextlib.contextmanager
def unfused(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, every module in ``modules`` computes its attention matrix (``fused_attn = False``);
    each module's own flag is restored on exit, also after an error."""
    saved = [m.fused_attn for m in modules]
    try:
        for m in modules:
            m.fused_attn = False
        yield
    finally:
        for m, flag in zip(modules, saved):
            m.fused_attn = flag


class _SoftmaxTap(TorchFunctionMode):
    """Hands the input (the logits) and output (the probabilities) of the first softmax an attention module calls
    to ``sink(layer, logits, probs)``; :meth:`watching` says which layer's module is running."""

    def __init__(self, sink: Callable[[int, torch.Tensor, torch.Tensor], None]) -> None:
        super().__init__()
        self.sink = sink
        self.layer: int | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.layer is not None and func in _SOFTMAX:
            layer, self.layer = self.layer, None  # one softmax per attention call
            self.sink(layer, args[0], out)
        return out


@contextlib.contextmanager
def attention_logits(modules: Sequence[nn.Module], sink: Callable[[int, torch.Tensor, torch.Tensor], None]
                     ) -> Iterator[None]:
    """Within the block, every forward of ``modules[l]`` hands its attention logits and probabilities,
    ``(B, H, T, T)`` each, to ``sink(l, logits, probs)`` (fused attention off: :func:`unfused`). The logits are
    exactly what the module's softmax receives (biases and masks added); the probabilities are its own output.
    Every hook and the function mode are removed on exit, also after an error."""
    tap = _SoftmaxTap(sink)
    handles = []

    def enter(l):
        def pre(module, args):
            tap.layer = l
        return pre

    def leave(module, args, out):
        tap.layer = None

    with unfused(modules):
        try:
            for l, m in enumerate(modules):
                handles.append(m.register_forward_pre_hook(enter(l)))
                handles.append(m.register_forward_hook(leave))
            with tap:
                yield
        finally:
            for h in handles:
                h.remove()


def grid_distances(grid: tuple[int, int], dtype=torch.float64) -> torch.Tensor:
    """(N, N) Euclidean distances, in patches, between the N = h * w patches of ``grid`` (row-major)."""
    h, w = grid
    rr, cc = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    pos = torch.stack([rr.reshape(-1), cc.reshape(-1)], -1)
    return torch.cdist(pos, pos)


class AttentionStats:
    """Running sums of the per-head attention statistics of every block (float64 ``state``, fixed size).

    ``n_prefix`` leading tokens are prefix tokens; the rest form the patch ``grid`` (row-major).
    """

    def __init__(self, depth: int, heads: int, grid: tuple[int, int], n_prefix: int) -> None:
        self.depth, self.heads, self.grid, self.n_prefix = depth, heads, tuple(grid), n_prefix
        self.dist = grid_distances(self.grid)
        z = lambda *s: torch.zeros(s, dtype=torch.float64)  # noqa: E731
        self.state = {"queries": z(depth), "dist_sum": z(depth, heads), "prefix_sum": z(depth, heads),
                      "entropy_sum": z(depth, heads), "entries": z(depth), "logit_ms_sum": z(depth, 4, heads)}
        self.decomposed: set[int] = set()

    def add_probs(self, layer: int, probs: torch.Tensor) -> None:
        """Add one batch's attention probabilities (B, H, T, T) of block ``layer``."""
        p = probs[:, :, self.n_prefix:, :].double()  # patch queries
        patch = p[..., self.n_prefix:]
        mass = patch.sum(-1)  # (B, H, N)
        d = torch.einsum("bhqk,qk->bhq", patch, self.dist.to(p.device)) / mass
        ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
        s = self.state
        s["queries"][layer] += p.shape[0] * p.shape[2]
        s["dist_sum"][layer] += d.sum((0, 2)).cpu()
        s["prefix_sum"][layer] += (1.0 - mass).sum((0, 2)).cpu()
        s["entropy_sum"][layer] += ent.sum((0, 2)).cpu()

    def add_terms(self, layer: int, terms: Sequence[torch.Tensor]) -> None:
        """Add one batch's four logit terms (each (B, H, T, T)) of block ``layer`` (patch queries x patch keys)."""
        npre = self.n_prefix
        s = self.state
        for i, t in enumerate(terms):
            t = t[:, :, npre:, npre:].double()
            s["logit_ms_sum"][layer, i] += t.square().sum((0, 2, 3)).cpu()
        t0 = terms[0]
        s["entries"][layer] += t0.shape[0] * (t0.shape[2] - npre) * (t0.shape[3] - npre)
        self.decomposed.add(layer)

    def rows(self, pe_kinds: dict[int, str] | None = None) -> list[tuple[str, str, int, int, str, float]]:
        """``(site, pe_kind, layer, head, metric, value)`` rows of every block (:data:`~pe_probe.core.attention.ATTENTION_COLUMNS`;
        logit terms only where they were measured); ``pe_kinds``: the kind of PE reaching each block (default
        ``none``)."""
        s = {k: v.numpy() for k, v in self.state.items()}
        out: list[tuple[int, int, str, float]] = []
        for l in range(self.depth):
            q = s["queries"][l]
            for h in range(self.heads):
                out += [(l, h, "attn_distance", s["dist_sum"][l, h] / q),
                        (l, h, "attn_prefix_share", s["prefix_sum"][l, h] / q),
                        (l, h, "attn_entropy", s["entropy_sum"][l, h] / q)]
                if l in self.decomposed:
                    ms = s["logit_ms_sum"][l, :, h] / s["entries"][l]
                    out += [(l, h, f"logit_{t}_ms", float(v)) for t, v in zip(LOGIT_TERMS, ms)]
                    total = float(ms.sum())
                    out.append((l, h, "logit_pos_share", float(ms[1:].sum()) / total if total > 0 else math.nan))
        kinds = pe_kinds or {}
        return [(attention_site(l), kinds.get(l, "none"), l, h, m, float(v)) for l, h, m, v in out]


def capture_attention(model: nn.Module, images: torch.Tensor, *, logits: bool = False) -> dict[int, torch.Tensor]:
    """One batch's attention probabilities of every block, ``{layer: (B, H, T, T)}`` (detached copies; with
    ``logits=True`` the logits the softmax received instead), fused attention switched off for the call only;
    eval mode, no hook left afterwards."""
    from .inputs import check_images

    view = view_model(model)
    mods = attention_modules(model)
    images = check_images(images, view)
    out: dict[int, torch.Tensor] = {}

    def sink(l, lg, p):
        out[l] = (lg if logits else p).detach().clone()

    with eval_inference(model), attention_logits(mods, sink):
        model(images)
    return {l: t.clone() for l, t in out.items()}  # plain tensors (made outside inference mode)


def _qk(attn: nn.Module, a: torch.Tensor, bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k (B, H, T, hd) of attention input ``a`` (B or 1, T, D) through ``attn.qkv`` (with or without its bias)."""
    d = attn.num_heads * (attn.qkv.out_features // (3 * attn.num_heads))
    w = attn.qkv.weight
    b = attn.qkv.bias if (bias and attn.qkv.bias is not None) else None
    q = nn.functional.linear(a, w[:d], None if b is None else b[:d])
    k = nn.functional.linear(a, w[d:2 * d], None if b is None else b[d:2 * d])
    B, T = a.shape[:2]
    shape = (B, T, attn.num_heads, d // attn.num_heads)
    return q.reshape(shape).transpose(1, 2), k.reshape(shape).transpose(1, 2)


def logit_terms(attn: nn.Module, tok: torch.Tensor, pe: torch.Tensor) -> list[torch.Tensor]:
    """The four terms of ``attn``'s logits for the input ``tok + pe`` (content with the q/k biases, position
    without): ``[cc, cp, pc, pp]``, each (B, H, T, T) with ``attn.scale``; they sum to the logits."""
    qc, kc = _qk(attn, tok, True)
    qp, kp = _qk(attn, pe, False)
    sc = attn.scale
    return [sc * qc @ kc.transpose(-2, -1), sc * qc @ kp.transpose(-2, -1),
            sc * qp @ kc.transpose(-2, -1), sc * qp @ kp.transpose(-2, -1)]


def split_input_ln(norm: nn.LayerNorm, x: torch.Tensor, pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(x)`` split into a content and a position part, with the per-token scale frozen at ``x``'s:
    ``norm(x) = content + position`` where ``position = gamma * (pe - mean(pe)) / sigma(x)`` (``pe`` is the
    additive PE part of ``x``) and ``content`` is the rest (beta included)."""
    if not isinstance(norm, nn.LayerNorm):
        raise CheckpointError(f"the input PE passes through a {type(norm).__name__}, not a LayerNorm; cannot split it")
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
    pe_c = pe - pe.mean(-1, keepdim=True)
    pos = pe_c / sigma
    if norm.weight is not None:
        pos = pos * norm.weight
    return norm(x) - pos, pos


def attention_stats(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 64,
    max_images: int | None = None,
    data_dir: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    split: str | None = None,
    decompose: bool = True,
    progress: bool = True,
) -> tuple[list[tuple[str, str, int, int, str, float]], dict]:
    """Stream ``data`` through ``model`` with its attention unfused and return per-head rows
    ``(site, pe_kind, layer, head, metric, value)`` and metadata (``n_images``, ``grid``, ``decomposed_layers``).

    ``data`` as for :func:`pe_probe.probe`. ``decompose``: also split the logits of blocks whose attention
    input has an additive PE term (pe_probe layer-wise blocks; block 0 of models that add the PE to the input,
    through its LayerNorm with the per-token scale frozen) into content/position terms. Each module's
    ``fused_attn`` flag and train flag are restored afterwards, also after an error.
    """
    view = view_model(model)
    mods = attention_modules(model)
    heads = {m.num_heads for m in mods}
    if len(heads) != 1:
        raise CheckpointError(f"blocks have different head counts {sorted(heads)}; not supported")
    stats = AttentionStats(view.depth, heads.pop(), view.grid, view.num_prefix_tokens)
    names: list[str] = []
    pe_layers: list[int] = []
    input_split = False
    skipped: dict[int, str] = {}
    if decompose:
        if view.kind == "pe":
            pe_layers = list(view.receiving_blocks)
            names += [H.block_hook(l, H.TOK) for l in pe_layers] + [H.block_hook(l, H.PE) for l in pe_layers]
        input_split = view.input_pe and 0 not in pe_layers and isinstance(getattr(model, "norm_pre", None), nn.Identity)
        if input_split:
            names.append(H.block_hook(0, H.RESID_PRE))
        for l in sorted(set(pe_layers) | ({0} if input_split else set())):
            why = _not_splittable(mods[l])
            if why:
                skipped[l] = why
        pe_layers = [l for l in pe_layers if l not in skipped]
        input_split = input_split and 0 not in skipped
        names = [n for n in names if not any(n.startswith(f"blocks.{l}.") for l in skipped)]
    batches, total = open_data(data, view, batch_size=batch_size, data_dir=None if data_dir is None else str(data_dir),
                               mean=mean, std=std, split=split)
    if total is not None and max_images is not None:
        total = min(total, max_images)
    def sink(l, logits, probs):
        stats.add_probs(l, probs)

    n = 0
    with eval_inference(model), attention_logits(mods, sink), recording(view, names) as store:
        bar = tqdm(total=total, unit="img", desc="attention", disable=not progress, leave=False)
        try:
            for images in iter_images(batches, view, max_images):
                store.clear()
                model(images)
                for l in pe_layers:
                    tok, pe = store[H.block_hook(l, H.TOK)], store[H.block_hook(l, H.PE)]
                    stats.add_terms(l, logit_terms(mods[l], tok, pe.expand_as(tok)))
                if input_split:
                    x0 = store[H.block_hook(0, H.RESID_PRE)]
                    content, position = split_input_ln(model.blocks[0].norm1, x0, _input_pe_rows(model, x0))
                    stats.add_terms(0, logit_terms(mods[0], content, position))
                n += len(images)
                bar.update(len(images))
        finally:
            bar.close()
    meta = {"n_images": n, "grid": list(view.grid), "num_prefix_tokens": view.num_prefix_tokens,
            "heads": stats.heads, "decomposed_layers": sorted(stats.decomposed),
            "not_decomposed": {str(l): why for l, why in skipped.items()}}
    kinds = {l: "layerwise" for l in (view.receiving_blocks if view.kind == "pe" else [])}
    if view.input_pe:
        kinds.setdefault(0, "absolute")
    return stats.rows(kinds), meta


def _not_splittable(attn: nn.Module) -> str:
    """Why ``attn``'s logits cannot be split into content and position terms ("" when they can)."""
    if not isinstance(getattr(attn, "qkv", None), nn.Linear):
        return f"{type(attn).__name__} has no fused qkv projection"
    if not isinstance(getattr(attn, "q_norm", nn.Identity()), nn.Identity) or \
            not isinstance(getattr(attn, "k_norm", nn.Identity()), nn.Identity):
        return "q and k are normalised (qk_norm): the logits are not bilinear in the input"
    return ""


def _input_pe_rows(model: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """The PE part of ``x_0`` (1, T, D): ``pos_embed``, with zero rows for prefix slots it has no row for."""
    pos = model.pos_embed.to(x0.dtype)
    T = x0.shape[1]
    if pos.shape[1] == T:
        return pos
    pad = pos.new_zeros((1, T - pos.shape[1], pos.shape[2]))
    return torch.cat([pad, pos], 1)
