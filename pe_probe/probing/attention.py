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
from timm.layers import Attention as TimmAttention
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core import hook_points as H
from ..core.attention import (ATTENTION_METRICS, LOGIT_METRICS, LOGIT_TERMS, AttentionResult,  # noqa: F401
                              attention_site)
from ..core.errors import CheckpointError, DataError
from .accumulate import Scratch
from .adapter import view_model
from .hooks import eval_inference, recording
from .inputs import DataOptions, stream_data


#: The softmax calls whose input is an attention module's logits (timm calls ``attn.softmax(dim=-1)``; Swin's
#: ``nn.Softmax`` module calls ``F.softmax``).
_SOFTMAX = (torch.Tensor.softmax, torch.softmax, F.softmax)


def attention_modules(model: nn.Module) -> tuple[list[nn.Module | None], dict[int, str]]:
    """The attention module of each block of ``model`` in global block order (its PE family's
    :attr:`~pe_probe.families.Family.blocks`), and why a block has none that can be read (``{layer: reason}``).

    A block's ``attn`` is read when it has timm's ``fused_attn`` flag, ``num_heads`` and ``scale``: its logits
    are then the input of the softmax it calls once its fused path is off. Other blocks (cross-covariance
    attention, class-attention-only blocks without them, ...) are listed with the reason; a model none of
    whose blocks can be read raises :class:`CheckpointError` in one line.
    """
    fam = view_model(model)
    mods: list[nn.Module | None] = []
    why: dict[int, str] = {}
    for i, blk in enumerate(fam.blocks):
        attn = getattr(blk, "attn", None)
        missing = [a for a in ("num_heads", "scale", "fused_attn") if not hasattr(attn, a)]
        if attn is None or missing:
            why[i] = (f"{type(attn).__name__ if attn is not None else type(blk).__name__} is not a timm multi-head "
                      f"attention with a fused_attn switch (no {', '.join(missing or ['attn'])})")
            mods.append(None)
        else:
            mods.append(attn)
    if all(m is None for m in mods):
        raise CheckpointError(f"{type(model).__name__}: no block has a timm multi-head attention pe-probe can read "
                              f"({why.get(0, 'no blocks')}); attention statistics are not supported for it")
    return mods, why


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
    to ``sink(layer, logits, probs)``; :attr:`layer` (set by :func:`attention_logits`' forward pre-hooks, cleared
    after each module's forward) says which layer's module is running."""

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
    """Within the block, every forward of ``modules[l]`` (None: not read) hands its attention logits and probabilities,
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

    live = [m for m in modules if m is not None]
    with unfused(live):
        try:
            for l, m in enumerate(modules):
                if m is None:
                    continue
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

    ``n_prefix`` leading tokens are prefix tokens; the rest form the patch ``grid`` (row-major). A block whose
    attention is not over exactly these tokens (windowed, pooled or class-only attention) is not measured:
    :meth:`add_probs` records why in :attr:`skipped` the first time it sees it.
    """

    def __init__(self, depth: int, heads: int, grid: tuple[int, int], n_prefix: int) -> None:
        self.depth, self.heads, self.grid, self.n_prefix = depth, heads, tuple(grid), n_prefix
        self.dist = grid_distances(self.grid)
        z = lambda *s: torch.zeros(s, dtype=torch.float64)  # noqa: E731
        self.state = {"queries": z(depth), "dist_sum": z(depth, heads), "prefix_sum": z(depth, heads),
                      "entropy_sum": z(depth, heads), "entries": z(depth), "logit_ms_sum": z(depth, 4, heads),
                      "ratio_num": z(depth, heads), "ratio_den": z(depth, heads)}
        self.decomposed: set[int] = set()
        self.ratio: dict[int, str] = {}  #: layer -> the ratio metric measured there (bias share, rope change)
        self.skipped: dict[int, str] = {}
        self._scratch = Scratch()  # full-size temporaries reused batch after batch
        self._dist_as: torch.Tensor | None = None  # ``dist`` in the probabilities' dtype and device

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The state, moved once to ``device`` (the activations'; MPS has no float64: CPU there), so that adding a
        batch reads nothing back to the host."""
        if device.type == "mps":
            device = torch.device("cpu")
        if self.state["queries"].device != device:
            self.state = {k: v.to(device) for k, v in self.state.items()}
        return self.state

    def fits(self, layer: int, probs: torch.Tensor) -> bool:
        """Whether ``probs`` (B, H, Tq, Tk) is global attention over the model's tokens (else recorded)."""
        T = self.n_prefix + self.grid[0] * self.grid[1]
        if probs.ndim == 4 and probs.shape[1] == self.heads and probs.shape[2] == probs.shape[3] == T:
            return True
        self.skipped.setdefault(layer, f"attention of shape {tuple(probs.shape)} is not global attention over the "
                                       f"{T} tokens (B, {self.heads}, {T}, {T}): windowed, pooled or class-only")
        return False

    def add_probs(self, layer: int, probs: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """Add one batch's attention probabilities (B, H, T, T) of block ``layer`` (and the logits the softmax
        received, which make the entropy cheap: ``H = lse - sum_k p_k z_k`` with ``lse = max z - log max p``).

        Per query, the distance, mass and entropy are reductions over the keys in the probabilities' float32 (half
        precisions are taken to float32 first); the sums over images and queries are float64."""
        if not self.fits(layer, probs):
            return
        f64, npre = torch.float64, self.n_prefix
        if probs.dtype not in (torch.float32, f64):
            probs = probs.float()
        p = probs[:, :, npre:, :]  # patch queries (B, H, N, T)
        patch = p[..., npre:]
        if self._dist_as is None or self._dist_as.dtype != p.dtype or self._dist_as.device != p.device:
            self._dist_as = self.dist.to(device=p.device, dtype=p.dtype)
        mass = patch.sum(-1)  # (B, H, N)
        d = torch.mul(patch, self._dist_as, out=self._scratch.like(patch, "keys")).sum(-1) / mass
        if logits is not None and logits.shape == probs.shape:
            z = logits[:, :, npre:, :]
            pz = torch.mul(p, z, out=self._scratch.like(p, "all"))
            ent = (z.amax(-1).to(p.dtype) - p.amax(-1).log()) - torch.nansum(pz, -1)  # 0 * -inf (a masked key): 0
        else:
            ent = torch.special.entr(p).sum(-1)
        s = self._on(p.device)
        s["queries"][layer] += p.shape[0] * p.shape[2]
        s["dist_sum"][layer] += d.sum((0, 2), dtype=f64)
        s["prefix_sum"][layer] += (1.0 - mass).sum((0, 2), dtype=f64)
        s["entropy_sum"][layer] += ent.sum((0, 2), dtype=f64)

    def add_term_squares(self, layer: int, sums: torch.Tensor, entries: int) -> None:
        """Add one batch's (4, H) sums of squares of the four logit terms over images, patch queries and patch keys
        (:func:`logit_term_squares`), over ``entries`` (images x patch queries x patch keys) entries."""
        s = self._on(sums.device)
        s["logit_ms_sum"][layer] += sums
        s["entries"][layer] += entries
        self.decomposed.add(layer)

    def add_ratio(self, layer: int, metric: str, part: torch.Tensor, logits: torch.Tensor) -> None:
        """Add ``sum centred(part)^2`` and ``sum centred(logits)^2`` over patch queries and all keys, per head
        (each centred over the keys of its query, so a per-query constant, which the softmax ignores, counts
        nothing): their ratio is ``metric`` of block ``layer``. ``part`` broadcasts against ``logits``."""
        npre = self.n_prefix
        lg = logits[:, :, npre:, :].double()
        pt = part[..., npre:, :].double().expand_as(lg)
        centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
        s = self._on(lg.device)
        s["ratio_num"][layer] += centred(pt).square().sum((0, 2, 3))
        s["ratio_den"][layer] += centred(lg).square().sum((0, 2, 3))
        self.ratio[layer] = metric

    def rows(self, pe_kinds: dict[int, str] | None = None) -> list[tuple[str, str, int, int, str, float]]:
        """``(site, pe_kind, layer, head, metric, value)`` rows of every measured block
        (:data:`~pe_probe.core.attention.ATTENTION_COLUMNS`; logit terms and ratios only where measured);
        ``pe_kinds``: the kind of PE reaching each block (default ``none``)."""
        s = {k: v.cpu().numpy() for k, v in self.state.items()}
        out: list[tuple[int, int, str, float]] = []
        for l in range(self.depth):
            q = s["queries"][l]
            if not q:
                continue
            for h in range(self.heads):
                out += [(l, h, "attn_distance", s["dist_sum"][l, h] / q),
                        (l, h, "attn_prefix_share", s["prefix_sum"][l, h] / q),
                        (l, h, "attn_entropy", s["entropy_sum"][l, h] / q)]
                if l in self.decomposed:
                    ms = s["logit_ms_sum"][l, :, h] / s["entries"][l]
                    out += [(l, h, f"logit_{t}_ms", float(v)) for t, v in zip(LOGIT_TERMS, ms)]
                    total = float(ms.sum())
                    out.append((l, h, "logit_pos_share", float(ms[1:].sum()) / total if total > 0 else math.nan))
                if l in self.ratio:
                    den = s["ratio_den"][l, h]
                    out.append((l, h, self.ratio[l], s["ratio_num"][l, h] / den if den > 0 else math.nan))
        kinds = pe_kinds or {}
        return [(attention_site(l), kinds.get(l, "none"), l, h, m, float(v)) for l, h, m, v in out]


def capture_attention(model: nn.Module, images: torch.Tensor, *, logits: bool = False) -> dict[int, torch.Tensor]:
    """One batch's attention probabilities of every readable block, ``{layer: (B, H, Tq, Tk)}`` (detached
    copies; with ``logits=True`` the logits the softmax received instead), fused attention switched off for the
    call only; eval mode, no hook left afterwards. The model runs through its PE family (:meth:`Family.run`)."""
    from .inputs import check_images

    fam = view_model(model)
    mods, _ = attention_modules(model)
    images = check_images(images, fam)
    out: dict[int, torch.Tensor] = {}

    def sink(l, lg, p):
        out[l] = (lg if logits else p).detach()

    with eval_inference(model), attention_logits(mods, sink):
        fam.run(images)
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


def logit_term_squares(attn: nn.Module, tok: torch.Tensor, pe: torch.Tensor, n_prefix: int = 0,
                       qk: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(4, H) float64: per head, the sums over images, patch queries and patch keys of the squares of the four
    terms of :func:`logit_terms` ``[cc, cp, pc, pp]`` of the input ``tok + pe`` (``pe`` (1 or B, T, D)), without
    forming any (N, N) term: per image and head, ``sum_ij (q_i . k_j)^2 = <Q^T Q, K^T K>`` (the Frobenius inner
    product of the (hd, hd) Gram matrices of the patch rows of q and k), so each of q_content, k_content, q_pos and
    k_pos is read once into its Gram matrix (float32 products, like the model's own logits; a PE shared by the
    batch gives its two Gram matrices once) and the four inner products are float64. N / hd times fewer products
    than forming the terms (3x for DeiT-Ti), and no (B, H, N, N) temporary; rounding ~1e-7 relative (tested at
    1e-5 against numpy's float64 terms).

    ``qk``: the q and k (B, H, T, hd, biases included) the module itself computed from ``tok + pe`` (read at its
    ``q_norm``/``k_norm``, :func:`own_qk`): the content q and k are then ``q - q_pos`` (a subtraction instead of a
    second projection of the tokens; the same terms to float32 rounding of ``q``)."""
    sl = slice(n_prefix, None)
    qp, kp = (t[:, :, sl] for t in _qk(attn, pe, False))
    if qk is None:
        qc, kc = (t[:, :, sl] for t in _qk(attn, tok, True))
    else:
        # dense (B, H, N, hd) (q and k are views of the module's (B, T, 3, H, hd) projection)
        qc, kc = (torch.sub(t[:, :, sl], p, out=torch.empty(t[:, :, sl].shape, dtype=t.dtype, device=t.device))
                  for t, p in ((qk[0], qp), (qk[1], kp)))

    def gram(t: torch.Tensor) -> torch.Tensor:  # t: patch rows (Q, H, N, hd), dense (a copy of a strided view)
        t = t.contiguous()
        return torch.matmul(t.transpose(-2, -1), t).double()  # (Q, H, hd, hd)

    gqc, gkc, gqp, gkp = gram(qc), gram(kc), gram(qp), gram(kp)
    B = tok.shape[0]

    def squares(gq: torch.Tensor, gk: torch.Tensor) -> torch.Tensor:  # (H,): sum over images of <gq, gk>
        per = (gq * gk).sum((-2, -1))  # (1 or B, H)
        return per.sum(0) * (B if per.shape[0] == 1 else 1)  # a PE shared by the batch: one image's, B times

    return torch.stack([squares(gqc, gkc), squares(gqc, gkp), squares(gqp, gkc), squares(gqp, gkp)]) * \
        (float(attn.scale) ** 2)


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


def _not_splittable(attn: nn.Module) -> str:
    """Why ``attn``'s logits cannot be split into content and position terms ("" when they can)."""
    if not isinstance(getattr(attn, "qkv", None), nn.Linear):
        return f"{type(attn).__name__} has no fused qkv projection"
    if not isinstance(getattr(attn, "q_norm", nn.Identity()), nn.Identity) or \
            not isinstance(getattr(attn, "k_norm", nn.Identity()), nn.Identity):
        return "q and k are normalised (qk_norm): the logits are not bilinear in the input"
    return ""


def own_qk(attn: nn.Module) -> bool:
    """Whether ``attn`` is timm's :class:`~timm.layers.Attention` (its own ``forward``) with identity ``q_norm`` and
    ``k_norm``: their outputs are then the q and k of its logits, (B, H, T, hd) with the biases, so the logit split
    reads them instead of projecting the tokens again (:func:`logit_term_squares`)."""
    return (type(attn).forward is TimmAttention.forward and isinstance(getattr(attn, "q_norm", None), nn.Identity)
            and isinstance(getattr(attn, "k_norm", None), nn.Identity))


def _pe_kinds(fam) -> dict[int, str]:
    """The kind of PE that reaches each block's attention: its own sites' kind (a layer-wise, rotary or bias
    term), block 0 the input PE's where the model adds one; blocks with none are left out (``none``)."""
    kinds: dict[int, str] = {}
    for site in fam.sites("direct"):
        layer = 0 if site.layer == H.INPUT else site.layer
        if layer >= 0:
            kinds.setdefault(layer, site.kind)
    return kinds


def _pad_rows(pe: torch.Tensor, T: int) -> torch.Tensor:
    """``pe`` (Q, T', D) with zero rows in front for the prefix slots it has no row for (T' < T)."""
    if pe.shape[-2] == T:
        return pe
    return torch.cat([pe.new_zeros((*pe.shape[:-2], T - pe.shape[-2], pe.shape[-1])), pe], -2)


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
    trained_on: dict | None = None,
    progress: bool = True,
    run: str | os.PathLike | None = None,
) -> AttentionResult:
    """Stream ``data`` through ``model`` with its attention unfused and return an
    :class:`~pe_probe.core.attention.AttentionResult`: per-head rows ``(site, pe_kind, layer, head, metric, value)``
    and ``meta`` (``n_images``, ``grid``, ``decomposed_layers``, ``not_decomposed`` and ``not_measured``:
    ``{layer: why}``).

    ``data`` as for :func:`pe_probe.probe`; ``run`` is recorded in ``meta``. Every block with global multi-head attention gets
    ``attn_distance``, ``attn_prefix_share`` and ``attn_entropy``. With ``decompose``, also the PE's part of
    the logits where the family's sites define one: the content/position split where the attention input has
    an additive PE term (layer-wise PE blocks; block 0 of models that add the PE to the input, through its
    LayerNorm with the per-token scale frozen), ``logit_bias_share`` at attention-bias sites and
    ``logit_rope_change`` at rotary sites (docs/probe.md). Each module's ``fused_attn`` flag and train flag are
    restored afterwards, also after an error.
    """
    fam = view_model(model)
    options = DataOptions(batch_size=batch_size, max_images=max_images, data_dir=data_dir, mean=mean, std=std,
                          split=split, trained_on=trained_on)
    mods, not_measured = attention_modules(model)
    heads = {m.num_heads for m in mods if m is not None}
    if len(heads) != 1:
        raise CheckpointError(f"blocks have different head counts {sorted(heads)}; attention statistics need one")
    stats = AttentionStats(fam.depth, heads.pop(), fam.grid, fam.num_prefix_tokens)
    sites = fam.sites("direct")
    names: list[str] = []
    pe_layers: list[int] = []
    input_site = None
    bias: dict[int, Any] = {}
    rope: dict[int, Any] = {}
    skipped: dict[int, str] = {}
    if decompose:
        if not fam.pe_derived:
            pe_layers = [l for l in fam.receiving_blocks if mods[l] is not None]
        input_site = next((s for s in sites if s.layer == H.INPUT and s.additive), None)
        if input_site is not None and (0 in pe_layers or mods[0] is None
                                       or not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity)
                                       or not isinstance(getattr(fam.blocks[0], "norm1", None), nn.LayerNorm)):
            if 0 not in pe_layers and mods[0] is not None:
                skipped[0] = "a norm between the input PE and block 0's attention LayerNorm (or none): no split"
            input_site = None
        for l in sorted(set(pe_layers) | ({0} if input_site is not None else set())):
            why = _not_splittable(mods[l])
            if why:
                skipped[l] = why
        pe_layers = [l for l in pe_layers if l not in skipped]
        if 0 in skipped:
            input_site = None
        names += [H.block_hook(l, H.TOK) for l in pe_layers] + [H.block_hook(l, H.PE) for l in pe_layers]
        if input_site is not None:
            names += [H.block_hook(0, H.RESID_PRE), input_site.name]
        bias = {s.layer: s for s in sites if s.kind == "attn_bias" and s.layer >= 0 and mods[s.layer] is not None}
        rope = {s.layer: mods[s.layer] for s in sites if s.kind == "rotary" and s.layer >= 0
                and mods[s.layer] is not None and hasattr(mods[s.layer], "q_norm") and hasattr(mods[s.layer], "k_norm")}
    derived = {n: fn for n, fn in fam.derived().items() if n in names}
    stream = stream_data(data, fam, options, desc="attention", progress=progress, sharded=False, labels=False)
    terms: dict[int, torch.Tensor] = {}  # attention-bias terms of the forward in progress
    qk: dict[tuple[int, str], torch.Tensor] = {}  # q and k of the forward in progress (rotary blocks: unrotated)

    def sink(l, logits, probs):
        stats.add_probs(l, probs, logits)
        if l in bias and l in terms and stats.fits(l, probs):
            stats.add_ratio(l, "logit_bias_share", terms.pop(l), logits)
        if l in rope and (l, "q") in qk and stats.fits(l, probs):
            q, k = qk.pop((l, "q")), qk.pop((l, "k"))
            plain = (q * rope[l].scale) @ k.transpose(-2, -1)
            stats.add_ratio(l, "logit_rope_change", logits - plain, logits)

    split = pe_layers + ([0] if input_site is not None else [])  # the blocks whose logits are split
    own = {l for l in split if own_qk(mods[l])}  # split from the q and k the module computes (the rest: its tokens)
    store: dict[str, torch.Tensor] = {}
    done: set[int] = set()  # blocks of the batch in progress already split

    def split_block(l: int, q_k: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        npre = fam.num_prefix_tokens
        if l in pe_layers:
            tok, pe = store[H.block_hook(l, H.TOK)], store[H.block_hook(l, H.PE)]
        else:  # block 0 of a model with an input PE: through its LayerNorm, the per-token scale frozen
            x0 = store[H.block_hook(0, H.RESID_PRE)]
            pos = _pad_rows(store[input_site.name], x0.shape[1])
            tok, pe = split_input_ln(fam.blocks[0].norm1, x0, pos.expand_as(x0))
        stats.add_term_squares(l, logit_term_squares(mods[l], tok, pe, npre, q_k),
                               tok.shape[0] * (tok.shape[1] - npre) ** 2)
        done.add(l)

    def got_k(l: int, k: torch.Tensor) -> None:
        """A read block's k (its q came first): kept for the rotary ratio at the softmax, or used for the split now,
        while the block runs (nothing of it kept to the end of the batch)."""
        if l in own and (l, "q") in qk:
            split_block(l, (qk[(l, "q")] if l in rope else qk.pop((l, "q")), k))
        if l in rope:
            qk[(l, "k")] = k

    handles = []
    with eval_inference(model):
        fixed = {name: fn() for name, fn in derived.items()}  # image-independent, before any hook exists
        try:
            for l, s in bias.items():
                handles.append(s.module.register_forward_hook(lambda m, a, out, l=l: terms.__setitem__(l, out)))
            for l in sorted(set(rope) | own):  # q and k read where the module computes them
                handles.append(mods[l].q_norm.register_forward_hook(lambda m, a, out, l=l: qk.__setitem__((l, "q"), out)))
                handles.append(mods[l].k_norm.register_forward_hook(lambda m, a, out, l=l: got_k(l, out)))
            with attention_logits(mods, sink), recording(fam, [x for x in names if x not in fixed]) as rec, stream:
                store = rec
                for images, _ in stream:
                    store.clear()
                    store.update(fixed)
                    done.clear()
                    qk.clear()
                    fam.run(images)
                    for l in split:
                        if l not in done:  # a block whose own q and k are not read: from its tokens
                            split_block(l)
        finally:
            for h in handles:
                h.remove()
    n = stream.n_images
    if n == 0:
        raise DataError("the data yielded no images")
    not_measured = {**not_measured, **stats.skipped}
    if len(not_measured) == fam.depth:
        raise CheckpointError(f"{type(model).__name__}: no block has global attention over its tokens "
                              f"({next(iter(not_measured.values()))}); attention statistics need it")
    meta = {"run": "" if run is None else str(run), "n_images": n, "grid": list(fam.grid), "num_prefix_tokens": fam.num_prefix_tokens,
            "heads": stats.heads, "family": fam.name, "decomposed_layers": sorted(stats.decomposed),
            "ratio_layers": {str(l): m for l, m in sorted(stats.ratio.items())},
            "not_decomposed": {str(l): why for l, why in skipped.items()},
            "not_measured": {str(l): why for l, why in sorted(not_measured.items())}}
    return AttentionResult(stats.rows(_pe_kinds(fam)), meta)
