"""Ablate the PE one site at a time and compare the predictions with the intact model's (streaming).

The torch side of ``pe_probe.ablate`` (which turns the result into a tidy frame): one intact pass per batch,
then per site and intervention one pass with that site's PE replaced (:mod:`~pe_probe.probing.sites`).
Only running sums are kept, so memory does not grow with the data.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core import hook_points as H
from ..core.causal import ABLATION_METRICS, INTERVENTIONS, AblationResult
from ..core.errors import DataError, UnknownNameError
from ..models.foreign import convert_model
from .distributed import all_reduce_numbers, collective_errors  # [issue 22] torch.distributed
from .hooks import eval_inference, recording
from .inputs import DataOptions, stream_data
from .sites import find_sites, replaced, shuffle_permutation
from .stream import build_meta


@dataclass
class _Tally:
    """Running sums of one (site, intervention) over the batches."""

    n: int = 0
    agree: int = 0
    correct: int = 0
    kl: float = 0.0

    def add(self, log_p: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None) -> None:
        log_q = F.log_softmax(logits.double(), dim=-1)
        self.kl += float((log_p.exp() * (log_p - log_q)).sum())
        p = logits.argmax(-1)
        self.agree += int((p == pred).sum())
        if labels is not None:
            self.correct += int((p == labels).sum())
        self.n += len(logits)


def run_ablation(
    model: nn.Module,
    data: Any,
    interventions: Sequence[str] = INTERVENTIONS,
    *,
    sites: Sequence[str | int] | None = None,
    effect: str = "direct",
    seed: int = 0,
    reuse_prefix: bool = True,
    batch_size: int = 64,
    max_images: int | None = None,
    data_dir: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_workers: int = 0,
    split: str | None = None,
    trained_on: dict | None = None,
    run: str | os.PathLike | None = None,
    progress: bool = True,
) -> AblationResult:
    """Replace one PE site at a time by each of ``interventions`` and measure the predictions against the
    intact model's: ``top1`` (labelled data only), ``agree`` and ``kl`` per (site, intervention).

    Data as for :func:`pe_probe.probe`. ``sites``: hook names or layers (default: every site); ``effect``:
    ``direct`` or ``total`` (:mod:`~pe_probe.probing.sites`); ``seed``: of the ``shuffle`` permutation, the same
    for every site and batch. With ``reuse_prefix`` a block site of a pe_probe model reruns only the blocks from
    that site on, from the intact residual stream recorded by the intact pass, and the Last-LN site only the
    Last LN and the head (same numbers, fewer blocks; the input site and families without
    :meth:`~pe_probe.families.base.Family.resume` always take full passes).
    Runs in eval mode under ``torch.inference_mode()``; hooks are removed and train flags restored even on errors.
    """
    model = convert_model(model)  # a torchvision / Hugging Face / open_clip ViT object -> its timm model
    t0 = time.perf_counter()
    interventions = [interventions] if isinstance(interventions, str) else list(interventions)
    bad = [k for k in interventions if k not in INTERVENTIONS]
    if bad or not interventions:
        raise UnknownNameError(f"interventions {interventions} must be a non-empty subset of {INTERVENTIONS}")
    options = DataOptions(batch_size=batch_size, max_images=max_images, data_dir=data_dir, mean=mean, std=std,
                          num_workers=num_workers, split=split, trained_on=trained_on)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an int")
    runner = find_sites(model, effect, sites)
    view = runner.view
    # [issue 22] under torch.distributed: this rank's exact shard of the first max_images images
    stream = stream_data(data, view, options, desc="ablate", progress=progress)
    perm = shuffle_permutation(view.grid[0] * view.grid[1], seed)
    resume = reuse_prefix and runner.resumable
    rec_names = view.resume_names() if resume else []
    depth = view.depth
    # each site takes the interventions that make sense for its kind (Site.interventions); the rest are skipped
    pairs = [(s, k) for s in runner.sites for k in interventions if k in s.interventions]
    skipped = [f"{s.name}:{k}" for s in runner.sites for k in interventions if k not in s.interventions]
    if not pairs:
        raise UnknownNameError(f"none of the interventions {interventions} applies to the sites "
                               f"{[s.name for s in runner.sites]} (valid: {[list(s.interventions) for s in runner.sites]})")
    fns = {(s.name, k): view.replacement(s, k, perm) for s, k in pairs}  # refuses what makes no sense, once
    tallies = {(s.name, k): _Tally() for s, k in pairs}
    intact_correct, n_images, labelled, block_calls = 0, 0, True, 0
    with collective_errors("ablate"), eval_inference(model), stream:  # [issue 22] a failing rank ends every rank
        for images, labels in stream:
            b = len(images)
            with recording(view, rec_names) as rec:
                intact = runner(images)
            block_calls += b * depth
            log_p = F.log_softmax(intact.double(), dim=-1)
            pred = intact.argmax(-1)
            labelled = labelled and labels is not None
            if labels is not None:
                intact_correct += int((pred == labels).sum())
            for site, kind in pairs:
                with replaced(site.module, fns[(site.name, kind)]):
                    if resume and site.layer != H.INPUT:
                        logits, blocks = view.resume(site, rec)
                    else:
                        logits, blocks = runner(images), depth
                block_calls += b * blocks
                tallies[(site.name, kind)].add(log_p, pred, logits, labels)
            n_images += b
            del rec
    # [issue 22] the counts and sums of every rank (exact: integers and float64 sums)
    n_images, intact_correct, block_calls, labelled = _combined(tallies, n_images, intact_correct, block_calls,
                                                                 labelled)
    if n_images == 0:
        raise DataError("the data yielded no images")
    rows = []
    for site, kind in pairs:
        t = tallies[(site.name, kind)]
        values = {"top1": t.correct / t.n if labelled else None, "agree": t.agree / t.n, "kl": t.kl / t.n}
        rows += [(site.name, site.kind, site.layer, kind, name, float(values[name])) for name in ABLATION_METRICS
                 if values[name] is not None]  # top1 only with labelled data
    meta = build_meta(
        view, n_images, run,
        effect=effect, interventions=interventions, sites=[s.name for s in runner.sites], seed=seed,
        skipped=skipped,
        shuffle_perm=perm.tolist(), reuse_prefix=resume, input_pe=view.input_pe,
        intact_top1=(intact_correct / n_images) if labelled else None,
        cost=dict(plain_passes_per_image=1 + len(pairs),
                  full_pass_equivalents_per_image=block_calls / (depth * n_images)),
        seconds=time.perf_counter() - t0,
    )
    return AblationResult(rows, meta)


def _combined(tallies: dict, n_images: int, intact_correct: int, block_calls: int,
              labelled: bool) -> tuple[int, int, int, bool]:
    """[issue 22] Sum the tallies and counts over the ranks of a process group (in place for the tallies); a
    batch without labels on any rank makes the result unlabelled. The identity with one process."""
    flat: dict = {"n_images": n_images, "intact_correct": intact_correct, "block_calls": block_calls,
                  "unlabelled": int(not labelled and n_images > 0)}
    for i, t in enumerate(tallies.values()):
        flat.update({f"{i}.n": t.n, f"{i}.agree": t.agree, f"{i}.correct": t.correct, f"{i}.kl": t.kl})
    out = all_reduce_numbers(flat)
    for i, t in enumerate(tallies.values()):
        t.n, t.agree, t.correct, t.kl = out[f"{i}.n"], out[f"{i}.agree"], out[f"{i}.correct"], out[f"{i}.kl"]
    return out["n_images"], out["intact_correct"], out["block_calls"], out["unlabelled"] == 0
