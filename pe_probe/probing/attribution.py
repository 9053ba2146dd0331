"""Attribute the target logit to each site's PE and to its tokens with captum's integrated gradients.

The torch side of ``pe_probe.attribute``. Per site and batch, one
``captum.attr.LayerIntegratedGradients(f, [site.tok, site.pe])`` run with the *gate construction*:

- LayerIntegratedGradients takes only *input* baselines, and a layer's baseline is its value at the input
  baseline. The PE does not depend on the image, so attributing to it with an image baseline gives exactly 0.
- The forward function therefore takes a second input, ``gate`` (B,): 1 for the inputs, 0 for the baselines,
  with the same images in both. Two forward hooks read it: the token term becomes ``where(gate, tok, 0)`` and
  the PE ``where(gate, pe, base)`` (``base``: zeros, or the row mean with ``baseline="mean"``). captum's own hooks
  are registered after these, so it captures the gated values at the ends of the path and replaces them along it.
- The PE is expanded to the batch, so every image has its own copy: per-image attributions and deltas (their
  sum over images is the attribution of the summed logits to the shared PE, by linearity).

Completeness: ``sum(attr_tok) + sum(attr_pe) - delta = f(x) - f(tokens 0, PE base)`` at that site, the rest of the
network unchanged. Gauss-Legendre integration (captum 0.9's ``riemann_trapezoid`` has weights that sum to
(n-1)/n: a relative error of 1/n even on linear functions).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.causal import (ATTRIBUTION_IMAGES, ATTRIBUTION_METRICS, AUTO, AUTO_STEPS, BASELINES, DEFAULT_BASELINE,
                           TOKEN_BASELINES, WARN_REL_DELTA, AttributionResult)
from ..core.errors import DataError, UnknownNameError
from ..models.foreign import convert_model
from .distributed import all_reduce_numbers, collective_errors, gather_first  # [issue 22]
from .hooks import eval_grad
from .inputs import DataOptions, stream_data
from .sites import Runner, Site, find_sites, replaced
from .stream import build_meta

#: Integration rules that may be asked for (captum's names); Gauss-Legendre is the default and the one tested.
METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def _gate_fns(site: Site, state: dict, baseline: str, family=None):
    """(token hook, PE replacement): at gate 1 the intact values, at gate 0 the baselines (tokens 0; the PE off
    or its row mean, as the site's family defines them: :meth:`~pe_probe.families.base.Family.baseline`). The
    PE is expanded to the batch, one copy per image (a term whose leading dimension is 1 or B)."""

    def mask(ndim: int) -> torch.Tensor:
        g = state["gate"]
        return g.view(-1, *([1] * (ndim - 1))) > 0.5

    def tok_hook(module, args, out):
        return torch.where(mask(out.ndim), out, torch.zeros_like(out))

    def pe_fn(out):
        full = out.expand(len(state["gate"]), *out.shape[1:])
        base = family.baseline(site, out, baseline)
        return torch.where(mask(out.ndim), full, base.expand_as(full))

    return tok_hook, pe_fn


def site_attributions(runner: Runner, site: Site, images: torch.Tensor, target: torch.Tensor, *,
                      baseline: str = "zero", tokens: str = "zero", n_steps: int = 32, method: str = "gausslegendre",
                      internal_batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One captum run for one site and batch: ``(token attributions, PE attributions, delta)``, shapes
    ``(B, ...)``, ``(B, T, D)`` and ``(B,)``. Call it with the model in eval mode and autograd on
    (:func:`~pe_probe.probing.hooks.eval_grad`). ``tokens="keep"``: the token term stays intact along the path
    (only the PE moves); its attributions are then returned as zeros shaped like the PE's."""
    from captum.attr import LayerIntegratedGradients

    state: dict[str, torch.Tensor] = {}

    def forward(images: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        state["gate"] = gate
        return runner(images)

    ones = torch.ones(len(images), device=images.device, dtype=images.dtype)
    tok_hook, pe_fn = _gate_fns(site, state, baseline, runner.view)
    if site.tok is None:  # a term that is not one of two summands (rotary, bias): only the PE moves
        tokens = "keep"
    layers = [site.tok, site.module] if tokens == "zero" else [site.module]
    handle = site.tok.register_forward_hook(tok_hook) if tokens == "zero" else None
    try:
        with replaced(site.module, pe_fn), warnings.catch_warnings():
            # tok and PE are two summands of one sum, not one layer feeding the other: captum's warning is moot
            warnings.filterwarnings("ignore", message="Multiple layers provided")
            lig = LayerIntegratedGradients(forward, layers)
            attrs, delta = lig.attribute((images, ones), baselines=(images, torch.zeros_like(ones)), target=target,
                                         n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
                                         return_convergence_delta=True)
    finally:
        if handle is not None:
            handle.remove()
        state.clear()
    if tokens == "keep":
        a_pe = (attrs[0] if isinstance(attrs, (list, tuple)) else attrs).detach()
        return torch.zeros_like(a_pe), a_pe, delta.detach()
    a_tok, a_pe = attrs
    return a_tok.detach(), a_pe.detach(), delta.detach()


def _targets(target: int | str | None, runner: Runner, images: torch.Tensor,
             labels: torch.Tensor | None) -> torch.Tensor:
    if target is None:
        with torch.no_grad():
            return runner(images).argmax(-1)
    if target == "label":
        if labels is None:
            raise DataError("target='label' needs batches with integer labels ((images, labels) or a dict)")
        return labels
    return torch.full((len(images),), int(target), dtype=torch.long, device=images.device)


#: Most integration steps: beyond it the rows of one pass (n_steps x batch) no longer fit any machine, and the
#: Gauss-Legendre error is far below float32's long before.
MAX_STEPS = 4096


def run_attribution(
    model: nn.Module,
    data: Any,
    target: int | str | None = None,
    *,
    sites: Sequence[str | int] | None = None,
    effect: str = "direct",
    baseline: str = DEFAULT_BASELINE,
    tokens: str = "zero",
    n_steps: int | str = AUTO,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    batch_size: int = 16,
    max_images: int | None = ATTRIBUTION_IMAGES,
    n_maps: int = 4,
    warn_rel_delta: float = WARN_REL_DELTA,
    data_dir: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_workers: int = 0,
    split: str | None = None,
    trained_on: dict | None = None,
    run: str | os.PathLike | None = None,
    progress: bool = True,
) -> AttributionResult:
    """Integrated gradients of the target logit with respect to each site's PE term and its token term.

    ``target``: None (the intact model's predicted class), a class index, or ``"label"``. The path goes from
    (tokens ``tokens``, PE ``baseline``; default the row mean, :data:`~pe_probe.core.causal.DEFAULT_BASELINE`)
    to the intact (tokens, PE) at one site, everything else the same image. A site without a row mean (a rotary
    site: ``"mean"`` not in its ``Site.interventions``) starts from the PE off instead, listed in
    ``meta["zero_baseline"]``. ``max_images``: the first
    :data:`~pe_probe.core.causal.ATTRIBUTION_IMAGES` images unless given (None: every image).
    Per site, over all images: ``pe_attr`` / ``tok_attr`` (mean over images of the signed sums;
    ``pe_attr + tok_attr - delta = f(x) - f(baseline)``), ``pe_abs`` / ``tok_abs`` (means of the sums of absolute
    values), ``pe_share = sum pe_abs / (sum pe_abs + sum tok_abs)`` (NaN with ``tokens="keep"``), ``fdiff``
    (mean ``f(x) - f(baseline)``), ``delta_abs_mean``, ``delta_abs_max``, ``rel_delta = sum |delta| /
    sum |fdiff|`` and ``n_steps`` (the integration steps those numbers come from).

    ``n_steps="auto"`` (the default): every site is attributed over all images with the first of
    :data:`~pe_probe.core.causal.AUTO_STEPS` (32); each site whose ``rel_delta`` exceeds ``warn_rel_delta`` is
    attributed again, from scratch, with twice the steps, up to 512. A site's numbers are exactly those of an
    explicit ``n_steps`` equal to its ``n_steps`` row (``meta["site_steps"]``). The data are read once per try
    (re-opened; a one-shot iterator's images are kept in memory after the first). An int ``n_steps``: one try.
    A site whose ``rel_delta`` still exceeds ``warn_rel_delta`` at the last try gets a ``RuntimeWarning``: give a
    larger ``n_steps``, or, at the input site with zero tokens and a zero PE (``x_0`` goes to 0 and LayerNorm's
    scale invariance puts the whole change near the start of the path), use ``baseline="mean"``.
    Per-token maps (summed over channels, patch rows on the grid) of the first ``n_maps`` images are kept.
    Cost per image and site and try: ``n_steps + 4`` forward and ``n_steps`` backward passes, plus one forward
    pass per try for the predicted class (``meta["cost"]`` sums them). ``internal_batch_size`` bounds the rows per
    pass (default: all ``n_steps * B`` for an int ``n_steps``; ``32 * B``, the first try's, with ``"auto"``).
    """
    model = convert_model(model)  # a torchvision / Hugging Face / open_clip ViT object -> its timm model
    t0 = time.perf_counter()
    if baseline not in BASELINES:
        raise UnknownNameError(f"baseline={baseline!r} is unknown; valid values: {BASELINES}")
    if tokens not in TOKEN_BASELINES:
        raise UnknownNameError(f"tokens={tokens!r} is unknown; valid values: {TOKEN_BASELINES}")
    if method not in METHODS:
        raise UnknownNameError(f"method={method!r} is unknown; valid values: {METHODS}")
    auto = isinstance(n_steps, str) and n_steps == AUTO
    if not auto and (isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 1 <= n_steps <= MAX_STEPS):
        raise ValueError(f"n_steps={n_steps!r} must be {AUTO!r} or an int in [1, {MAX_STEPS}]")
    if internal_batch_size is not None and (isinstance(internal_batch_size, bool)
                                            or not isinstance(internal_batch_size, int) or internal_batch_size < 1):
        raise ValueError(f"internal_batch_size={internal_batch_size!r} must be a positive int or None")
    if isinstance(n_maps, bool) or not isinstance(n_maps, int) or n_maps < 0:
        raise ValueError(f"n_maps={n_maps!r} must be an int >= 0")
    options = DataOptions(batch_size=batch_size, max_images=max_images, data_dir=data_dir, mean=mean, std=std,
                          num_workers=num_workers, split=split, trained_on=trained_on)
    n_classes = getattr(model, "num_classes", None)
    if target is not None and target != "label":
        if isinstance(target, bool) or not isinstance(target, int) or not (n_classes is None or 0 <= target < n_classes):
            raise ValueError(f"target={target!r} must be None, 'label' or a class index 0..{(n_classes or 0) - 1}")
    schedule = AUTO_STEPS if auto else (n_steps,)
    if auto and internal_batch_size is None and isinstance(batch_size, int):
        internal_batch_size = AUTO_STEPS[0] * batch_size  # a later try's passes are no larger than the first's
    runner = find_sites(model, effect, sites)
    view = runner.view
    # [issue 22] under torch.distributed: this rank's exact shard of the first max_images images
    opening = stream_data(data, view, options, desc="attribute", progress=False)  # the bar below spans every try
    total = opening.total
    kept: list | None = [] if auto and isinstance(data, Iterator) else None  # a one-shot iterator is read once

    def stream(first: bool):
        """The checked ``(images, labels)`` of one try: the data opened again for each later try."""
        if first:
            for item in opening:
                if kept is not None:
                    kept.append(item)
                yield item
        elif kept is not None:
            yield from kept
        else:
            yield from stream_data(data, view, options, desc="attribute", progress=False)

    # "mean": the row mean where the site has one (its family lists "mean" among Site.interventions); a rotation
    # has none (a mean of rotations is no rotation), so such a site starts from the PE off (meta["zero_baseline"])
    bases = {s.name: baseline if baseline == "zero" or "mean" in s.interventions else "zero" for s in runner.sites}
    per_site = dict(target=target, bases=bases, tokens=tokens, method=method, internal_batch_size=internal_batch_size,
                   n_maps=n_maps)
    done: dict[str, tuple[dict, list, list, int]] = {}  # site -> (sums, PE maps, token maps, steps)
    pending = list(runner.sites)
    n_images, forwards, backwards = 0, 0, 0
    bar = tqdm(total=None if total is None else total * len(pending), unit="img", desc=f"attribute {schedule[0]} steps",
               disable=not progress, leave=False)
    try:
        for k, steps in enumerate(schedule):
            if k:  # the next try: the bar grows by the work it adds, and says how many steps and sites
                bar.set_description(f"attribute {steps} steps, {len(pending)} site{'s' * (len(pending) > 1)}")
                if bar.total is not None:
                    bar.total += total * len(pending)
                    bar.refresh()
            with collective_errors("attribute"), eval_grad(model):  # [issue 22] a failing rank ends every rank
                sums, pe_maps, tok_maps, n = _attribute_pass(runner, pending, stream(k == 0), steps, bar, **per_site)
            n_images = _combined(sums, pe_maps, tok_maps, n, n_maps)  # [issue 22] over the ranks
            forwards += 1 + len(pending) * (steps + 4)
            backwards += len(pending) * steps
            if n_images == 0:
                break
            last = k == len(schedule) - 1
            for site in pending:
                if last or not _rel_delta(sums[site.name]) > warn_rel_delta:
                    done[site.name] = (sums[site.name], pe_maps[site.name], tok_maps[site.name], steps)
            pending = [site for site in pending if site.name not in done]
            if not pending:
                break
    finally:
        bar.close()
    if n_images == 0:
        raise DataError("the data yielded no images")
    rows = []
    for site in runner.sites:
        s, _, _, steps = done[site.name]
        denom = s["pe_abs"] + s["tok_abs"]
        split = tokens == "zero" and site.tok is not None
        values = dict(
            pe_attr=s["pe_attr"] / n_images, tok_attr=s["tok_attr"] / n_images,
            pe_abs=s["pe_abs"] / n_images, tok_abs=s["tok_abs"] / n_images,
            pe_share=s["pe_abs"] / denom if denom > 0 and split else float("nan"),
            fdiff=s["fdiff"] / n_images, delta_abs_mean=s["delta_abs"] / n_images, delta_abs_max=s["delta_abs_max"],
            rel_delta=_rel_delta(s), n_steps=steps,
        )
        rows += [(site.name, site.kind, site.layer, k, float(values[k])) for k in ATTRIBUTION_METRICS]
        if values["rel_delta"] > warn_rel_delta:
            tried = f"n_steps={steps}" if not auto else f"n_steps={AUTO!r} (up to {steps})"
            warnings.warn(f"{site.name}: sum |delta| / sum |f(x) - f(baseline)| = {values['rel_delta']:.3g} with "
                          f"{tried}: the attributions there are not complete; raise n_steps (the input site "
                          "may need 128 or more)" + ("" if bases[site.name] == "mean" or tokens == "keep" else
                                                     " and, there, use baseline='mean' or tokens='keep'"), RuntimeWarning,
                          stacklevel=3)
    meta = build_meta(
        view, n_images, run,
        target="predicted" if target is None else target, effect=effect, baseline=baseline, tokens=tokens,
        n_steps=n_steps, site_steps={name: d[3] for name, d in done.items()}, method=method,
        sites=[s.name for s in runner.sites], n_maps=min(n_maps, n_images),
        tokens_kept=[s.name for s in runner.sites if s.tok is None],
        zero_baseline=[name for name, b in bases.items() if b != baseline],
        input_pe=view.input_pe,
        cost=dict(forwards_per_image=forwards, backwards_per_image=backwards),
        seconds=time.perf_counter() - t0,
    )
    pe_maps = {name: np.concatenate(d[1]) for name, d in done.items() if d[1]}
    tok_maps = {name: np.concatenate(d[2]) for name, d in done.items() if d[2]}
    return AttributionResult(rows, meta, {s.name: pe_maps[s.name] for s in runner.sites if s.name in pe_maps},
                             {s.name: tok_maps[s.name] for s in runner.sites if s.name in tok_maps})


#: The per-site running sums of one try (``delta_abs_max`` besides: a maximum).
_SUMS = ("pe_attr", "tok_attr", "pe_abs", "tok_abs", "fdiff", "fdiff_abs", "delta_abs")


def _rel_delta(s: dict) -> float:
    """``sum |delta| / sum |f(x) - f(baseline)|`` of one site's sums (NaN when nothing changed)."""
    return s["delta_abs"] / s["fdiff_abs"] if s["fdiff_abs"] > 0 else float("nan")


def _attribute_pass(runner: Runner, sites: list[Site], batches, steps: int, bar, *, target, bases: dict, tokens: str,
                    method: str, internal_batch_size: int | None, n_maps: int) -> tuple[dict, dict, dict, int]:
    """One try: every image of ``batches`` attributed at each of ``sites`` with ``steps`` integration steps.
    Returns this rank's per-site sums, the maps of its first ``n_maps`` images and its image count."""
    h, w = runner.view.grid
    sums = {s.name: dict.fromkeys(_SUMS, 0.0) | {"delta_abs_max": 0.0} for s in sites}
    pe_maps: dict[str, list[np.ndarray]] = {s.name: [] for s in sites}
    tok_maps: dict[str, list[np.ndarray]] = {s.name: [] for s in sites}
    n_images = 0
    for images, labels in batches:
        b = len(images)
        tgt = _targets(target, runner, images, labels)
        take = max(0, min(b, n_maps - n_images))
        for site in sites:
            a_tok, a_pe, delta = site_attributions(runner, site, images, tgt, baseline=bases[site.name], tokens=tokens,
                                                   n_steps=steps, method=method, internal_batch_size=internal_batch_size)
            tok_sum, pe_sum = a_tok.reshape(b, -1).sum(1), a_pe.reshape(b, -1).sum(1)
            fdiff = tok_sum + pe_sum - delta
            s = sums[site.name]
            s["pe_attr"] += float(pe_sum.sum())
            s["tok_attr"] += float(tok_sum.sum())
            s["pe_abs"] += float(a_pe.abs().sum())
            s["tok_abs"] += float(a_tok.abs().sum())
            s["fdiff"] += float(fdiff.sum())
            s["fdiff_abs"] += float(fdiff.abs().sum())
            s["delta_abs"] += float(delta.abs().sum())
            s["delta_abs_max"] = max(s["delta_abs_max"], float(delta.abs().max()))
            if take and site.additive and a_pe.ndim == 3:
                pe_maps[site.name].append(_grid(a_pe[:take], h, w))
                if a_tok.ndim == 3:
                    tok_maps[site.name].append(_grid(a_tok[:take], h, w))
            bar.update(b)
        n_images += b
    return sums, pe_maps, tok_maps, n_images


def _grid(attr: torch.Tensor, h: int, w: int) -> np.ndarray:
    """(K, T, D) attributions -> (K, h, w): summed over channels, patch rows (the last h*w) on the input grid; a
    term with fewer rows than that grid (a later stage's tokens) stays flat, (K, T)."""
    per_token = attr.sum(-1)
    if per_token.shape[1] < h * w:
        return per_token.double().cpu().numpy()
    return per_token[:, per_token.shape[1] - h * w:].reshape(len(attr), h, w).double().cpu().numpy()


def _combined(sums: dict, pe_maps: dict, tok_maps: dict, n_images: int, n_maps: int) -> int:
    """[issue 22] Combine the per-site sums (SUM; ``delta_abs_max``: MAX) and the first ``n_maps`` maps (in rank
    order) over the ranks of a process group, in place; returns the total image count. The identity with one
    process."""
    flat = {f"{hook}\0{k}": v for hook, s in sums.items() for k, v in s.items() if k != "delta_abs_max"}
    flat["\0n_images"] = n_images
    out = all_reduce_numbers(flat)
    peak = all_reduce_numbers({hook: s["delta_abs_max"] for hook, s in sums.items()}, op="max")
    for hook, s in sums.items():
        s.update({k: out[f"{hook}\0{k}"] for k in s if k != "delta_abs_max"}, delta_abs_max=peak[hook])
    for maps in (pe_maps, tok_maps):
        for hook in sums:
            mine = np.concatenate(maps[hook]) if maps.get(hook) else np.zeros((0,))
            first = gather_first(mine, n_maps)
            maps[hook] = [first] if len(first) else []
    return out["\0n_images"]
