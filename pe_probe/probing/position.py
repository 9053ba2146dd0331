"""How much position each layer carries (docs/probe.md, "Position per layer"): streaming accumulators.

Three measurements of the token stream, each a small class whose ``state`` is a dict of float64 tensors of
a fixed size (set by the model, never by the number of images). Every entry of every ``state`` is a sum
over images, so states of several workers combine by adding them (an all-reduce with SUM); images are
assigned to the fit / select / score sets and to the classifier's sample by their *global* index, so
splitting a data set over workers changes nothing. ``arrays()`` turns a state into the float64 numpy
arrays a :class:`~pe_probe.core.report.ProbeReport` stores (keys in :mod:`pe_probe.core.report`).

- :class:`VarianceDecomposition`: the balanced two-way decomposition of the patch tokens of a layer,
  ``x[i, t] = mu + pos[t] + img[i] + resid[i, t]``, from running sums (of x per token, of squares, of the
  squared per-image token sums), and how much of the position part an additive PE term explains.
- :class:`PositionRidge`: ridge regression of each patch's (row, col) from its token, as sufficient
  statistics (``Z^T Z``, ``Z^T y`` with ``Z = [X, 1]``) of three image sets; a control with the labels
  permuted within each image comes free (same ``Z^T Z``).
- :class:`PositionSample`: a bounded sample (the first ``n_images`` images) for a scikit-learn
  ``LogisticRegression`` of the patch index, with the same permuted control.
- :class:`LogitDecomposition`: the direct contribution of the PE component of the residual stream (and of
  the rest of it, the Last LN's beta, MPVG's Last-LN PE) to the predicted logit through the frozen Last LN.

:class:`PositionProbe` wires them to a PE family's (:class:`~pe_probe.families.base.Family`) taps and sites for
:func:`pe_probe.probe`; the classes themselves take only tensors (the token stream (B, T, D) per layer with
the number of prefix tokens and the patch grid, the PE term, the Last LN and the head).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core import hook_points as H
from ..core.report import LOGIT_COMPONENTS
from ..families import Site, replaced
from .accumulate import Scratch
from .adapter import ModelView
from .hooks import fill_derived, recording

F64 = torch.float64
#: Image sets of the ridge probe by global image index modulo 5: 0-2 fit, 3 select (the regularisation), 4 score.
FOLDS = 5
FIT, SELECT, SCORE = 0, 1, 2
#: Poolings the logit decomposition passes each component through (linear maps of the tokens).
LINEAR_POOLS = ("token", "avg")
#: Ridge regularisation grid, as multiples of the mean feature variance times the fit-set size (tr(Cxx) / D).
ALPHA_GRID = tuple(10.0 ** k for k in range(-8, 3))


def image_set(index: torch.Tensor) -> torch.Tensor:
    """The ridge set (:data:`FIT`, :data:`SELECT`, :data:`SCORE`) of each global image index."""
    r = index % FOLDS
    return torch.where(r < 3, FIT, torch.where(r == 3, SELECT, SCORE))


def image_permutations(index: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """(B, n) the within-image label permutation of each global image index (seeded by ``seed`` and the index)."""
    gen = torch.Generator()
    return torch.stack([torch.randperm(n, generator=gen.manual_seed(seed * 1_000_003 + int(i))) for i in index])


def patch_coords(grid: tuple[int, int]) -> torch.Tensor:
    """(N, 2) float64 (row, col) of the N = h * w patch tokens in raster order."""
    h, w = grid
    t = torch.arange(h * w)
    return torch.stack([t // w, t % w], dim=1).to(F64)


class VarianceDecomposition:
    """Variance of the patch tokens split into a position, an image and a residual part, per layer.

    For n images and N patch tokens of width D (per channel d, balanced design): ``mu`` the grand mean,
    ``pos[t] = mean_i x[i, t] - mu``, ``img[i] = mean_t x[i, t] - mu``, ``resid = x - mu - pos - img``. The
    three parts are orthogonal, so ``SS_total = SS_pos + SS_img + SS_resid`` with

    - ``SS_total = sum x^2 - nN |mu|^2``,
    - ``SS_pos = (1/n) sum_t |S_t|^2 - nN |mu|^2`` (``S_t = sum_i x[i, t]``),
    - ``SS_img = (1/N) sum_i |R_i|^2 - nN |mu|^2`` (``R_i = sum_t x[i, t]``),

    all from the running sums in ``state`` (``tok_sum`` (L, N, D), ``sq_sum``, ``img_sq``, ``count`` (L,)).
    ``pe_sum`` (N, D): the sum over images of an additive PE term's patch rows (when given), for the share
    of the position part along it (:meth:`arrays`). Sums run in float64.
    """

    def __init__(self, n_layers: int, n_tokens: int, dim: int, device: torch.device | str = "cpu") -> None:
        z = lambda *s: torch.zeros(s, dtype=F64, device=device)  # noqa: E731
        self._state = {"tok_sum": z(n_layers, n_tokens, dim), "sq_sum": z(n_layers), "img_sq": z(n_layers),
                       "count": z(n_layers), "pe_sum": z(n_tokens, dim), "pe_count": z(1)}
        self._scratch = Scratch()  # full-size buffers reused batch after batch
        #: the float32 partials of the rows added since the last :meth:`flush` (one batch: rows -> slot)
        self._pending: dict[int, int] = {}
        self._parts: dict[str, torch.Tensor] | None = None

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The float64 sums, complete: reading them runs :meth:`flush` first."""
        self.flush()
        return self._state

    @torch.inference_mode()
    def update(self, i: int, x: torch.Tensor) -> None:
        """Add row ``i``'s (B, N, D) patch tokens (prefix tokens already removed).

        The full-size passes run in the activations' dtype on ``y = x - c``, with ``c`` a shift (the channel
        means of the batch's first image: the sums are of ``x`` itself, whatever the shift), so float32 rounding
        scales with the tokens' spread, not with their offset; the small sums over tokens and images are then
        taken to float64: ``sum_i x = sum_i y + B c``, ``R_i = sum_t y + N c``,
        ``sum x^2 = sum y^2 + 2 c . sum y + B N |c|^2``. The shift depends on the batch alone, so a batch adds
        the same float64 partials wherever it is read (one process, or any rank of a sharded probe).

        The three reductions are written into per-row buffers and turned into float64 sums for all the batch's
        rows at once (:meth:`flush`: when the batch ends, or when a row comes again or the batch size changes).
        """
        if not x.is_floating_point() or x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        B, N, D = x.shape
        parts = self._parts
        stale = parts is None or (parts["rows"].shape[1:], parts["col"].dtype, parts["col"].device) != \
            ((B, D), x.dtype, x.device)
        if i in self._pending or (stale and self._pending):  # the pending rows first, from the buffers they are in
            self.flush()
        if stale:
            L = self._state["count"].shape[0]
            e = lambda *shape, dtype=x.dtype: torch.empty(shape, dtype=dtype, device=x.device)  # noqa: E731
            parts = self._parts = {"col": e(L, N, D), "rows": e(L, B, D), "sq": e(L, B), "shift": e(L, D, dtype=F64)}
        k = self._pending[i] = len(self._pending)
        shift = torch.mean(x[0], 0, dtype=F64, out=parts["shift"][k])
        # y and the column sums keep x's memory order: a ViT without a class token streams (B, D, N) in memory
        # (timm's patch embedding transposes), and a pass that changes the order costs ~10x one that keeps it
        y = torch.sub(x, shift.to(x.dtype), out=self._scratch.like(x, "y"))
        col = torch.sum(y, 0, out=self._scratch.like(y[0], "col"))
        parts["col"][k].copy_(col)
        torch.sum(y, 1, out=parts["rows"][k])
        # per-image norms (N x D entries each, then float64): as fast as one norm of all B x N x D entries, whose
        # float32 accumulation is ~100x less accurate (3e-5 against 2e-7 relative, DeiT-Ti, batch 32)
        torch.linalg.vector_norm(y, dim=(1, 2), out=parts["sq"][k])

    @torch.inference_mode()
    def flush(self) -> None:
        """Add the pending rows' partials (:meth:`update`) to the float64 sums, all rows in a few operations."""
        if not self._pending:
            return
        s, parts, n = self._state, self._parts, len(self._pending)
        rows_i = list(self._pending)
        self._pending = {}
        dev = s["tok_sum"].device
        f64 = lambda t: t[:n].to(device=dev, dtype=F64)  # noqa: E731
        col32 = parts["col"][:n].to(dev)  # (n, N, D), added to the float64 sums as is (cast on the fly)
        rows, sq, c = f64(parts["rows"]), f64(parts["sq"]).square().sum(1), f64(parts["shift"])
        B, N = rows.shape[1], col32.shape[1]
        cc = c.unsqueeze(1)  # (n, 1, D)
        img = rows.add_(cc, alpha=N).square_().sum((1, 2))
        sqs = sq + 2 * (c * col32.sum(1, dtype=F64)).sum(1) + B * N * (c * c).sum(1)
        if rows_i == list(range(rows_i[0], rows_i[0] + n)):  # consecutive rows (the usual order): views
            sl = slice(rows_i[0], rows_i[0] + n)
            s["tok_sum"][sl].add_(col32).add_(cc, alpha=B)
            s["img_sq"][sl] += img
            s["sq_sum"][sl] += sqs
            s["count"][sl] += B
        else:
            idx = torch.tensor(rows_i, device=dev)
            s["tok_sum"].index_add_(0, idx, col32.to(F64) + B * cc)
            s["img_sq"].index_add_(0, idx, img)
            s["sq_sum"].index_add_(0, idx, sqs)
            s["count"].index_add_(0, idx, torch.full((n,), float(B), dtype=F64, device=dev))

    @torch.inference_mode()
    def add_pe(self, pe: torch.Tensor, n_images: int) -> None:
        """Add the (N, D) patch rows of the additive PE term for ``n_images`` images."""
        self._state["pe_sum"] += pe.to(device=self._state["pe_sum"].device, dtype=F64) * n_images
        self._state["pe_count"] += n_images

    def arrays(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """``pos_var@{l}`` = [n, N, SS_total, SS_pos, SS_img, SS_resid] per row, keyed by ``keys``; with a PE term
        also ``pe_pos@{l}`` = [<P, Pe>, |P|^2, |Pe|^2] where ``P = pos`` (N, D) and ``Pe`` the PE's patch rows
        minus their mean over tokens (docs/probe.md)."""
        s = {k: v.detach().cpu().numpy() for k, v in self.state.items()}
        out: dict[str, np.ndarray] = {}
        has_pe = s["pe_count"][0] > 0
        pe_c = None
        if has_pe:
            pe = s["pe_sum"] / s["pe_count"][0]
            pe_c = pe - pe.mean(0)
        for i, key in enumerate(keys):
            n = s["count"][i]
            if n == 0:
                continue
            tok = s["tok_sum"][i]
            N = tok.shape[0]
            mu = tok.sum(0) / (n * N)
            base = n * N * float(mu @ mu)
            total = s["sq_sum"][i] - base
            pos = float((tok * tok).sum()) / n - base
            img = s["img_sq"][i] / N - base
            out[f"pos_var@{key}"] = np.array([n, N, total, pos, img, total - pos - img])
            if pe_c is not None:
                p = tok / n - mu
                out[f"pe_pos@{key}"] = np.array([float((p * pe_c).sum()), float((p * p).sum()), float((pe_c * pe_c).sum())])
        return out


class PositionRidge:
    """Streaming ridge regression of each patch's (row, col) from its token, per layer (``pos_r2``).

    Images go to the fit, select and score sets by global index (:func:`image_set`). Per layer and set
    the state holds ``zz`` = ``Z^T Z`` (D + 1, D + 1) with ``Z = [X, 1]`` (so it holds the feature sums and
    the token count), ``zy`` = ``Z^T y`` (D + 1, 2) and ``zy_perm`` the same for labels permuted within each
    image (:func:`image_permutations`); ``yy`` (3, 2) the label sums of squares (equal for both labels).
    :meth:`solve` is scikit-learn's ``Ridge(alpha, fit_intercept=True)`` on the fit set.
    """

    def __init__(self, n_layers: int, grid: tuple[int, int], dim: int, *, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        z = lambda *s: torch.zeros(s, dtype=F64, device=device)  # noqa: E731
        self.grid, self.seed, self.dim = tuple(grid), seed, dim
        self.y = patch_coords(self.grid).to(device)
        self.state = {"zz": z(n_layers, 3, dim + 1, dim + 1), "zy": z(n_layers, 3, dim + 1, 2),
                      "zy_perm": z(n_layers, 3, dim + 1, 2), "yy": z(3, 2)}
        self._sets: torch.Tensor | None = None
        self._y_perm: torch.Tensor | None = None

    def begin(self, first_index: int, n_images: int) -> None:
        """Start a batch of ``n_images`` images whose first has global index ``first_index``."""
        index = torch.arange(first_index, first_index + n_images)
        self._sets = image_set(index).to(self.y.device)
        perm = image_permutations(index, len(self.y), self.seed).to(self.y.device)
        self._y_perm = self.y[perm]  # (B, N, 2)
        for k in range(3):
            self.state["yy"][k] += (self._sets == k).sum() * self.y.square().sum(0)

    @torch.inference_mode()
    def update(self, i: int, x: torch.Tensor) -> None:
        """Add row ``i``'s (B, N, D) patch tokens of the batch started with :meth:`begin`."""
        s, x = self.state, x.to(device=self.y.device, dtype=F64)
        D = self.dim
        for k in range(3):
            keep = self._sets == k
            if not keep.any():
                continue
            xs = x[keep]  # (b, N, D)
            flat = xs.reshape(-1, D)
            zz, sums = s["zz"][i, k], flat.sum(0)
            zz[:D, :D] += flat.T @ flat
            zz[:D, D] += sums
            zz[D, :D] += sums
            zz[D, D] += flat.shape[0]
            b = xs.shape[0]
            s["zy"][i, k, :D] += xs.sum(0).T @ self.y
            s["zy"][i, k, D] += b * self.y.sum(0)
            s["zy_perm"][i, k, :D] += torch.einsum("bnd,bnc->dc", xs, self._y_perm[keep])
            s["zy_perm"][i, k, D] += b * self.y.sum(0)

    def _stats(self, i: int, k: int, perm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self.state
        return (s["zz"][i, k].cpu().numpy(), s["zy_perm" if perm else "zy"][i, k].cpu().numpy(),
                s["yy"][k].cpu().numpy())

    def solve(self, i: int, alpha: float, perm: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(coef (2, D), intercept (2,))`` of the ridge fit on the fit set, as scikit-learn's ``Ridge`` gives them:
        ``w = (Xc^T Xc + alpha I)^-1 Xc^T yc`` on centred features and labels, intercept ``ybar - xbar w``."""
        zz, zy, _ = self._stats(i, FIT, perm)
        D = self.dim
        n = zz[D, D]
        xbar, ybar = zz[:D, D] / n, zy[D] / n
        cxx = zz[:D, :D] - n * np.outer(xbar, xbar)
        cxy = zy[:D] - n * np.outer(xbar, ybar)
        w = np.linalg.solve(cxx + alpha * np.eye(D), cxy)  # (D, 2)
        return w.T, ybar - xbar @ w

    def r2(self, i: int, k: int, coef: np.ndarray, intercept: np.ndarray, perm: bool = False) -> float:
        """R^2 of the (row, col) predictions on set ``k``, averaged over the two labels (scikit-learn's
        ``r2_score`` default), from the set's statistics: ``SSE = yy - 2 beta.zy + beta^T zz beta``."""
        zz, zy, yy = self._stats(i, k, perm)
        D = self.dim
        n = zz[D, D]
        if n == 0:
            return float("nan")
        beta = np.concatenate([coef.T, intercept[None]], axis=0)  # (D + 1, 2)
        sse = yy - 2 * (beta * zy).sum(0) + np.einsum("dc,de,ec->c", beta, zz, beta)
        sst = yy - zy[D] ** 2 / n
        return float(np.mean(1 - sse / sst))

    def scale(self, i: int) -> float:
        """``tr(Cxx) / D`` of the fit set: the unit of the regularisation grid."""
        zz = self.state["zz"][i, FIT].cpu().numpy()
        D = self.dim
        n = zz[D, D]
        if n == 0:
            return float("nan")
        xbar = zz[:D, D] / n
        return float((np.trace(zz[:D, :D]) - n * xbar @ xbar) / D)

    def arrays(self, keys: Sequence[str], tag: str = "") -> dict[str, np.ndarray]:
        """Per row ``decode_r2{tag}@{l}`` and ``decode_r2{tag}_perm@{l}``: (3, K) arrays of the alpha grid
        (:data:`ALPHA_GRID` times :meth:`scale`), R^2 on the select set and R^2 on the score set."""
        out: dict[str, np.ndarray] = {}
        for i, key in enumerate(keys):
            scale = self.scale(i)
            if not np.isfinite(scale):  # no fit image
                continue
            scale = scale if scale > 0 else 1.0  # constant tokens: every alpha gives w = 0, the label mean
            for perm in (False, True):
                rows = []
                for a in ALPHA_GRID:
                    alpha = a * scale
                    coef, icpt = self.solve(i, alpha, perm)
                    rows.append((alpha, self.r2(i, SELECT, coef, icpt, perm), self.r2(i, SCORE, coef, icpt, perm)))
                out[f"decode_r2{tag}{'_perm' if perm else ''}@{key}"] = np.array(rows).T
        return out


class PositionSample:
    """The patch tokens of the first ``n_images`` images (by global index), per layer, for the classifier.

    ``state["x"]`` (L, K, N, D) float64, image k in slot k (zero where no worker saw it), ``state["seen"]`` (K,)
    how many times each slot was filled (1 after a full pass), so several workers' states add up.
    Slots ``k % 5 == 4`` are scored, the others fit (``pos_acc``, :meth:`arrays`).
    """

    def __init__(self, n_layers: int, n_images: int, n_tokens: int, dim: int, *, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.n_images, self.seed = n_images, seed
        self.state = {"x": torch.zeros(n_layers, n_images, n_tokens, dim, dtype=F64, device=device),
                      "seen": torch.zeros(n_images, dtype=F64, device=device)}
        self._slots: slice | None = None

    def begin(self, first_index: int, n_images: int) -> None:
        """Start a batch of ``n_images`` images whose first has global index ``first_index``."""
        lo, hi = first_index, min(first_index + n_images, self.n_images)
        self._slots = slice(lo, hi) if hi > lo else None
        if self._slots is not None:
            self.state["seen"][lo:hi] += 1

    @torch.inference_mode()
    def update(self, i: int, x: torch.Tensor) -> None:
        """Add row ``i``'s (B, N, D) patch tokens (kept only for images inside the sample)."""
        if self._slots is None:
            return
        sl = self._slots
        self.state["x"][i, sl] = x[: sl.stop - sl.start].to(device=self.state["x"].device, dtype=F64)

    def arrays(self, keys: Sequence[str], tag: str = "", max_iter: int = 200) -> dict[str, np.ndarray]:
        """``decode_acc{tag}@{l}`` = [accuracy, accuracy with permuted labels, chance, fit tokens, scored tokens]
        of a standardised multinomial ``LogisticRegression(C=1)`` of the patch index (scikit-learn)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        seen = self.state["seen"].cpu().numpy() > 0
        slots = np.flatnonzero(seen)
        score = slots[slots % FOLDS == FOLDS - 1]
        fit = slots[slots % FOLDS != FOLDS - 1]
        out: dict[str, np.ndarray] = {}
        if len(fit) == 0 or len(score) == 0:
            return out
        N = self.state["x"].shape[2]
        labels = np.tile(np.arange(N), (self.n_images, 1))
        perm = image_permutations(torch.arange(self.n_images), N, self.seed).numpy()
        for i, key in enumerate(keys):
            x = self.state["x"][i].cpu().numpy()
            accs = []
            for lab in (labels, perm):
                scaler = StandardScaler().fit(x[fit].reshape(-1, x.shape[-1]))
                clf = LogisticRegression(C=1.0, max_iter=max_iter)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    clf.fit(scaler.transform(x[fit].reshape(-1, x.shape[-1])), lab[fit].ravel())
                accs.append(clf.score(scaler.transform(x[score].reshape(-1, x.shape[-1])), lab[score].ravel()))
            out[f"decode_acc{tag}@{key}"] = np.array([accs[0], accs[1], 1.0 / N, len(fit) * N, len(score) * N])
        return out


def ln_affine(norm: nn.Module, dim: int, device, dtype=F64) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(gamma, beta, eps)`` of a LayerNorm (ones / zeros where it has no affine parameters)."""
    w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
    gamma = torch.ones(dim, dtype=dtype, device=device) if w is None else w.detach().to(device, dtype)
    beta = torch.zeros(dim, dtype=dtype, device=device) if b is None else b.detach().to(device, dtype)
    return gamma, beta, float(norm.eps)


def pool_weights(pool: Callable[[torch.Tensor], torch.Tensor], T: int, device, dtype=F64) -> torch.Tensor:
    """(T,) the weight of each token in ``pool``, a linear pooling over tokens (:data:`LINEAR_POOLS`: a class
    token, the mean of the patch tokens, DeiT's mean of class and distillation tokens): ``pool`` of T one-hot
    one-channel images, ``pool(x)[b] = sum_t P_t x[b, t]``."""
    return pool(torch.eye(T, dtype=dtype, device=device).unsqueeze(-1)).reshape(T)


def logit_parts(x_l: torch.Tensor, norm: nn.Module, pool: Callable[[torch.Tensor], torch.Tensor], head: nn.Linear,
                pe: torch.Tensor | None = None, last_pe: torch.Tensor | None = None, *,
                scratch: Scratch | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The direct contribution of each component of the residual stream ``x_L`` to the predicted logit.

    ``x_L = pe + rest`` (``pe``: the additive PE term, (1, T, D), or None: all of ``x_L`` is ``rest``). Through the
    frozen Last LN, with ``sigma[b, t] = sqrt(var_d x_L[b, t] + eps)`` of the full stream, each component
    ``c`` becomes ``gamma * (c - mean_d c) / sigma`` (so the components add up to ``LN(x_L) - beta``); then
    ``ln_beta`` (beta), ``last_pe`` (the PE added after the Last LN, MPVG) and the model's pooling and head
    weight ``W`` follow. Returns ``(parts, total, pred)``: per component (B,) ``W[k] . pool(component)`` for
    the predicted class ``k`` (:data:`~pe_probe.core.report.LOGIT_COMPONENTS` present only), ``total`` (B,) the
    predicted logit minus the head bias (the parts add up to it), ``pred`` (B,) the predicted classes.
    The full-size passes run in x_L's float32 (as the model's LN does), the rest in float64. ``scratch``: a
    :class:`~pe_probe.probing.accumulate.Scratch` whose full-size buffers are kept for the next call (no allocation
    per batch).
    """
    # Through the LN every component c is linear in c for the fixed sigma of x_L, and so is the pooling (a token or
    # the mean of tokens: LINEAR_POOLS, per-token weights P_t): pool(through_ln(c))[b] = gamma * sum_t w[b, t]
    # (c[b, t] - mean_d c[b, t]) with w[b, t] = P_t / sigma[b, t], and rest's part is x_L's minus pe's. So the
    # full-size work is x_L centred per token (in the activations' float32, as the model's own LN, two-pass:
    # no cancellation whatever the tokens' offset), its sums of squares (sigma) and one weighted sum over tokens
    # (a batched matrix product), all in x_L's own memory order (a (B, D, T)-ordered stream is not reordered);
    # everything after that in float64.
    x = x_l if x_l.dtype in (torch.float32, F64) else x_l.float()
    B, T, D = x.shape
    gamma, beta, eps = ln_affine(norm, D, x.device)
    sc = Scratch() if scratch is None else scratch
    xc = torch.sub(x, x.mean(-1, keepdim=True), out=sc.like(x, "centred"))
    var = torch.sum(torch.mul(xc, xc, out=sc.like(x, "square")), -1).to(F64).div_(D)  # (B, T)
    pw = pool_weights(pool, T, x.device)  # (T,)
    weights = pw / torch.sqrt(var + eps)  # (B, T)
    whole = torch.bmm(weights.to(x.dtype).unsqueeze(1), xc).squeeze(1).to(F64) * gamma

    comps: dict[str, torch.Tensor] = {}
    if pe is not None:
        pe = pe.to(F64)
        pe_c = pe - pe.mean(-1, keepdim=True)  # (1 or B, T, D)
        comps["pe"] = (weights @ pe_c[0] if pe.shape[0] == 1 else torch.bmm(weights.unsqueeze(1), pe_c).squeeze(1)) * gamma
        comps["rest"] = whole - comps["pe"]
    else:
        comps["rest"] = whole
    comps["ln_beta"] = beta.expand(B, -1)
    if last_pe is not None:
        last = last_pe.to(F64)  # (1 or B, T, D)
        comps["last_pe"] = (pw @ last[0]).expand(B, D) if last.shape[0] == 1 else torch.bmm(pw.expand(B, 1, T), last).squeeze(1)
    W = head.weight.detach().to(F64)
    bias = torch.zeros(W.shape[0], dtype=F64, device=x.device) if head.bias is None else head.bias.detach().to(F64)
    pooled = sum(comps.values())
    logits = pooled @ W.T + bias
    pred = logits.argmax(-1)
    w_pred = W[pred]  # (B, D)
    parts = {k: (v * w_pred).sum(-1) for k, v in comps.items()}
    return parts, logits.gather(1, pred[:, None])[:, 0] - bias[pred], pred


class LogitDecomposition:
    """Running moments of :func:`logit_parts`: per component of :data:`~pe_probe.core.report.LOGIT_COMPONENTS`
    ``state["parts"]`` (C, 3) = [sum, sum of |.|, sum of squares] over images, ``total`` (3,) the same for the
    predicted logit minus the head bias, ``err_sq`` the sum of squared differences between the parts' sum and
    that total, ``count``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        z = lambda *s: torch.zeros(s, dtype=F64, device=device)  # noqa: E731
        self.state = {"parts": z(len(LOGIT_COMPONENTS), 3), "present": z(len(LOGIT_COMPONENTS)), "total": z(3),
                      "err_sq": z(1), "count": z(1)}
        self._scratch = Scratch()  # full-size buffers reused batch after batch (logit_parts)

    @torch.inference_mode()
    def update(self, x_l: torch.Tensor, norm: nn.Module, pool, head: nn.Linear, pe: torch.Tensor | None = None,
               last_pe: torch.Tensor | None = None) -> None:
        """Add a batch (arguments of :func:`logit_parts`)."""
        parts, total, _ = logit_parts(x_l, norm, pool, head, pe, last_pe, scratch=self._scratch)
        s = self.state
        dev = s["parts"].device
        mom = lambda v: torch.stack([v.sum(), v.abs().sum(), v.square().sum()]).to(dev)  # noqa: E731
        for j, name in enumerate(LOGIT_COMPONENTS):
            if name in parts:
                s["parts"][j] += mom(parts[name])
                s["present"][j] += len(total)
        s["total"] += mom(total)
        s["err_sq"] += (sum(parts.values()) - total).square().sum().to(dev)
        s["count"] += len(total)

    def arrays(self) -> dict[str, np.ndarray]:
        """``logit_parts`` (C, 4) = [count, mean, mean of |.|, mean of squares] per component (count 0 and NaN
        where the model has no such component), ``logit_total`` (4,) the same for the predicted logit minus the
        head bias, ``logit_sum_rmse`` (1,): the root mean square of (sum of parts - total)."""
        s = {k: v.detach().cpu().numpy() for k, v in self.state.items()}
        n = s["count"][0]
        if n == 0:
            return {}
        parts = np.full((len(LOGIT_COMPONENTS), 4), np.nan)
        for j in range(len(LOGIT_COMPONENTS)):
            c = s["present"][j]
            parts[j, 0] = c
            if c > 0:
                parts[j, 1:] = s["parts"][j] / c
        return {"logit_parts": parts, "logit_total": np.concatenate([[n], s["total"] / n]),
                "logit_sum_rmse": np.sqrt(s["err_sq"] / n)}


# ---------------------------------------------------------------------------------------------- the probe's wiring
def input_pe_site(view: ModelView) -> Site | None:
    """The family's additive input PE site (``hook_input_pe``) when its term is a term of the residual stream:
    the family declares an input PE (``input_pe``), the site is additive, and nothing normalises ``x_0`` before
    the blocks (``norm_pre`` is the identity). None otherwise (rope, attention bias, PEG, no PE, CLIP's norm_pre)."""
    if not view.input_pe or not isinstance(getattr(view.model, "norm_pre", nn.Identity()), nn.Identity):
        return None
    return next((s for s in view.sites("direct") if s.name == H.INPUT_PE and s.additive), None)


def additive_pe(view: ModelView) -> bool:
    """Whether the model's input PE is a term of the residual stream (:func:`input_pe_site`)."""
    return input_pe_site(view) is not None


def raster_order(view: ModelView) -> bool:
    """Whether the family's block streams hold the patch tokens in raster order of their grid (Hiera unrolls)."""
    return getattr(view, "stream_order", "unrolled" if view.name == "hiera" else "raster") == "raster"


def row_grid(view: ModelView, layer: int, n: int) -> tuple[int, int] | None:
    """The (h, w) grid of the ``n`` patch tokens of report row ``layer`` (a block or :data:`~H.LAST`), for the
    decoders' (row, col) labels: the family's ``block_grid`` / ``final_grid`` where it gives one, the input grid,
    or the input grid pooled by an integer stride s (h/s x w/s, Swin / PVT stages); None where none fits or the
    stream is not in raster order."""
    if not raster_order(view):
        return None
    cands = []
    bg = getattr(view, "block_grid", None)
    if layer != H.LAST and bg and layer < len(bg):
        cands.append(tuple(bg[layer]))
    if layer == H.LAST and getattr(view, "final_grid", None):
        cands.append(tuple(view.final_grid))
    h, w = view.grid
    cands.append((h, w))
    if n > 0 and (h * w) % n == 0:
        s = round(((h * w) // n) ** 0.5)
        if s > 0 and s * s * n == h * w and h % s == 0 and w % s == 0:
            cands.append((h // s, w // s))
    return next(((int(a), int(b)) for a, b in cands if a * b == n), None)


def _padded(pe: torch.Tensor, T: int) -> torch.Tensor:
    """A (Q, T', D) PE term as (Q, T, D): prefix rows it lacks (``no_embed_class``) are 0 (no PE there)."""
    if pe.shape[1] == T:
        return pe
    return torch.cat([pe.new_zeros(pe.shape[0], T - pe.shape[1], pe.shape[2]), pe], dim=1)


class _Feed(dict):
    """The store the recording hooks fill: each token stream is consumed as it arrives, then dropped."""

    def __init__(self, consume: Callable[[str, torch.Tensor], bool]) -> None:
        super().__init__()
        self._consume = consume

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        if self._consume(name, value):
            super().__setitem__(name, value)


class _Row:
    """The accumulators of one report row of a non-uniform family (T and D of its own)."""

    def __init__(self, var, ridge, sample, ablated_ridge, ablated_sample) -> None:
        self.var, self.ridge, self.sample = var, ridge, sample
        self.ablated_ridge, self.ablated_sample = ablated_ridge, ablated_sample
        self.shape: tuple[int, int] = (0, 0)  # (N, D) of the row's patch tokens

    def items(self):
        return [(k, getattr(self, k)) for k in ("var", "ridge", "sample", "ablated_ridge", "ablated_sample")]


class PositionProbe:
    """The position measurements of :func:`pe_probe.probe` on one model (docs/probe.md, "Position per layer").

    Rows (report layers): blocks 0..L-1 read the family's ``blocks.{l}.hook_resid_pre`` taps, layer -1
    ``hook_last_ln_in`` (the stream after the last block; families with a Last LN only), patch tokens only (the
    family's ``block_prefix`` per block where the prefix changes). ``decompose``: :class:`VarianceDecomposition`
    (with the family's additive input PE site as the PE term, :func:`input_pe_site`) and
    :class:`LogitDecomposition` (a Last LN, a linear head and a PE in the residual stream or after the Last LN).
    ``decode``: :class:`PositionRidge` and :class:`PositionSample` (``decode_images`` images), for the model and
    for a copy with every PE site of the family off (``family.replacement(site, "zero")``).

    Uniform families (every block (B, T, D) alike) keep one stacked state per accumulator; non-uniform ones
    (hierarchical stages, a class token joining late) get one accumulator per row, sized by the first batch's
    stream there, and decode a row only where its tokens lie on a known raster grid (:func:`row_grid`); the
    rows left out and why are in :meth:`meta` (``skipped``).
    """

    def __init__(self, view: ModelView, *, decompose: bool = True, decode: bool = False, decode_images: int = 10,
                 seed: int = 0, device: torch.device | str | None = None) -> None:
        if device is None:  # the model's device (float64 sums; MPS has none, so CPU there)
            param = next(view.model.parameters(), None)
            device = torch.device("cpu") if param is None or param.device.type == "mps" else param.device
        if not isinstance(decode_images, int) or isinstance(decode_images, bool) or decode_images < FOLDS:
            raise ValueError(f"decode_images must be an int >= {FOLDS}, got {decode_images!r}")
        self.view, self.decompose, self.decode = view, decompose, decode
        self.seed, self.device, self.decode_images = seed, device, decode_images
        self.uniform = bool(getattr(view, "uniform", True))
        self.layers = list(range(view.depth)) + [H.LAST]
        self._row = {H.block_hook(l, H.RESID_PRE): i for i, l in enumerate(self.layers[:-1])}
        if view.final_norm is not None:
            self._row[H.LAST_LN_IN] = len(self.layers) - 1
        self.skipped: dict[str, str] = {}
        if view.final_norm is None:
            self.skipped[str(H.LAST)] = "no Last LN: the family has no norm on every token before pooling"
        L, N, D = len(self.layers), view.grid[0] * view.grid[1], view.embed_dim
        self.pe_site = input_pe_site(view)
        self.pe_term = self.pe_site is not None
        why = self._no_logits(view) if decompose else None
        self.logits = decompose and why is None
        if why is not None:
            self.skipped["logits"] = f"no logit decomposition: {why}"
        self.logit = LogitDecomposition(device) if self.logits else None
        u = self.uniform
        self.var = VarianceDecomposition(L, N, D, device) if decompose and u else None
        self.ridge = PositionRidge(L, view.grid, D, seed=seed, device=device) if decode and u else None
        self.sample = PositionSample(L, decode_images, N, D, seed=seed, device=device) if decode and u else None
        self.ablated_ridge = PositionRidge(L, view.grid, D, seed=seed, device=device) if decode and u else None
        self.ablated_sample = PositionSample(L, decode_images, N, D, seed=seed, device=device) if decode and u else None
        self._rowacc: dict[int, _Row] = {}  # non-uniform families: per row, created on the first batch
        self._batch: tuple[int, int] | None = None
        self._derived: dict[str, torch.Tensor] = {}
        self._ablated: tuple | None = None

    def _no_logits(self, view: ModelView) -> str | None:
        """Why the direct logit decomposition does not apply to the model (None: it does)."""
        head = getattr(view.model, "head", None)
        if view.final_norm is None:
            return "no Last LN"
        if not isinstance(head, nn.Linear) or not isinstance(getattr(view.model, "fc_norm", nn.Identity()), nn.Identity):
            return "the head is not one linear layer after the Last LN"
        if view.global_pool not in LINEAR_POOLS:
            return f"global_pool={view.global_pool!r} is not a linear pooling ({', '.join(LINEAR_POOLS)})"
        if not self.pe_term and view.last_ln_pe is None:
            return "no additive PE in the residual stream or after the Last LN"
        if not (self.uniform or raster_order(view)):
            return "the stream is not in the PE's token order"
        return None

    @property
    def enabled(self) -> bool:
        """Whether anything is measured."""
        return self.decompose or self.decode

    def meta(self) -> dict:
        """What reports record of the position measurements beside the options: ``pe_term`` (the site of the
        PE term of the decomposition, or None), ``logits`` (whether the logit decomposition ran) and ``skipped``
        (report row -> why a measurement is left out there)."""
        return {"pe_term": self.pe_site.name if self.pe_site is not None else None, "logits": bool(self.logits),
                "skipped": dict(self.skipped)}

    def hooks_read(self) -> list[str]:
        """The hook names this reads: the residual streams, the input PE and the Last-LN PE where present."""
        names = list(self._row)
        if self.pe_term:
            names.append(H.INPUT_PE)
        if self.view.last_ln_pe is not None and self.logits:
            names.append(H.LAST_PE)
        return names

    def prepare(self) -> None:
        """Compute the derived (image-independent) tensors; call before any recording hook is registered."""
        fill_derived(self.view, self.hooks_read(), self._derived)

    def feed(self) -> _Feed:
        """A store for :func:`~pe_probe.probing.hooks.recording`: block streams are reduced on arrival."""
        return _Feed(self._consume)

    def _prefix(self, i: int) -> int:
        """Prefix tokens of report row ``i`` (the family's ``block_prefix`` for blocks where it has one)."""
        bp, l = getattr(self.view, "block_prefix", None), self.layers[i]
        return int(bp[l]) if bp is not None and l != H.LAST and l < len(bp) else self.view.num_prefix_tokens

    def _accs(self, i: int, patches: torch.Tensor) -> tuple[int, tuple]:
        """(row index in the state, (var, ridge, sample)) for row ``i``'s (B, N, D) patches."""
        if self.uniform:
            return i, (self.var, self.ridge, self.sample)
        row = self._rowacc.get(i)
        if row is None:
            row = self._rowacc[i] = self._new_row(i, patches.shape[1], patches.shape[2])
        return 0, (row.var, row.ridge, row.sample)

    def _new_row(self, i: int, N: int, D: int) -> _Row:
        key, dev = str(self.layers[i]), self.device
        grid = row_grid(self.view, self.layers[i], N) if self.decode and N > 1 else None
        if self.decode and N < 2:
            self.skipped[key] = f"no position decoding: {N} patch token (no position to tell apart)"
        elif self.decode and grid is None:
            self.skipped[key] = (f"no position decoding: the {N} patch tokens lie on no known raster grid"
                                 + ("" if raster_order(self.view) else " (the stream is not in raster order)"))
        dec = self.decode and grid is not None
        mk_r = lambda: PositionRidge(1, grid, D, seed=self.seed, device=dev) if dec else None  # noqa: E731
        mk_s = lambda: PositionSample(1, self.decode_images, N, D, seed=self.seed, device=dev) if dec else None  # noqa: E731
        row = _Row(VarianceDecomposition(1, N, D, dev) if self.decompose else None, mk_r(), mk_s(), mk_r(), mk_s())
        row.shape = (N, D)
        if self._batch is not None:
            for acc in (row.ridge, row.sample):
                if acc is not None:
                    acc.begin(*self._batch)
        return row

    def row_shapes(self) -> dict[int, tuple[int, int]]:
        """Non-uniform families: report row -> (N, D) of the rows whose accumulators exist (created by the first
        batch that reaches them); empty for uniform families (their state is fixed at construction)."""
        return {i: row.shape for i, row in self._rowacc.items()}

    def add_rows(self, shapes: dict[int, tuple[int, int]]) -> None:
        """Create the (empty) accumulators of the rows in ``shapes`` (row -> (N, D), :meth:`row_shapes`) that do not
        exist yet, after the last batch: so that every worker of a sharded probe holds the same state entries
        (and ``skipped`` notes) before the states are added up, also a worker that read no image."""
        self._batch = None  # no batch is open: a new row starts empty
        for i, (N, D) in sorted(shapes.items()):
            if i not in self._rowacc:
                self._rowacc[i] = self._new_row(i, int(N), int(D))

    def _consume(self, name: str, x: torch.Tensor) -> bool:
        i = self._row.get(name)
        if i is None:
            return True  # PE terms: kept for :meth:`end`
        patches = x[:, self._prefix(i):]
        j, accs = self._accs(i, patches)
        self._rows(j, patches, *accs)
        return name == H.LAST_LN_IN and self.logits

    @staticmethod
    def _rows(i: int, patches: torch.Tensor, *accs) -> None:
        for acc in accs:
            if acc is not None:
                acc.update(i, patches)

    def begin(self, feed: _Feed, first_index: int, n_images: int) -> None:
        """Start a batch (global index of its first image, its size)."""
        dict.clear(feed)
        dict.update(feed, self._derived)
        self._batch = (first_index, n_images)
        accs = [self.ridge, self.sample] + [a for r in self._rowacc.values() for a in (r.ridge, r.sample)]
        for acc in accs:
            if acc is not None:
                acc.begin(first_index, n_images)

    def _pe_patches(self, feed: _Feed) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(the PE term as (Q, T, D) with T the model's input tokens, its (Q, N, D) patch rows); Q is 1 or B."""
        if not self.pe_term or H.INPUT_PE not in feed:
            return None, None
        pe = feed[H.INPUT_PE]
        pe = (pe if pe.dim() == 3 else pe.reshape(-1, *pe.shape[-2:])).detach()
        pe = _padded(pe, self.view.num_tokens)
        return pe, pe[:, self.view.num_prefix_tokens:]

    def end(self, feed: _Feed, n_images: int) -> None:
        """Finish the batch: the PE term of the decomposition and the logit decomposition."""
        pe, patches = self._pe_patches(feed)
        if patches is not None:
            pe_n = patches[0] * n_images if patches.shape[0] == 1 else patches.sum(0)
            pe_mean = pe_n / n_images  # add_pe takes the mean row block times the images
            vars_ = [self.var] if self.uniform else [r.var for r in self._rowacc.values()]
            for var in vars_:
                if var is None:
                    continue
                if var.state["pe_sum"].shape == pe_mean.shape and (self.uniform or raster_order(self.view)):
                    var.add_pe(pe_mean, n_images)
        if self.logit is not None and H.LAST_LN_IN in feed:
            m = self.view.model
            self.logit.update(feed[H.LAST_LN_IN], self.view.last_norm, self.view.pool, m.head, pe,
                              feed.get(H.LAST_PE))
        dict.clear(feed)

    # ---------------------------------------------------------------- the ablated-PE control
    def _ablated_model(self):
        if self._ablated is None:
            model = copy.deepcopy(self.view.model).eval()  # taken before the probe registers hooks on the original
            aview = type(self.view)(model)
            sites = aview.sites("direct")
            offs = [(s.module, aview.replacement(s, "zero")) for s in sites]  # "zero" means the PE off, any kind
            if not sites:
                self.skipped["ablated"] = (f"the {aview.name} family has no PE site: the PE-ablated control is the "
                                           "model itself")
            self._ablated = (aview, offs)
        return self._ablated

    def setup_ablated(self) -> None:
        """Build the PE-ablated copy (before the recording hooks exist on the original model)."""
        if self.decode:
            self._ablated_model()

    def _consume_ablated(self, name: str, x: torch.Tensor) -> bool:
        i = self._row.get(name)
        if i is None:
            return False
        patches = x[:, self._prefix(i):]
        if self.uniform:
            self._rows(i, patches, self.ablated_ridge, self.ablated_sample)
        elif i in self._rowacc:
            row = self._rowacc[i]
            self._rows(0, patches, row.ablated_ridge, row.ablated_sample)
        return False

    @torch.inference_mode()
    def ablated(self, images: torch.Tensor) -> None:
        """Run the batch through the copy with every PE site of its family off (each site's module output
        replaced by ``family.replacement(site, "zero")``) and feed its streams to the control."""
        if not self.decode:
            return
        aview, offs = self._ablated_model()
        afeed = _Feed(self._consume_ablated)
        with contextlib.ExitStack() as stack:
            for module, fn in offs:
                stack.enter_context(replaced(module, fn))
            stack.enter_context(recording(aview, list(self._row), store=afeed))
            aview.run(images)
        dict.clear(afeed)

    def begin_ablated(self, first_index: int, n_images: int) -> None:
        """Start the control's batch (same indices as the model's)."""
        accs = [self.ablated_ridge, self.ablated_sample]
        accs += [a for r in self._rowacc.values() for a in (r.ablated_ridge, r.ablated_sample)]
        for acc in accs:
            if acc is not None:
                acc.begin(first_index, n_images)

    # ---------------------------------------------------------------- results
    @property
    def state(self) -> dict[str, torch.Tensor]:
        """Every accumulator's state, flat (``var.``, ``logit.``, ``ridge.``, ``sample.``, ``ablated_ridge.``, ...;
        non-uniform families: ``var@{layer}.`` etc. per row)."""
        out = {}
        for prefix in ("var", "logit", "ridge", "sample", "ablated_ridge", "ablated_sample"):
            acc = getattr(self, prefix)
            if acc is not None:
                out.update({f"{prefix}.{k}": v for k, v in acc.state.items()})
        for i, row in sorted(self._rowacc.items()):
            for prefix, acc in row.items():
                if acc is not None:
                    out.update({f"{prefix}@{self.layers[i]}.{k}": v for k, v in acc.state.items()})
        return out

    def state_nbytes(self) -> int:
        """Bytes held by the accumulators (fixed once every row has been seen)."""
        return sum(t.numel() * t.element_size() for t in self.state.values())

    def arrays(self) -> dict[str, np.ndarray]:
        """The report arrays (keys in docs/probe.md, "Position per layer")."""
        keys = [str(l) for l in self.layers]
        out: dict[str, np.ndarray] = {}
        if self.logit is not None:
            out.update(self.logit.arrays())
        if self.uniform:
            if self.var is not None:
                out.update(self.var.arrays(keys))
            if self.decode:
                out.update(self.ridge.arrays(keys))
                out.update(self.ablated_ridge.arrays(keys, tag="_ablated"))
                out.update(self.sample.arrays(keys))
                out.update(self.ablated_sample.arrays(keys, tag="_ablated"))
            return out
        for i, row in sorted(self._rowacc.items()):
            key = [keys[i]]
            if row.var is not None:
                out.update(row.var.arrays(key))
            if row.ridge is not None:
                out.update(row.ridge.arrays(key))
                out.update(row.ablated_ridge.arrays(key, tag="_ablated"))
                out.update(row.sample.arrays(key))
                out.update(row.ablated_sample.arrays(key, tag="_ablated"))
        return out
