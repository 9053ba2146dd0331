"""Exact running statistics over a stream of batches (float64 sums, never stored activations).

The state has a fixed size set by the model (tokens T, width D, depth L) and ``n_norm_maps`` (K): it does
not grow with the number of images, and sums do not depend on how the images are split into batches.

How a batch is added (kept cheap so probing costs little more than the forward pass, see BENCHMARKS.md):
each layer's (B, T, D) activations are read a few times in their own dtype, never copied or converted,
and reduced right away to small partials: the batch sum (T, D) and, per token, norms, channel sums and
the dot product with the PE (B, T). With :meth:`RunningStats.feed` this happens inside the forward hooks,
while the tensors are still in the CPU cache. Once the batch is complete the partials of all layers are
stacked and turned into the statistics in float64 with a fixed number of vectorised operations. The
full-size passes run on torch's intra-op threads, like the forward pass's own operations; on CPU the
small float64 step runs on one (see ``_one_cpu_thread``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, NamedTuple

import numpy as np
import torch

from ..core import hook_points as H
from ..core.hook_points import LAST, layer_hooks
from .adapter import ModelView


def _norms(x: torch.Tensor, scratch: "Scratch | None" = None) -> torch.Tensor:
    """Euclidean norms along the last dimension (a new tensor); see :func:`_norms_into`."""
    out = torch.empty(x.shape[:-1], dtype=x.dtype, device=x.device)
    _norms_into(x, out, Scratch() if scratch is None else scratch)
    return out


class Scratch:
    """Reused buffers for full-size temporaries (per-token products), one per shape, layout, dtype and device.

    A fresh (B, T, D) temporary is a 4.8 MB allocation (DeiT-Ti, batch 32) several times per block; a
    buffer reused across layers and batches is allocated once. Buffers are created in inference mode and
    only used there.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """A buffer with ``x``'s shape, strides, dtype and device (contents undefined)."""
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        buf = self._bufs.get(key)
        if buf is None:
            if len(self._bufs) >= 4:  # shapes change (a last, smaller batch): keep the newest only
                self._bufs.clear()
            buf = self._bufs[key] = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        return buf


class Partials:
    """One batch's per-layer reductions, written in place (``out=``) into buffers reused batch after batch.

    Rows follow :attr:`RunningStats.layers` (``tok_sum`` (L + 1, T, D), ``tok_norm``/``resid_norm``
    (L + 1, B, T)) and :attr:`RunningStats.pe_layers` (``dot``/``chan`` (P, B, T), ``pes``: the PE tensors).
    Writing into fixed buffers keeps the probe's allocations out of the forward pass after the first
    batch, and the float64 step reads whole stacks instead of stacking per-layer tensors.
    """

    def __init__(self, L: int, P: int, B: int, T: int, D: int, dtype: torch.dtype, device: torch.device) -> None:
        e = lambda *shape: torch.empty(shape, dtype=dtype, device=device)  # noqa: E731
        self.key = (B, T, D, device)
        self.dtype = dtype
        self.tok_sum, self.tok_norm, self.resid_norm = e(L, T, D), e(L, B, T), e(L, B, T)
        self.dot, self.chan = e(P, B, T), e(P, B, T)
        self.pes: list[torch.Tensor | None] = [None] * P


def _norms_into(x: torch.Tensor, out: torch.Tensor, scratch: Scratch) -> None:
    """Euclidean norms of ``x`` along its last dimension, written into ``out``, fast for either memory layout.

    ``vector_norm`` is fast when the last dimension is contiguous, but about 20x slower (6 ms instead of
    0.3 ms for a DeiT-Ti batch of 32 on one CPU thread) when it is strided. That is the layout of a ViT's
    residual stream whenever no class token is concatenated: timm's patch embedding returns
    ``conv(x).flatten(2).transpose(1, 2)`` and every residual add keeps its (B, D, T) memory order. The
    sum of squares (into a ``scratch`` buffer) reads either layout at memory speed and rounds no worse.
    """
    if x.stride(-1) == 1 or x.shape[-1] == 1:
        torch.linalg.vector_norm(x, dim=-1, out=out)
    else:
        torch.sum(torch.mul(x, x, out=scratch.like(x)), -1, out=out).sqrt_()


@contextlib.contextmanager
def _one_cpu_thread(x: torch.Tensor) -> Iterator[None]:
    """Run the small float64 step of a CPU batch on one intra-op thread (restored afterwards).

    It is a few dozen short, memory-bound operations per batch; with several threads each one is an
    OpenMP parallel region whose join waits for every worker, and on a busy machine (more runnable
    threads than cores) a descheduled worker makes each such join cost a scheduler slice (~4-8 ms,
    measured on a shared 2-core VM). On one thread they cost their compute only. See BENCHMARKS.md.
    """
    n = torch.get_num_threads()
    if x.device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _working(x: torch.Tensor) -> torch.Tensor:
    """An activation in a dtype fit for per-token reductions: float32/float64 as is, half precisions as float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _add_moments(mom: torch.Tensor, values: torch.Tensor) -> None:
    """``mom`` = [count, sum, sum of squares(, min, max)] updated in place with ``values`` (float64)."""
    values = values.reshape(-1)
    mom[0] += values.numel()
    mom[1] += values.sum()
    mom[2] += (values * values).sum()
    if mom.numel() == 5 and values.numel():
        mom[3] = torch.minimum(mom[3], values.min())
        mom[4] = torch.maximum(mom[4], values.max())


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension (broadcasting); 0/0 gives NaN."""
    return (x * y).sum(-1) / (_norms(x) * _norms(y))


class PETerms(NamedTuple):
    """What the statistics need from the PEs of all P PE layers, stacked (each PE is (Q, T, D), Q = 1 or B).

    ``sum``/``norm_sum``: (P, T, D)/(P, T) float64 sums over each PE's Q rows; ``norm``: (P, Q, T) row
    norms; ``rows``: (P, T) the rows that have a PE (finite); ``mean``/``var``: (P, Q) mean and population
    variance over those rows x D entries; ``entries``: (P,) their number.
    """

    sum: torch.Tensor
    norm_sum: torch.Tensor
    norm: torch.Tensor
    rows: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    entries: torch.Tensor


def pe_terms(pes: torch.Tensor) -> PETerms:
    """:class:`PETerms` of ``pes``, the (P, Q, T, D) float64 stack of the PE layers' PEs."""
    D = pes.shape[-1]
    norm = torch.linalg.vector_norm(pes, dim=-1)
    rows = torch.isfinite(pes[:, 0]).all(-1)  # prefix rows without a PE row are NaN (derived PEs only)
    keep = rows[:, None, :, None]
    entries = rows.sum(-1).to(pes.dtype) * D
    mean = torch.where(keep, pes, 0.0).sum((2, 3)) / entries[:, None]
    var = torch.where(keep, (pes - mean[..., None, None]).square(), 0.0).sum((2, 3)) / entries[:, None]
    return PETerms(sum=pes.sum(1), norm_sum=norm.sum(1), norm=norm, rows=rows, mean=mean, var=var,
                   entries=entries)


class RunningStats:
    """Per-layer running sums for :func:`pe_probe.probe`.

    Per block l (and the Last LN, layer -1), over images b and tokens t:
    sums of the token map ``tok[b]`` (T, D), of per-token norms of tokens and residual stream (T,), and
    where the layer has a PE: sums of the PE map and its row norms, of per-token cosines ``cos(tok[b,t], pe[t])``
    (T,) with their moments, and moments (count, sum, sum of squares, min, max) of the per-image Pearson
    correlation between ``tok[b]`` and ``pe`` over the rows that have a PE. For the Last LN also the
    per-image cosine between the pooled ``x_L`` and the pooled Last-LN output (with and without the PE),
    and the per-token norm maps of the first ``n_norm_maps`` images.

    Per-layer sums are stacked in the state: ``tok_sum`` (L + 1, T, D) in the order of :attr:`layers`
    (blocks, then the Last LN); ``pe_sum`` (P, T, D) and the other PE sums in the order of :attr:`pe_layers`.
    Models whose PE family is not ``uniform`` (token count or width changing along the depth: Swin, Twins,
    Hiera) get the universal sums only, one float64 state entry per layer of its own shape (``tok_sum@{l}``,
    ``tok_norm_sum@{l}``, ``resid_norm_sum@{l}``, created on the first batch), and models without a Last LN
    (``final_norm`` None: ``fc_norm`` heads) no Last-LN entries; :attr:`layers` then ends at the last block.
    Either way :attr:`state` is a dict of float64 tensors.

    Precision: per-token reductions over the D channels run in the activations' float32, everything
    after that in float64, so results equal the all-float64 formulas to float32 rounding. The per-image
    Pearson correlation is ``(E[tok pe] - E[tok] E[pe]) / (std(tok) std(pe))`` with ``var(tok) = E[tok^2] -
    E[tok]^2``, whose rounding error is scaled by ``1 + E[tok]^2 / var(tok)`` (about 1 for LayerNorm outputs).
    """

    def __init__(self, view: ModelView, n_norm_maps: int = 8) -> None:
        if not isinstance(n_norm_maps, int) or n_norm_maps < 0:
            raise ValueError(f"n_norm_maps must be an int >= 0, got {n_norm_maps!r}")
        self.view = view
        self.n_norm_maps = n_norm_maps
        self.last_ln = view.final_norm is not None  # models that normalise after pooling have no Last LN
        self.layers: list[int] = list(range(view.depth)) + ([LAST] if self.last_ln else [])
        self.has_pe = {l: l in view.receiving_blocks for l in range(view.depth)}
        self.has_pe[LAST] = self.last_ln and view.last_ln_pe is not None
        self.pe_layers: list[int] = [l for l in self.layers if self.has_pe[l]]
        #: whether every layer's stream is (B, T, D) with one T and D (stacked state); else one state entry per
        #: layer (``tok_sum@{l}``, ...), the universal quantities only
        self.uniform = bool(getattr(view, "uniform", True))
        if not self.uniform and self.pe_layers:
            raise ValueError("a family with varying token counts or widths cannot declare additive per-layer PEs "
                             "(receiving_blocks / last_ln_pe)")
        self.n_images = 0
        self.n_maps = 0
        self.state: dict[str, torch.Tensor] | None = None
        self._pe_cache: tuple[list[torch.Tensor], PETerms] | None = None  # (the PEs, their terms)
        self._row = {l: i for i, l in enumerate(self.layers)}
        self._pe_row = {l: j for j, l in enumerate(self.pe_layers)}
        self._parts: Partials | None = None  # reductions of the batch in progress
        self._scratch = Scratch()
        self._batch = 0  # images in the batch in progress

    # ------------------------------------------------------------------ hook names this needs
    def hook_names(self) -> list[str]:
        """The hook names whose tensors :meth:`update` reads."""
        names = []
        for l in self.layers:
            names += list(self._layer_names(l))
        return names

    def _layer_names(self, l: int) -> tuple[str, ...]:
        """Layer ``l``'s hook names: (residual stream, tokens) plus the PE where the layer has one."""
        return layer_hooks(l, self.has_pe[l]).names()

    def _init(self, device: torch.device) -> None:
        if device.type == "mps":  # no float64 there
            device = torch.device("cpu")
        if not self.uniform:
            self.state = {}  # filled per layer as shapes are seen (_reduce_layer)
            return
        T, D, K = self.view.num_tokens, self.view.embed_dim, self.n_norm_maps
        N = T - self.view.num_prefix_tokens
        L, P = len(self.layers), len(self.pe_layers)
        z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        corr = z(P, 5)
        corr[:, 3], corr[:, 4] = math.inf, -math.inf
        self.state = {
            "tok_sum": z(L, T, D), "tok_norm_sum": z(L, T), "resid_norm_sum": z(L, T),
            "pe_sum": z(P, T, D), "pe_norm_sum": z(P, T), "cos_tok_sum": z(P, T), "cos_mom": z(P, 3), "corr_mom": corr,
            "out_norm_sum": z(T), "cos_ba_mom": z(3), "cos_ba_ln_mom": z(3), "norm_before": z(K, N), "norm_after": z(K, N),
        }

    def state_nbytes(self) -> int:
        """Bytes held by the accumulators (fixed once the first batch has been seen)."""
        return 0 if self.state is None else sum(t.numel() * t.element_size() for t in self.state.values())

    # ------------------------------------------------------------------ streaming
    def _pe_side(self, pes: list[torch.Tensor], B: int) -> PETerms:
        """The image-independent side of the PE layers' PEs, recomputed only when the PEs change.

        In eval mode every batch sees the same PEs (derived PEs are even the same tensors), so this costs
        an identity check or a ``torch.equal`` per layer and batch instead of a dozen small operations per
        layer.
        """
        hit = self._pe_cache
        if hit is not None and len(hit[0]) == len(pes) and all(
                a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)) for a, b in zip(hit[0], pes)):
            terms = hit[1]
        else:
            Q = pes[0].shape[0] if all(pe.shape[0] == pes[0].shape[0] for pe in pes) else B
            stack = torch.stack([pe.expand(Q, -1, -1) for pe in pes])
            terms = pe_terms(stack.to(device=self.state["tok_sum"].device, dtype=torch.float64))
        self._pe_cache = (list(pes), terms)
        return terms

    def _partials(self, tok: torch.Tensor) -> Partials:
        """The batch's partial buffers for activations like ``tok`` (reused while B, T, D and device stay; their
        dtype is that of the first activations seen)."""
        B, T, D = tok.shape
        parts = self._parts
        if parts is None or parts.key != (B, T, D, tok.device):
            parts = self._parts = Partials(len(self.layers), len(self.pe_layers), B, T, D, tok.dtype, tok.device)
        return parts

    def _reduce(self, l: int, tok: torch.Tensor, resid: torch.Tensor, pe: torch.Tensor | None) -> None:
        """The passes over layer ``l``'s (B, T, D) ``tok`` and ``resid`` (and its (1 or B, T, D) ``pe``)."""
        if self.state is None:
            self._init(tok.device)
        self._batch = tok.shape[0]
        if not self.uniform:
            self._reduce_layer(l, tok, resid)
            return
        parts = self._partials(tok)
        tok, resid = tok.to(parts.dtype), resid.to(parts.dtype)  # no copy unless a layer differs from the first
        i = self._row[l]
        torch.sum(tok, 0, out=parts.tok_sum[i])
        _norms_into(tok, parts.tok_norm[i], self._scratch)
        _norms_into(resid, parts.resid_norm[i], self._scratch)
        if pe is not None:
            j = self._pe_row[l]
            pe = pe.to(device=tok.device, dtype=tok.dtype)  # no copy in the usual case
            prod = torch.mul(tok, pe, out=self._scratch.like(tok))  # NaN rows are masked later
            torch.sum(prod, -1, out=parts.dot[j])
            torch.sum(tok, -1, out=parts.chan[j])
            parts.pes[j] = pe

    def _reduce_layer(self, l: int, tok: torch.Tensor, resid: torch.Tensor) -> None:
        """The universal sums of layer ``l`` straight into float64 state entries of its own shape (families whose
        token count or width changes along the depth: ``tok_sum@{l}`` (T_l, D_l), ``tok_norm_sum@{l}``,
        ``resid_norm_sum@{l}`` (T_l))."""
        s = self.state
        key = f"tok_sum@{l}"
        if key not in s:
            dev = tok.device if tok.device.type != "mps" else torch.device("cpu")
            z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=dev)  # noqa: E731
            s[key], s[f"tok_norm_sum@{l}"] = z(*tok.shape[1:]), z(tok.shape[1])
            s[f"resid_norm_sum@{l}"] = z(resid.shape[1])
        dev = s[key].device
        s[key] += tok.sum(0).to(device=dev, dtype=torch.float64)
        s[f"tok_norm_sum@{l}"] += _norms(tok, self._scratch).to(device=dev, dtype=torch.float64).sum(0)
        s[f"resid_norm_sum@{l}"] += _norms(resid, self._scratch).to(device=dev, dtype=torch.float64).sum(0)

    def _layer(self, l: int, store: dict[str, torch.Tensor]) -> None:
        """Reduce layer ``l`` of the batch in ``store``."""
        names = self._layer_names(l)
        pe = _working(store[names[2]]) if len(names) > 2 else None
        self._reduce(l, _working(store[names[1]]), _working(store[names[0]]), pe)

    def _finish(self, B: int) -> None:
        """Turn the partials of every layer of a B-image batch into float64 sums (stacked over layers)."""
        s, parts = self.state, self._parts
        dev = s["tok_sum"].device
        f64 = lambda x: x.to(device=dev, dtype=torch.float64)  # noqa: E731
        s["tok_sum"] += parts.tok_sum.to(dev)
        tok_norm = f64(parts.tok_norm)  # (L + 1, B, T)
        s["tok_norm_sum"] += tok_norm.sum(1)
        s["resid_norm_sum"] += f64(parts.resid_norm).sum(1)
        if self.pe_layers:
            pt = self._pe_side(parts.pes, B)
            scale = B if pt.norm.shape[1] == 1 else 1  # a PE shared by the batch counts once per image
            s["pe_sum"] += pt.sum * scale
            s["pe_norm_sum"] += pt.norm_sum * scale
            rows = pt.rows[:, None]  # (P, 1, T)
            pe_norm = pt.norm  # (P, 1 or B, T)
            pe_mean, pe_var = pt.mean, pt.var  # (P, 1 or B)
            entries = pt.entries[:, None]
            tn = tok_norm[[self._row[l] for l in self.pe_layers]]  # (P, B, T)
            dot = f64(parts.dot)
            keep = lambda x: torch.where(rows, x, 0.0)  # noqa: E731  (rows without a PE drop out)
            cos = keep(dot / (tn * pe_norm))  # (P, B, T): cos(tok[b, t], pe[t])
            s["cos_tok_sum"] += cos.sum(1)
            mom = s["cos_mom"]
            mom[:, 0] += rows.sum((1, 2)) * B
            mom[:, 1] += cos.sum((1, 2))
            mom[:, 2] += cos.square().sum((1, 2))
            tok_mean = keep(f64(parts.chan)).sum(2) / entries  # (P, B), over the rows x D entries
            tok_var = keep(tn.square()).sum(2) / entries - tok_mean.square()
            cov = keep(dot).sum(2) / entries - tok_mean * pe_mean
            r = cov / torch.sqrt(tok_var * pe_var)  # (P, B): per-image Pearson correlation
            mom = s["corr_mom"]
            mom[:, 0] += B
            mom[:, 1] += r.sum(1)
            mom[:, 2] += r.square().sum(1)
            mom[:, 3] = torch.minimum(mom[:, 3], torch.amin(r, 1))
            mom[:, 4] = torch.maximum(mom[:, 4], torch.amax(r, 1))
        parts.pes = [None] * len(parts.pes)  # the PE tensors are not kept past the batch

    def feed(self) -> BatchFeed:
        """A store for :func:`~pe_probe.probing.hooks.recording` that reduces each block as the forward pass fills it.

        Call ``feed.reset(derived)`` before each forward pass and :meth:`update` ``(feed)`` after it. A block
        is reduced as soon as its tensors are in, while they are still in the CPU cache, and its tensors are
        dropped then, so the probe holds about one block's activations at a time.
        """
        return BatchFeed(self)

    @torch.inference_mode()
    def update(self, store: dict[str, torch.Tensor]) -> None:
        """Add one batch of captured activations (as returned by :func:`pe_probe.capture` for :meth:`hook_names`,
        or a :meth:`feed` after the forward pass)."""
        done = store.done if isinstance(store, BatchFeed) and store.stats is self else ()
        v = self.view
        # full-size passes, on torch's threads like the forward's own operations
        for l in range(v.depth):
            if l not in done:
                self._layer(l, store)
        if not self.last_ln:  # no norm on every token before pooling: the blocks' statistics only
            B = self._batch
            with _one_cpu_thread(store.get(H.block_hook(v.depth - 1, H.RESID_PRE), torch.empty(0))):
                if self.uniform:
                    self._finish(B)
            self.n_images += B
            return
        last = layer_hooks(LAST, self.has_pe[LAST])
        x_l, ln_out = _working(store[last.resid]), _working(store[last.tok])
        last_pe = _working(store[last.pe]) if last.pe else None
        self._reduce(LAST, ln_out, x_l, last_pe)
        B, npt = x_l.shape[0], v.num_prefix_tokens
        out = ln_out if last_pe is None else ln_out + last_pe
        out_norm = _norms(out)
        pooled = v.pool(x_l), v.pool(out), v.pool(ln_out)  # the model's own pooling (class token, mean, map, ...)
        take = max(0, min(self.n_norm_maps - self.n_maps, B))
        maps = (_norms(x_l[:take, npt:], self._scratch), _norms(out[:take, npt:])) if take else ()
        # the small float64 step (a few dozen short operations) on one thread
        with _one_cpu_thread(x_l):
            if self.uniform:
                self._finish(B)
            s = self.state
            if "out_norm_sum" not in s:  # per-layer state: the Last-LN entries once its shape is known
                K, N = self.n_norm_maps, out.shape[1] - npt
                z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=s[f"tok_sum@{LAST}"].device)  # noqa: E731
                s.update(out_norm_sum=z(out.shape[1]), cos_ba_mom=z(3), cos_ba_ln_mom=z(3), norm_before=z(K, N),
                         norm_after=z(K, N))
            dev = s["out_norm_sum"].device
            f64 = lambda x: x.to(device=dev, dtype=torch.float64)  # noqa: E731
            s["out_norm_sum"] += f64(out_norm).sum(0)
            before, after, after_ln = (f64(p) for p in pooled)
            _add_moments(s["cos_ba_mom"], cosine(before, after))
            _add_moments(s["cos_ba_ln_mom"], cosine(before, after_ln))
            if take:
                s["norm_before"][self.n_maps:self.n_maps + take] = f64(maps[0])
                s["norm_after"][self.n_maps:self.n_maps + take] = f64(maps[1])
                self.n_maps += take
            self.n_images += B

    # ------------------------------------------------------------------ results
    def arrays(self) -> dict[str, np.ndarray]:
        """Means and moments as float64 numpy arrays, keyed as :class:`pe_probe.core.report.ProbeReport` stores them."""
        if self.state is None or self.n_images == 0:
            raise ValueError("no images were probed")
        n = float(self.n_images)
        s = {k: t.detach().cpu().numpy() for k, t in self.state.items()}
        out: dict[str, np.ndarray] = {}
        for i, l in enumerate(self.layers):
            if not self.uniform:
                for name in ("tok_map", "tok_norm", "resid_norm"):
                    key = "tok_sum" if name == "tok_map" else f"{name}_sum"
                    out[f"{name}@{l}"] = s[f"{key}@{l}"] / n
                continue
            out[f"tok_map@{l}"] = s["tok_sum"][i] / n
            out[f"tok_norm@{l}"] = s["tok_norm_sum"][i] / n
            out[f"resid_norm@{l}"] = s["resid_norm_sum"][i] / n
            if self.has_pe[l]:
                j = self.pe_layers.index(l)
                pe_map = s["pe_sum"][j] / n
                out[f"pe_map@{l}"] = pe_map
                out[f"pe_norm@{l}"] = s["pe_norm_sum"][j] / n
                rows = np.isfinite(pe_map).all(-1)
                out[f"tok_pe_cos@{l}"] = np.where(rows, s["cos_tok_sum"][j] / n, np.nan)
                out[f"cos_moments@{l}"] = _finish(s["cos_mom"][j])
                out[f"corr_img@{l}"] = _finish(s["corr_mom"][j])
        out.update(self.view.static_arrays())
        if not self.last_ln:
            return out
        out[f"out_norm@{LAST}"] = s["out_norm_sum"] / n
        out["last_cos"] = _finish(s["cos_ba_mom"])
        out["last_cos_ln"] = _finish(s["cos_ba_ln_mom"])
        before, after = s["norm_before"][: self.n_maps], s["norm_after"][: self.n_maps]
        h, w = getattr(self.view, "final_grid", None) or self.view.grid
        if before.shape[1] == h * w:  # per-token norm maps on the patch grid (flat where the last grid differs)
            before, after = before.reshape(self.n_maps, h, w), after.reshape(self.n_maps, h, w)
        out["norm_before"], out["norm_after"] = before, after
        norm = self.view.last_norm
        D = out[f"tok_map@{LAST}"].shape[-1]
        w_, b_ = getattr(norm, "weight", None), getattr(norm, "bias", None)
        out["last_ln_gamma"] = np.ones(D) if w_ is None else w_.detach().double().cpu().numpy()
        out["last_ln_beta"] = np.zeros(D) if b_ is None else b_.detach().double().cpu().numpy()
        return out


def _finish(mom: np.ndarray) -> np.ndarray:
    """[count, sum, sumsq(, min, max)] -> [count, mean, mean of squares(, min, max)]."""
    res = mom.astype(np.float64).copy()
    if res[0] > 0:
        res[1:3] /= res[0]
    else:
        res[1:] = np.nan
    return res


class BatchFeed(dict):
    """The dict the recording hooks fill during one forward pass, wired to a :class:`RunningStats`.

    When the last tensor of block ``l`` arrives (``__setitem__``, called by the hooks) the block is
    reduced and its tensors are removed; :meth:`RunningStats.update` then adds the rest of the batch (the
    Last LN and any block not seen). ``reset(derived)`` starts the next batch with the image-independent
    derived tensors (added with ``dict.update``, which triggers nothing).
    """

    def __init__(self, stats: RunningStats) -> None:
        super().__init__()
        self.stats = stats
        self.done: set[int] = set()
        self._layer_of = {n: l for l in range(stats.view.depth) for n in stats._layer_names(l)}

    def reset(self, derived: dict[str, torch.Tensor] | None = None) -> None:
        """Empty the feed for the next batch, then add ``derived`` (without triggering any reduction)."""
        self.clear()
        self.done.clear()
        if derived:
            self.update(derived)

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        super().__setitem__(name, value)
        l = self._layer_of.get(name)
        if l is None or l in self.done:
            return
        names = self.stats._layer_names(l)
        if all(n in self for n in names):
            with torch.inference_mode():
                self.stats._layer(l, self)
            self.done.add(l)
            for n in names:
                del self[n]
