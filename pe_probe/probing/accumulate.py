"""Exact running statistics over a stream of batches (float64 sums, never stored activations).

The state has a fixed size set by the model (tokens T, width D, depth L) and ``n_norm_maps`` (K): it does
not grow with the number of images, and sums do not depend on how the images are split into batches.

How a batch is added (kept cheap so probing costs little more than the forward pass, see BENCHMARKS.md):
each layer's (B, T, D) activations are read a few times in their own dtype, never copied or converted,
and reduced right away to small partials: the batch sum (T, D) and, per token, norms, channel sums and
the dot product with the PE (B, T). With :meth:`RunningStats.feed` this happens inside the forward hooks,
while the tensors are still in the CPU cache. Once the batch is complete the partials of all layers are
stacked and turned into the statistics in float64 with a fixed number of vectorised operations (the square
roots of norms taken as sums of squares are deferred to that step too, one op per ring). The
full-size passes run on torch's intra-op threads, like the forward pass's own operations; on CPU the
small float64 step runs on one (see ``_one_cpu_thread``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import warnings
from typing import Iterator, NamedTuple

import numpy as np
import torch

from ..core import hook_points as H
from ..core.hook_points import LAST, layer_hooks
from ..core.vocab import STATS_BACKENDS
from .adapter import ModelView


def _norms(x: torch.Tensor, scratch: "Scratch | None" = None) -> torch.Tensor:
    """Euclidean norms along the last dimension (a new tensor); see :func:`_norms_into`."""
    out = torch.empty(x.shape[:-1], dtype=x.dtype, device=x.device)
    _norms_into(x, out, Scratch() if scratch is None else scratch)
    return out


class Scratch:
    """Reused buffers for full-size temporaries (per-token products), one per role, shape, layout, dtype and device.

    A fresh (B, T, D) temporary is a 4.8 MB allocation (DeiT-Ti, batch 32) several times per block; a
    buffer reused across layers and batches is allocated once. A buffer keeps the strides of the tensor it is
    made like, so a pass writing it keeps that tensor's memory order (a pass that reorders a (B, D, T)-ordered
    stream costs several times one that does not). Buffers are created in inference mode and only used there.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def like(self, x: torch.Tensor, role: str = "") -> torch.Tensor:
        """A buffer with ``x``'s shape, dtype, device and strides (``empty_like``: dense in ``x``'s memory order where ``x``
        is a view with gaps or broadcast dimensions; contents undefined); ``role`` tells apart two temporaries alive
        at once that have the same shape."""
        key = (role, tuple(x.shape), x.stride(), x.dtype, x.device)
        buf = self._bufs.get(key)
        if buf is None:
            if len(self._bufs) >= 4:  # shapes change (a last, smaller batch): keep the newest only
                self._bufs.clear()
            buf = self._bufs[key] = torch.empty_like(x)  # x's strides; dense in x's order if x has gaps or overlaps
        return buf


class Partials:
    """Per-layer reductions of the last few batches, written in place (``out=``) into buffers reused batch after batch.

    A ring of ``slots`` batches of B images: ``tok_norm``/``resid_norm`` (slots, L + 1, B, T) in the order of
    :attr:`RunningStats.layers`, ``dot``/``chan`` (slots, P, B, T) in the order of :attr:`RunningStats.pe_layers`,
    for the Last LN ``out_norm`` (slots, B, T) and the pooled vectors ``pool`` (slots, 3, B, D), and the float64
    row norms and row sums of the batch's PEs ``pe_norm``/``pe_rowsum`` (slots, P, 1, T), so the PEs may change
    from batch to batch. Batch k of a run of batches is written into slot ``hi``; the float64 step
    (:meth:`RunningStats.flush`) then turns the pending slots ``lo:hi`` into float64 sums all at once, so its few
    dozen small ops are paid once per ``slots`` batches instead of once per batch. ``tok_sum`` (L + 1, T, D) and
    the PE sum are added to the state every batch (one op each). A batch with a PE per image is finished on its
    own (after the pending slots). Writing into fixed buffers keeps the probe's allocations out of the forward
    pass after the first batch.
    """

    def __init__(self, L: int, P: int, B: int, T: int, D: int, dtype: torch.dtype, device: torch.device,
                 slots: int = 1, state_device: torch.device | None = None) -> None:
        e = lambda *shape: torch.empty(shape, dtype=dtype, device=device)  # noqa: E731
        e64 = lambda *shape: torch.empty(shape, dtype=torch.float64, device=state_device or device)  # noqa: E731
        self.key = (B, T, D, device)
        self.dtype, self.B, self.slots = dtype, B, slots
        self.tok_sum = e(L, T, D)
        self.tok_norm, self.resid_norm = e(slots, L, B, T), e(slots, L, B, T)
        self.dot, self.chan = e(slots, P, B, T), e(slots, P, B, T)
        self.out_norm, self.pool = e(slots, B, T), e(slots, 3, B, D)
        self.pe_norm, self.pe_rowsum = e64(slots, P, 1, T), e64(slots, P, 1, T)  # a PE shared by the batch (Q = 1)
        self.pes: list[torch.Tensor | None] = [None] * P
        self.pe_stack: torch.Tensor | None = None  # the stacked path's (P, Q, T, D) PEs of the batch
        self.lo = self.hi = 0  # pending slots lo:hi (written, not yet in the float64 state)
        #: per slot, the rows of ``tok_norm`` / ``resid_norm`` that still hold squared norms (the square roots are
        #: taken once per ring, before the float64 step: :meth:`RunningStats._unsquare`)
        self.squared = [{"tok_norm": set(), "resid_norm": set()} for _ in range(slots)]
        # per-slot and per-layer views made once (indexing per batch would dispatch an op per row and layer)
        keys = ("tok_norm", "resid_norm", "dot", "chan", "out_norm", "pool", "pe_norm", "pe_rowsum")
        self.slot = [{k: getattr(self, k)[i] for k in keys} for i in range(slots)]
        tok_rows = list(self.tok_sum.unbind(0))
        self.rows = [{"tok_sum": tok_rows, **{k: list(self.slot[i][k].unbind(0)) for k in keys[:4]}}
                     for i in range(slots)]


#: ``stats_backend="compile"``: also fuse each layer's float32 passes (:func:`layer_partials`; the same numbers to
#: float32 rounding). False compiles the float64 step alone (the eager report to 1e-12, as the tests check).
FUSED_LAYERS = True

#: Images per ring of :class:`Partials` (the float64 step runs once per ``min(16, max(1, RING_IMAGES // B))``
#: batches of B images).
RING_IMAGES = 512


def _as(x: torch.Tensor, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """``x`` in ``dtype`` (and on ``device``): ``x`` itself, without dispatching an op, when it already is."""
    if x.dtype == dtype and (device is None or x.device == device):
        return x
    return x.to(device=x.device if device is None else device, dtype=dtype)


def _norms_into(x: torch.Tensor, out: torch.Tensor, scratch: Scratch, sqrt: bool = True) -> bool:
    """Euclidean norms of ``x`` along its last dimension, written into ``out``, fast for either memory layout.

    ``vector_norm`` is fast when the last dimension is contiguous, but about 20x slower (6 ms instead of
    0.3 ms for a DeiT-Ti batch of 32 on one CPU thread) when it is strided. That is the layout of a ViT's
    residual stream whenever no class token is concatenated: timm's patch embedding returns
    ``conv(x).flatten(2).transpose(1, 2)`` and every residual add keeps its (B, D, T) memory order. The
    sum of squares (into a ``scratch`` buffer) reads either layout at memory speed and rounds no worse.

    ``sqrt=False``: on that strided path ``out`` is left holding the squared norms and True is returned, so the
    caller can take the (bit-identical) square roots later, of many rows in one op (:meth:`RunningStats._unsquare`).
    """
    if x.stride(-1) == 1 or x.shape[-1] == 1:
        torch.linalg.vector_norm(x, dim=-1, out=out)
        return False
    torch.sum(torch.mul(x, x, out=scratch.like(x)), -1, out=out)
    if sqrt:
        out.sqrt_()
    return not sqrt


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
    """An activation in a dtype fit for per-token reductions: float32/float64 as is, half precisions (bf16/fp16
    under autocast) as float32, so no product or sum over the channels is rounded to the activation dtype."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


#: Statistics strategies (:class:`RunningStats` ``strategy``): ``layer`` reduces each layer inside its hooks
#: while its tensors are cache-hot (a few ops per layer; the CPU default), ``stacked`` keeps the batch's
#: captured tensors and reduces all layers together after the forward pass in a fixed number of ops,
#: whatever the depth (few kernel launches; the default on other devices, at the memory of the stacked
#: activations); ``auto`` picks by device.
STRATEGIES = ("auto", "layer", "stacked")


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
    """:class:`PETerms` of ``pes``, the (P, Q, T, D) stack of the PE layers' PEs (any float dtype).

    Three passes over the stack, each reducing its values in float64 (``dtype=``, no float64 copy of the
    stack): the row norms, the row sums and the sum over Q. The variance over the rows x D entries is
    ``E[pe^2] - E[pe]^2`` in float64 (from the norms), whose rounding (1e-16 x (1 + mean^2 / var)) is far
    below the statistics' float32 partials.
    """
    f64 = torch.float64
    P, Q, T, D = pes.shape
    norm = torch.linalg.vector_norm(pes, dim=-1, dtype=f64)  # (P, Q, T)
    rows = torch.isfinite(norm[:, 0])  # prefix rows without a PE row are NaN (derived PEs only)
    keep = rows.view(P, 1, T)  # a view, not indexing: fewer ops per batch
    entries = rows.sum(-1, dtype=f64) * D
    per = entries.view(P, 1)
    mean = torch.where(keep, pes.sum(-1, dtype=f64), 0.0).sum(-1) / per
    var = torch.where(keep, norm * norm, 0.0).sum(-1) / per - mean * mean
    return PETerms(sum=pes.sum(1, dtype=f64), norm_sum=norm.sum(1), norm=norm, rows=rows, mean=mean, var=var,
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

    def __init__(self, view: ModelView, n_norm_maps: int = 8, strategy: str = "auto",
                 stats_backend: str = "eager") -> None:
        if not isinstance(n_norm_maps, int) or n_norm_maps < 0:
            raise ValueError(f"n_norm_maps must be an int >= 0, got {n_norm_maps!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        #: how the statistics run (:data:`pe_probe.core.vocab.STATS_BACKENDS`, :attr:`stats_backend`;
        #: :class:`Backend`, which checks the name): ``compile`` falls back to ``eager`` (one warning) where
        #: torch.compile is unavailable or fails
        self.backend = Backend(stats_backend)
        self._compiled = None  # the torch.compile'd float64 step (built on the first flush)
        #: seconds spent in flush calls that compiled (a new ring shape), kept apart from the per-batch cost
        self.compile_seconds = 0.0
        self._compiled_keys: set = set()
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
        self._state: dict[str, torch.Tensor] | None = None
        self._row = {l: i for i, l in enumerate(self.layers)}
        self._pe_row = {l: j for j, l in enumerate(self.pe_layers)}
        self._parts: Partials | None = None  # reductions of the batch in progress
        self._scratch = Scratch()
        self._batch = 0  # images in the batch in progress
        self._pe_sel: slice | torch.Tensor | None = None  # the rows of :attr:`layers` that have a PE
        self._ba: torch.Tensor | None = None  # (2, 3) stacked moments of the two pooled cosines (state views)

    @property
    def stats_backend(self) -> str:
        """``eager`` or ``compile`` (:attr:`backend`'s name: ``eager`` once a compiled kernel could not run)."""
        return self.backend.name

    @property
    def state(self) -> dict[str, torch.Tensor] | None:
        """The float64 accumulators (None before the first batch), complete: reading them runs :meth:`flush` first."""
        self.flush()
        return self._state

    @state.setter
    def state(self, value: dict[str, torch.Tensor] | None) -> None:
        self._state = value

    def stacked(self, device: torch.device) -> bool:
        """Whether batches on ``device`` are reduced by the stacked strategy (see :data:`STRATEGIES`)."""
        if self.strategy == "auto":
            self.strategy = "layer" if device.type == "cpu" else "stacked"
        return self.strategy == "stacked" and self.uniform

    def _pe_rows(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The rows (along ``dim``) of a per-layer stack that belong to :attr:`pe_layers` (a view when they are
        consecutive)."""
        if self._pe_sel is None:
            idx = [self._row[l] for l in self.pe_layers]
            consecutive = idx == list(range(idx[0], idx[0] + len(idx)))
            self._pe_sel = slice(idx[0], idx[-1] + 1) if consecutive else torch.tensor(idx, device=x.device)
        sel = self._pe_sel
        if isinstance(sel, slice):
            return x if sel == slice(0, x.shape[dim]) else x.narrow(dim, sel.start, sel.stop - sel.start)
        return x.index_select(dim, _as(sel, sel.dtype, x.device))

    # ------------------------------------------------------------------ hook names this needs
    def hooks_read(self) -> list[str]:
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
            self._state = {}  # filled per layer as shapes are seen (_reduce_layer)
            return
        T, D, K = self.view.num_tokens, self.view.embed_dim, self.n_norm_maps
        N = T - self.view.num_prefix_tokens
        L, P = len(self.layers), len(self.pe_layers)
        z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        corr = z(P, 5)
        corr[:, 3], corr[:, 4] = math.inf, -math.inf
        self._ba = z(2, 3)
        self._state = {
            "tok_sum": z(L, T, D), "tok_norm_sum": z(L, T), "resid_norm_sum": z(L, T),
            "pe_sum": z(P, T, D), "pe_norm_sum": z(P, T), "cos_tok_sum": z(P, T), "cos_mom": z(P, 3), "corr_mom": corr,
            "out_norm_sum": z(T), "cos_ba_mom": self._ba[0], "cos_ba_ln_mom": self._ba[1], "norm_before": z(K, N), "norm_after": z(K, N),
        }

    def state_device(self) -> torch.device:
        """The device of the float64 accumulators (CPU before the first batch)."""
        return next(iter(self._state.values())).device if self._state else torch.device("cpu")

    def state_nbytes(self) -> int:
        """Bytes held by the accumulators (fixed once the first batch has been seen)."""
        return 0 if self.state is None else sum(t.numel() * t.element_size() for t in self.state.values())

    # ------------------------------------------------------------------ streaming
    def _partials(self, tok: torch.Tensor) -> Partials:
        """The batch's partial buffers for activations like ``tok`` (reused while B, T, D and device stay; their
        dtype is that of the first activations seen)."""
        B, T, D = tok.shape
        parts = self._parts
        if parts is None or parts.key != (B, T, D, tok.device):
            self.flush()  # the pending batches of the previous size first
            slots = min(16, max(1, RING_IMAGES // B))
            parts = self._parts = Partials(len(self.layers), len(self.pe_layers), B, T, D, tok.dtype, tok.device,
                                           slots, self.state_device())
        return parts

    def _reduce(self, l: int, tok: torch.Tensor, resid: torch.Tensor, pe: torch.Tensor | None) -> None:
        """The passes over layer ``l``'s (B, T, D) ``tok`` and ``resid`` (and its (1 or B, T, D) ``pe``)."""
        if self._state is None:
            self._init(tok.device)
        self._batch = tok.shape[0]
        if not self.uniform:
            self._reduce_layer(l, tok, resid)
            return
        parts = self._partials(tok)
        tok, resid = _as(tok, parts.dtype), _as(resid, parts.dtype)  # no copy unless a layer differs from the first
        i, rows = self._row[l], parts.rows[parts.hi]
        sq = parts.squared[parts.hi]
        if FUSED_LAYERS and self.backend.compiled and self._fused_layer(l, tok, resid, pe, parts, rows, sq):
            return
        torch.sum(tok, 0, out=rows["tok_sum"][i])
        for role, x in (("tok_norm", tok), ("resid_norm", resid)):  # square roots deferred to the ring's step
            (sq[role].add if _norms_into(x, rows[role][i], self._scratch, sqrt=False) else sq[role].discard)(i)
        if pe is not None:
            j = self._pe_row[l]
            pe = _as(pe, tok.dtype, tok.device)  # no copy in the usual case
            prod = torch.mul(tok, pe, out=self._scratch.like(tok))  # NaN rows are masked later
            torch.sum(prod, -1, out=rows["dot"][j])
            torch.sum(tok, -1, out=rows["chan"][j])
            parts.pes[j] = pe

    def _fused_layer(self, l: int, tok: torch.Tensor, resid: torch.Tensor, pe: torch.Tensor | None, parts: Partials,
                     rows: dict, sq: dict) -> bool:
        """``stats_backend="compile"``: layer ``l``'s partials from one torch.compile'd kernel (:func:`layer_partials`:
        each tensor read once or twice instead of once per partial), copied into the ring (norms left squared, their
        square roots taken in the ring step). False (after one warning, eager for good) where it cannot run."""
        kernel = self.backend.kernel(layer_partials, tok.device)
        if kernel is None:
            return False
        pe_ = None if pe is None else _as(pe, tok.dtype, tok.device)
        key = ("layer", tuple(tok.shape), tok.stride(), resid.stride(), tok.dtype, tok.device,
               None if pe_ is None else (tuple(pe_.shape), pe_.stride()))
        out = self._run_compiled(kernel, key, "the statistics' layer kernel", tok, resid, pe_)
        if out is _FAILED:
            return False
        i = self._row[l]
        rows["tok_sum"][i].copy_(out[0])
        rows["tok_norm"][i].copy_(out[1])
        rows["resid_norm"][i].copy_(out[2])
        sq["tok_norm"].add(i)
        sq["resid_norm"].add(i)
        if pe_ is not None:
            j = self._pe_row[l]
            rows["dot"][j].copy_(out[3])
            rows["chan"][j].copy_(out[4])
            parts.pes[j] = pe_
        return True

    def _reduce_stacked(self, store: dict[str, torch.Tensor]) -> None:
        """The stacked strategy: every layer of the batch in ``store`` reduced together, in a fixed number of ops.

        The captured (B, T, D) tensors of all L layers are stacked per role (residual stream, tokens, PEs;
        one copy each, contiguous whatever the stream's layout), then each partial is one reduction over
        the (L, B, T, D) stack, written into the same :class:`Partials` as the per-layer path.
        """
        names = [self._layer_names(l) for l in self.layers]
        resid = _working(torch.stack([store[n[0]] for n in names]))  # (L, B, T, D)
        tok = _working(torch.stack([store[n[1]] for n in names]))
        L, B, T, D = tok.shape
        if self._state is None:
            self._init(tok.device)
        self._batch = B
        parts = self._partials(tok[0]) if self._parts is None or self._parts.key != (B, T, D, tok.device) else self._parts
        tok, resid = _as(tok, parts.dtype), _as(resid, parts.dtype)
        slot = parts.slot[parts.hi]
        for rows in parts.squared[parts.hi].values():
            rows.clear()
        torch.sum(tok, 1, out=parts.tok_sum)
        torch.linalg.vector_norm(tok, dim=-1, out=slot["tok_norm"])
        torch.linalg.vector_norm(resid, dim=-1, out=slot["resid_norm"])
        if self.pe_layers:
            pes = [store[names[self._row[l]][2]] for l in self.pe_layers]
            same_q = all(pe.shape[0] == pes[0].shape[0] for pe in pes)
            pe = _as(torch.stack(pes if same_q else [p.expand(B, -1, -1) for p in pes]), tok.dtype, tok.device)
            tok_pe = self._pe_rows(tok)  # (P, B, T, D)
            torch.sum(torch.mul(tok_pe, pe), -1, out=slot["dot"])  # NaN rows are masked later
            torch.sum(tok_pe, -1, out=slot["chan"])
            parts.pes, parts.pe_stack = pes, pe

    def _reduce_layer(self, l: int, tok: torch.Tensor, resid: torch.Tensor) -> None:
        """The universal sums of layer ``l`` straight into float64 state entries of its own shape (families whose
        token count or width changes along the depth: ``tok_sum@{l}`` (T_l, D_l), ``tok_norm_sum@{l}``,
        ``resid_norm_sum@{l}`` (T_l))."""
        s = self._state
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

    def _end_batch(self, B: int) -> None:
        """Close the batch in progress (uniform state): add its token and PE sums, write its PE row norms and row
        sums into its ring slot and move the ring on, running the float64 step on the pending slots when the
        ring is full (see :class:`Partials`). A batch with a PE per image is finished at once, after the pending
        slots. Computed on the device every batch, so nothing compares PEs (which would read back to the host)."""
        s, parts = self._state, self._parts
        dev = s["tok_sum"].device
        s["tok_sum"] += _as(parts.tok_sum, parts.tok_sum.dtype, dev)
        if self.pe_layers:
            pes, stack = parts.pes, parts.pe_stack
            parts.pes, parts.pe_stack = [None] * len(pes), None  # the PE tensors are not kept past the batch
            if any(pe.shape[0] != 1 for pe in pes):  # a PE per image: this batch on its own
                k = parts.hi
                self.flush()  # the pending batches first (they end before slot k)
                if stack is None or stack.shape[1] != B:
                    stack = torch.stack([pe.expand(B, -1, -1) for pe in pes])
                pt = pe_terms(_as(stack, stack.dtype, dev))
                s["pe_sum"] += pt.sum
                s["pe_norm_sum"] += pt.norm_sum
                rows = pt.rows.view(1, -1, 1, pt.rows.shape[-1])
                self._unsquare(k, k + 1)
                self._finish(k, k + 1, (rows, pt.norm.unsqueeze(0), pt.mean.unsqueeze(0), pt.var.unsqueeze(0),
                                        pt.entries.view(1, -1, 1)))
                return
            stack = torch.stack(pes) if stack is None else stack  # (P, 1, T, D)
            stack = _as(stack, stack.dtype, dev)
            slot = parts.slot[parts.hi]
            torch.linalg.vector_norm(stack, dim=-1, dtype=torch.float64, out=slot["pe_norm"])
            torch.sum(stack, -1, dtype=torch.float64, out=slot["pe_rowsum"])
            s["pe_sum"].unsqueeze(1).add_(stack, alpha=B)  # a PE shared by the batch counts once per image
        parts.hi += 1
        if parts.hi == parts.slots:
            self.flush()

    def flush(self) -> None:
        """Run the float64 step on the batches still pending in the ring of partials (:class:`Partials`), so that
        :attr:`state` is complete. Reading :attr:`state` or :meth:`arrays` calls it; no host read."""
        parts = self._parts
        if parts is None or parts.hi == parts.lo:
            return
        with _one_cpu_thread(parts.tok_norm), torch.autocast(parts.tok_norm.device.type, enabled=False), \
                torch.inference_mode():
            self._unsquare(parts.lo, parts.hi)
            step = self._compiled_step(parts.tok_norm.device)
            # one whole graph (fullgraph=True) is compiled before any of it runs, and its in-place adds are written
            # back at its end, so a compiler failure leaves the state untouched and the eager step can run
            if step is None or self._run_compiled(step, (parts.key, parts.dtype, parts.lo, parts.hi),
                                                  "the statistics step", parts.lo, parts.hi) is _FAILED:
                self._finish(parts.lo, parts.hi)
        parts.lo = parts.hi = 0

    def _run_compiled(self, fn, key: tuple, what: str, *args):
        """``fn(*args)`` (a compiled kernel or step) with room for its graphs; its first call of ``key`` (a new shape:
        it compiles) is counted in :attr:`compile_seconds`, not as per-batch cost. A compiler failure falls back to
        eager for good (one warning naming ``what``) and returns :data:`_FAILED`."""
        t0 = time.perf_counter()
        try:
            with _recompile_room():
                out = fn(*args)
        except Exception as e:  # noqa: BLE001  (a compiler failure: eager from now on, one warning)
            self._fall_back(f"torch.compile of {what} failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''})")
            return _FAILED
        if key not in self._compiled_keys:
            self._compiled_keys.add(key)
            self.compile_seconds += time.perf_counter() - t0
        return out

    def _unsquare(self, lo: int, hi: int) -> None:
        """Take the deferred square roots of the norm partials in ring slots ``lo:hi`` (float32, in place: the same
        values as a ``sqrt_`` per layer in the hooks), in one op per role where every pending slot has the same
        consecutive squared rows, else row by row."""
        parts = self._parts
        for role in ("tok_norm", "resid_norm"):
            sets = [parts.squared[k][role] for k in range(lo, hi)]
            every = set.union(*sets)
            if not every:
                continue
            a, b = min(every), max(every) + 1
            if all(r == every for r in sets) and len(every) == b - a:
                buf = getattr(parts, role)
                buf[lo:hi, a:b].sqrt_()
            else:
                for k in range(lo, hi):
                    for i in parts.squared[k][role]:
                        parts.rows[k][role][i].sqrt_()
            for r in sets:
                r.clear()

    def _fall_back(self, why: str) -> None:
        """Switch the statistics to eager for good, with one warning saying why (:meth:`Backend.fall_back`)."""
        self.backend.fall_back(why)
        self._compiled = None

    def _compiled_step(self, device: torch.device):
        """The ``torch.compile``'d :meth:`_finish` (``dynamic=False``: one graph per ring shape; this instance's own,
        as it is a bound method), or None: backend eager, or (one warning) no dynamo or C++ compiler on ``device``."""
        if self._compiled is None and self.backend.available(device):
            self._compiled = self.backend.compile(self._finish)
        return self._compiled if self.backend.compiled else None

    def _finish(self, lo: int, hi: int, pe: tuple[torch.Tensor, ...] | None = None) -> None:
        """Turn the partials of ring slots ``lo:hi`` (batches of B images) into float64 sums, all layers and all
        those batches at once: the same sums as batch by batch, added in another order (float64 rounding).

        ``pe``: the PE side of a batch with a PE per image, (rows (1, P, 1, T), norms (1, P, B, T), mean and
        variance (1, P, B), entries (1, P, 1)); otherwise it comes from the ring (Q = 1)."""
        s, parts = self._state, self._parts
        S, n = hi - lo, (hi - lo) * parts.B  # batches and images
        dev = s["tok_sum"].device
        whole = lo == 0 and hi == parts.slots
        f64 = lambda x: _as(x if whole else x[lo:hi], torch.float64, dev)  # noqa: E731  (no op when it already is)
        tok_norm = f64(parts.tok_norm)  # (S, L + 1, B, T)
        s["tok_norm_sum"] += tok_norm.sum((0, 2))
        s["resid_norm_sum"] += f64(parts.resid_norm).sum((0, 2))
        if self.pe_layers:
            if pe is None:  # the PE terms of every pending batch (pe_terms, per slot)
                pe_norm, rowsum = f64(parts.pe_norm), f64(parts.pe_rowsum)  # (S, P, 1, T)
                s["pe_norm_sum"].add_(pe_norm.sum((0, 2)), alpha=parts.B)  # a PE shared by the batch: once per image
                rows = torch.isfinite(pe_norm)  # prefix rows without a PE row are NaN (derived PEs only)
                entries = rows.sum(-1, dtype=torch.float64) * parts.tok_sum.shape[-1]  # (S, P, 1)
                pe_mean = torch.where(rows, rowsum, 0.0).sum(-1) / entries  # (S, P, 1)
                pe_var = torch.where(rows, pe_norm * pe_norm, 0.0).sum(-1) / entries - pe_mean * pe_mean
            else:
                rows, pe_norm, pe_mean, pe_var, entries = pe
            tn = self._pe_rows(tok_norm, 1)  # (S, P, B, T); rows (S, P, 1, T), pe_norm (S, P, 1 or B, T)
            dot = f64(parts.dot)
            keep = lambda x: torch.where(rows, x, 0.0)  # noqa: E731  (rows without a PE drop out)
            cos = keep(dot / (tn * pe_norm))  # (S, P, B, T): cos(tok[b, t], pe[t])
            s["cos_tok_sum"] += cos.sum((0, 2))
            # moments: one stacked in-place add per moment tensor (indexing columns would cost ops per column)
            s["cos_mom"].add_(torch.stack([rows.sum((0, 2, 3), dtype=cos.dtype) * parts.B, cos.sum((0, 2, 3)),
                                           (cos * cos).sum((0, 2, 3))], 1))
            tok_mean = keep(f64(parts.chan)).sum(3) / entries  # (S, P, B), over the rows x D entries
            tok_var = keep(tn.square()).sum(3) / entries - tok_mean.square()
            cov = keep(dot).sum(3) / entries - tok_mean * pe_mean
            r = cov / torch.sqrt(tok_var * pe_var)  # (S, P, B): per-image Pearson correlation
            mom = s["corr_mom"]  # (P, 5): count, sum, sum of squares, min, max
            mom[:, :3].add_(torch.stack([torch.full_like(mom[:, 0], n), r.sum((0, 2)), (r * r).sum((0, 2))], 1))
            mn, mx = mom[:, 3], mom[:, 4]
            mn.copy_(torch.minimum(mn, torch.amin(r, (0, 2))))  # copy_, not out= on a column (torch.compile)
            mx.copy_(torch.maximum(mx, torch.amax(r, (0, 2))))
        if self.last_ln:
            s["out_norm_sum"] += f64(parts.out_norm).sum((0, 1))
            # cos(pooled x_L, pooled Last-LN output with / without the PE), both at once: (S, 2, B)
            pool = f64(parts.pool)  # (S, 3, B, D)
            norm = torch.linalg.vector_norm(pool, dim=-1)  # (S, 3, B)
            cos = (pool[:, 1:] * pool[:, :1]).sum(-1) / (norm[:, 1:] * norm[:, :1])
            self._ba.add_(torch.stack([torch.full_like(self._ba[:, 0], n), cos.sum((0, 2)), (cos * cos).sum((0, 2))],
                                      1))

    def feed(self) -> BatchFeed:
        """A store for :func:`~pe_probe.probing.hooks.recording` that reduces each block as the forward pass fills it.

        Call ``feed.reset(derived)`` before each forward pass and :meth:`update` ``(feed)`` after it. A block
        is reduced as soon as its tensors are in, while they are still in the CPU cache, and its tensors are
        dropped then, so the probe holds about one block's activations at a time.
        """
        return BatchFeed(self)

    @torch.inference_mode()
    def update(self, store: dict[str, torch.Tensor]) -> None:
        """Add one batch of captured activations (as returned by :func:`pe_probe.capture` for :meth:`hooks_read`,
        or a :meth:`feed` after the forward pass). Nothing is read back to the host (no sync per batch)."""
        done = store.done if isinstance(store, BatchFeed) and store.stats is self else ()
        v = self.view
        if self.strategy == "auto":
            any_tensor = next((t for t in store.values() if isinstance(t, torch.Tensor)), None)
            self.stacked(torch.device("cpu") if any_tensor is None else any_tensor.device)
        stacked = self.strategy == "stacked" and self.uniform
        # full-size passes, on torch's threads like the forward's own operations
        if stacked:
            self._reduce_stacked(store)
        else:
            for l in range(v.depth):
                if l not in done:
                    self._layer(l, store)
        if not self.last_ln:  # no norm on every token before pooling: the blocks' statistics only
            B = self._batch
            if self.uniform:
                with _one_cpu_thread(self._parts.tok_norm), torch.autocast(self.state_device().type, enabled=False):
                    self._end_batch(B)
            self.n_images += B
            return
        last = layer_hooks(LAST, self.has_pe[LAST])
        x_l, ln_out = _working(store[last.resid]), _working(store[last.tok])
        last_pe = _working(store[last.pe]) if last.pe else None
        if not stacked:
            self._reduce(LAST, ln_out, x_l, last_pe)
        B, npt = x_l.shape[0], v.num_prefix_tokens
        out = ln_out if last_pe is None else ln_out + last_pe
        pooled = v.pool(x_l), v.pool(out), v.pool(ln_out)  # the model's own pooling (class token, mean, map, ...)
        take = max(0, min(self.n_norm_maps - self.n_maps, B))
        maps = (_norms(x_l[:take, npt:], self._scratch), _norms(out[:take, npt:])) if take else ()
        if self.uniform:  # into the ring: the float64 step runs once per few batches (_end_batch, flush)
            parts = self._parts
            slot = parts.slot[parts.hi]
            _norms_into(_as(out, parts.dtype), slot["out_norm"], self._scratch)
            torch.stack([_as(p, parts.dtype) for p in pooled], out=slot["pool"])
        else:
            out_norm = _norms(out)
        # the small float64 step (a few dozen short operations) on one thread, never autocast
        with _one_cpu_thread(x_l), torch.autocast(x_l.device.type, enabled=False):
            s = self._state
            if self.uniform:
                self._end_batch(B)
            else:
                if "out_norm_sum" not in s:  # per-layer state: the Last-LN entries once its shape is known
                    K, N = self.n_norm_maps, out.shape[1] - npt
                    z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=s[f"tok_sum@{LAST}"].device)  # noqa: E731
                    self._ba = z(2, 3)
                    s.update(out_norm_sum=z(out.shape[1]), cos_ba_mom=self._ba[0], cos_ba_ln_mom=self._ba[1],
                             norm_before=z(K, N), norm_after=z(K, N))
                dev = s["out_norm_sum"].device
                f64 = lambda x: _as(x, torch.float64, dev)  # noqa: E731
                s["out_norm_sum"] += f64(out_norm).sum(0)
                # cos(pooled x_L, pooled Last-LN output with / without the PE), both at once: (2, B)
                pool = f64(torch.stack(pooled))  # (3, B, D)
                norm = torch.linalg.vector_norm(pool, dim=-1)  # (3, B)
                cos = (pool[1:] * pool[0]).sum(-1) / (norm[1:] * norm[0])
                self._ba.add_(torch.stack([torch.full_like(cos[:, 0], B), cos.sum(1), (cos * cos).sum(1)], 1))
            if take:
                dev = s["norm_before"].device
                s["norm_before"][self.n_maps:self.n_maps + take] = _as(maps[0], torch.float64, dev)
                s["norm_after"][self.n_maps:self.n_maps + take] = _as(maps[1], torch.float64, dev)
                self.n_maps += take
            self.n_images += B

    # ------------------------------------------------------------------ results
    def arrays(self) -> dict[str, np.ndarray]:
        """Means and moments as float64 numpy arrays, keyed as :class:`pe_probe.core.report.ProbeReport` stores them."""
        self.flush()
        if self._state is None or self.n_images == 0:
            raise ValueError("no images were probed")
        n = float(self.n_images)
        s = {k: t.detach().cpu().numpy() for k, t in self._state.items()}
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


#: graphs of the compiled float64 step kept per process: one per ring shape and pending range (``lo``, ``hi``,
#: fixed by ``dynamic=False``), over every model probed; torch's default (8) is a few models
COMPILE_GRAPHS = 256


def _recompile_room():
    """A context raising dynamo's recompile limit to :data:`COMPILE_GRAPHS` for the compiled step's call."""
    import torch._dynamo.config as cfg
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    return cfg.patch(**{name: max(COMPILE_GRAPHS, getattr(cfg, name))})


def layer_partials(tok: torch.Tensor, resid: torch.Tensor, pe: torch.Tensor | None):
    """One layer's partials as the compiled kernel computes them (``stats_backend="compile"``): the batch sum of the
    tokens (T, D) and, per token (B, T), the squared norms of tokens and residual stream and, with a PE, the dot
    product with it and the channel sum. Written as plain reductions so that Inductor fuses those over the same
    axis into one loop: each tensor is read once or twice instead of once per partial (float32 sums in another
    order than eager's: the same numbers to float32 rounding)."""
    out = (tok.sum(0), (tok * tok).sum(-1), (resid * resid).sum(-1))
    if pe is None:
        return out
    return out + ((tok * pe).sum(-1), tok.sum(-1))


#: What :meth:`RunningStats._run_compiled` returns when the compiled call failed (and the backend fell back).
_FAILED = object()

#: ``torch.compile``'d kernels by (function, device type, the compile function): one per process, shared by every
#: probe, so their graphs are compiled once per shape (a patched ``torch.compile``, as in the tests, gets its own)
_KERNELS: dict = {}


class Backend:
    """How one probe's statistics run (``stats_backend``): compiles their kernels, and where one cannot run falls
    back to eager for good with one warning (whichever kernel failed first)."""

    def __init__(self, name: str = "eager") -> None:
        if name not in STATS_BACKENDS:
            raise ValueError(f"stats_backend must be one of {STATS_BACKENDS}, got {name!r}")
        self.name = name
        self._checked: set[str] = set()  # device types compile_unavailable was asked about

    @property
    def compiled(self) -> bool:
        """Whether compiled kernels are (still) to be used."""
        return self.name == "compile"

    def fall_back(self, why: str) -> None:
        """Eager from now on, with one warning saying why (none if already eager)."""
        if self.name == "compile":
            warnings.warn(f"{why}; the probe's statistics run eager (the same numbers to float32 rounding)",
                          RuntimeWarning, stacklevel=4)
        self.name = "eager"

    def available(self, device: torch.device) -> bool:
        """Whether compiled code is to run on ``device``: the backend is ``compile`` and torch.compile can build for
        it (:func:`compile_unavailable`, asked once per device type; where it cannot, :meth:`fall_back`)."""
        if self.compiled and device.type not in self._checked:
            why = compile_unavailable(device)
            if why:
                self.fall_back(why)
            else:
                self._checked.add(device.type)
        return self.compiled

    @staticmethod
    def compile(fn):
        """``fn`` compiled as every statistics kernel is: one whole graph (``fullgraph``) per shape (``dynamic=False``)."""
        return torch.compile(fn, dynamic=False, fullgraph=True)

    def kernel(self, fn, device: torch.device):
        """The process-wide compiled ``fn`` (:data:`_KERNELS`), or None where compiled code is not to run on
        ``device`` (:meth:`available`)."""
        if not self.available(device):
            return None
        key = (fn, device.type, torch.compile)
        k = _KERNELS.get(key)
        if k is None:
            k = _KERNELS[key] = self.compile(fn)
        return k


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot build the statistics step on ``device`` (None when it can): dynamo not
    supported by this Python / torch, or no C++ compiler (``CXX`` or ``g++``/``c++``/``clang++``) for CPU code."""
    try:
        import torch._dynamo as dynamo
        if not dynamo.is_dynamo_supported():
            return "torch.compile is not supported by this Python / torch build"
    except Exception as e:  # noqa: BLE001
        return f"torch.compile is unavailable ({type(e).__name__})"
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++", "clang++")):
        return "torch.compile on CPU needs a C++ compiler and none was found"
    return None


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
        if l is None or l in self.done or self.stats.stacked(value.device):
            return  # the stacked strategy reduces every layer together in update()
        names = self.stats._layer_names(l)
        if all(n in self for n in names):
            with torch.inference_mode():
                self.stats._layer(l, self)
            self.done.add(l)
            for n in names:
                del self[n]
