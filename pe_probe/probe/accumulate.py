"""Exact running statistics over a stream of batches (float64 sums, never stored activations).

The state has a fixed size set by the model (tokens T, width D, depth L) and ``n_norm_maps`` (K): it does
not grow with the number of images, and sums do not depend on how the images are split into batches.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .adapter import ModelView

LAST = -1  #: layer index of the Last LN rows


def _norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=-1)


def _add_moments(mom: torch.Tensor, values: torch.Tensor) -> None:
    """``mom`` = [count, sum, sum of squares(, min, max)] updated in place with ``values`` (float64)."""
    values = values.reshape(-1)
    mom[0] += values.numel()
    mom[1] += values.sum()
    mom[2] += (values * values).sum()
    if mom.numel() == 5 and values.numel():
        mom[3] = torch.minimum(mom[3], values.min())
        mom[4] = torch.maximum(mom[4], values.max())


def pool(x: torch.Tensor, global_pool: str, num_prefix_tokens: int) -> torch.Tensor:
    """The model's pooling on (B, T, D): the class token (``"token"``) or the mean of the patch tokens (``"avg"``)."""
    return x[:, 0] if global_pool == "token" else x[:, num_prefix_tokens:].mean(1)


def pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``x`` (B, M) with ``y`` (1 or B, M)."""
    xc = x - x.mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    return (xc * yc).sum(-1) / torch.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension (broadcasting); 0/0 gives NaN."""
    return (x * y).sum(-1) / (_norms(x) * _norms(y))


class RunningStats:
    """Per-layer running sums for :func:`pe_probe.probe`.

    Per block l (and the Last LN, layer -1), over images b and tokens t:
    sums of the token map ``tok[b]`` (T, D), of per-token norms of tokens and residual stream (T,), and
    where the layer has a PE: sums of the PE map and its row norms, of per-token cosines ``cos(tok[b,t], pe[t])``
    (T,) with their moments, and moments (count, sum, sum of squares, min, max) of the per-image Pearson
    correlation between ``tok[b]`` and ``pe`` over the rows that have a PE. For the Last LN also the
    per-image cosine between the pooled ``x_L`` and the pooled Last-LN output (with and without the PE),
    and the per-token norm maps of the first ``n_norm_maps`` images.
    """

    def __init__(self, view: ModelView, n_norm_maps: int = 8) -> None:
        if not isinstance(n_norm_maps, int) or n_norm_maps < 0:
            raise ValueError(f"n_norm_maps must be an int >= 0, got {n_norm_maps!r}")
        self.view = view
        self.n_norm_maps = n_norm_maps
        self.layers: list[int] = list(range(view.depth)) + [LAST]
        self.has_pe = {l: l in view.receiving_blocks for l in range(view.depth)}
        self.has_pe[LAST] = view.last_ln_pe is not None
        self.n_images = 0
        self.n_maps = 0
        self.state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ hook names this needs
    def hook_names(self) -> list[str]:
        """The hook names whose tensors :meth:`update` reads."""
        names = []
        for l in range(self.view.depth):
            names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_tok"]
            if self.has_pe[l]:
                names.append(f"blocks.{l}.hook_pe")
        names += ["hook_last_ln_in", "hook_last_ln_out"] + (["hook_last_pe"] if self.has_pe[LAST] else [])
        return names

    def _init(self, device: torch.device) -> None:
        if device.type == "mps":  # no float64 there
            device = torch.device("cpu")
        T, D, K = self.view.num_tokens, self.view.embed_dim, self.n_norm_maps
        N = T - self.view.num_prefix_tokens
        z = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        s: dict[str, torch.Tensor] = {}
        for l in self.layers:
            s[f"tok_sum@{l}"] = z(T, D)
            s[f"tok_norm_sum@{l}"] = z(T)
            s[f"resid_norm_sum@{l}"] = z(T)
            if self.has_pe[l]:
                s[f"pe_sum@{l}"] = z(T, D)
                s[f"pe_norm_sum@{l}"] = z(T)
                s[f"cos_tok_sum@{l}"] = z(T)
                s[f"cos_mom@{l}"] = z(3)
                s[f"corr_mom@{l}"] = torch.tensor([0.0, 0.0, 0.0, math.inf, -math.inf], dtype=torch.float64,
                                                  device=device)
        s[f"out_norm_sum@{LAST}"] = z(T)
        s["cos_ba_mom"] = z(3)
        s["cos_ba_ln_mom"] = z(3)
        s["norm_before"] = z(K, N)
        s["norm_after"] = z(K, N)
        self.state = s

    def state_nbytes(self) -> int:
        """Bytes held by the accumulators (fixed once the first batch has been seen)."""
        return 0 if self.state is None else sum(t.numel() * t.element_size() for t in self.state.values())

    # ------------------------------------------------------------------ streaming
    def _layer(self, l: int, tok: torch.Tensor, resid: torch.Tensor, pe: torch.Tensor | None) -> None:
        s = self.state
        B = tok.shape[0]
        s[f"tok_sum@{l}"] += tok.sum(0)
        s[f"tok_norm_sum@{l}"] += _norms(tok).sum(0)
        s[f"resid_norm_sum@{l}"] += _norms(resid).sum(0)
        if pe is None:
            return
        pe = pe.expand(B, -1, -1) if pe.shape[0] == 1 else pe
        s[f"pe_sum@{l}"] += pe.sum(0)
        s[f"pe_norm_sum@{l}"] += _norms(pe).sum(0)
        rows = torch.isfinite(pe[0]).all(-1)  # prefix rows without a PE row are NaN (derived PEs only)
        t, p = tok[:, rows], pe[:, rows]
        cos = cosine(t, p)  # (B, R)
        s[f"cos_tok_sum@{l}"][rows] += cos.sum(0)
        _add_moments(s[f"cos_mom@{l}"], cos)
        _add_moments(s[f"corr_mom@{l}"], pearson_rows(t.reshape(B, -1), p.reshape(B, -1)))

    @torch.inference_mode()
    def update(self, store: dict[str, torch.Tensor]) -> None:
        """Add one batch of captured activations (as returned by :func:`pe_probe.capture` for :meth:`hook_names`)."""
        ln_in = store["hook_last_ln_in"]
        if self.state is None:
            self._init(ln_in.device)
        dev = next(iter(self.state.values())).device
        f64 = lambda name: store[name].to(device=dev, dtype=torch.float64)  # noqa: E731
        v = self.view
        for l in range(v.depth):
            pe = f64(f"blocks.{l}.hook_pe") if self.has_pe[l] else None
            self._layer(l, f64(f"blocks.{l}.hook_tok"), f64(f"blocks.{l}.hook_resid_pre"), pe)
        x_l, ln_out = f64("hook_last_ln_in"), f64("hook_last_ln_out")
        last_pe = f64("hook_last_pe") if self.has_pe[LAST] else None
        self._layer(LAST, ln_out, x_l, last_pe)
        out = ln_out if last_pe is None else ln_out + last_pe
        s = self.state
        s[f"out_norm_sum@{LAST}"] += _norms(out).sum(0)
        before = pool(x_l, v.global_pool, v.num_prefix_tokens)
        _add_moments(s["cos_ba_mom"], cosine(before, pool(out, v.global_pool, v.num_prefix_tokens)))
        _add_moments(s["cos_ba_ln_mom"], cosine(before, pool(ln_out, v.global_pool, v.num_prefix_tokens)))
        take = min(self.n_norm_maps - self.n_maps, x_l.shape[0])
        if take > 0:
            npt = v.num_prefix_tokens
            s["norm_before"][self.n_maps:self.n_maps + take] = _norms(x_l[:take, npt:])
            s["norm_after"][self.n_maps:self.n_maps + take] = _norms(out[:take, npt:])
            self.n_maps += take
        self.n_images += x_l.shape[0]

    # ------------------------------------------------------------------ results
    def arrays(self) -> dict[str, np.ndarray]:
        """Means and moments as float64 numpy arrays, keyed as :class:`pe_probe.analysis.ProbeReport` stores them."""
        if self.state is None or self.n_images == 0:
            raise ValueError("no images were probed")
        n = float(self.n_images)
        s = {k: t.detach().cpu().numpy() for k, t in self.state.items()}
        out: dict[str, np.ndarray] = {}
        for l in self.layers:
            out[f"tok_map@{l}"] = s[f"tok_sum@{l}"] / n
            out[f"tok_norm@{l}"] = s[f"tok_norm_sum@{l}"] / n
            out[f"resid_norm@{l}"] = s[f"resid_norm_sum@{l}"] / n
            if self.has_pe[l]:
                pe_map = s[f"pe_sum@{l}"] / n
                out[f"pe_map@{l}"] = pe_map
                out[f"pe_norm@{l}"] = s[f"pe_norm_sum@{l}"] / n
                rows = np.isfinite(pe_map).all(-1)
                out[f"tok_pe_cos@{l}"] = np.where(rows, s[f"cos_tok_sum@{l}"] / n, np.nan)
                out[f"cos_moments@{l}"] = _finish(s[f"cos_mom@{l}"])
                out[f"corr_img@{l}"] = _finish(s[f"corr_mom@{l}"])
        out[f"out_norm@{LAST}"] = s[f"out_norm_sum@{LAST}"] / n
        out["last_cos"] = _finish(s["cos_ba_mom"])
        out["last_cos_ln"] = _finish(s["cos_ba_ln_mom"])
        h, w = self.view.grid
        out["norm_before"] = s["norm_before"][: self.n_maps].reshape(self.n_maps, h, w)
        out["norm_after"] = s["norm_after"][: self.n_maps].reshape(self.n_maps, h, w)
        norm = self.view.last_norm
        D = self.view.embed_dim
        w_, b_ = getattr(norm, "weight", None), getattr(norm, "bias", None)
        out["last_ln_gamma"] = np.ones(D) if w_ is None else w_.detach().double().cpu().numpy()
        out["last_ln_beta"] = np.zeros(D) if b_ is None else b_.detach().double().cpu().numpy()
        out["pos_embed"] = self.view.model.pos_embed.detach()[0].double().cpu().numpy()
        return out


def _finish(mom: np.ndarray) -> np.ndarray:
    """[count, sum, sumsq(, min, max)] -> [count, mean, mean of squares(, min, max)]."""
    res = mom.astype(np.float64).copy()
    if res[0] > 0:
        res[1:3] /= res[0]
    else:
        res[1:] = np.nan
    return res
