"""Causal tests of the PE: the public ``ablate`` and ``attribute`` (the torch floor measures, the analysis floor
lays the numbers out), and their per-run caches ``RUN/ablation.csv`` / ``RUN/attribution.csv`` for figures.

docs/causal.md defines every site, intervention and metric.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from typing import Any, Callable, Sequence

import pandas as pd
from torch import nn

from ..analysis.causal import (Attribution, ablation_frame, attribution_of, read_ablation, read_attribution,
                               save_ablation, save_attribution)
from ..core.causal import DEFAULT_BASELINE, INTERVENTIONS
from ..core.locks import locked_on
from ..core.rundir import RunDir
from ..probing.ablation import run_ablation
from ..probing.attribution import run_attribution
from ..training import Run, load_run

log = logging.getLogger(__name__)

#: What ``reproduce`` / ``pe-probe figures`` compute per run: ablation on every validation image (or the
#: ``max_images`` they are given), attribution on the first :data:`RUN_ATTRIBUTION_IMAGES` images with the
#: row-mean PE baseline (the zero baseline converges far more slowly at the input site; docs/causal.md). On a
#: digits MPVG run (6 blocks, 360 images) that is about 2 s of ablation and 5 s of attribution on one CPU thread.
RUN_ATTRIBUTION_IMAGES, RUN_ATTRIBUTION_STEPS, RUN_ATTRIBUTION_BASELINE = 16, 32, DEFAULT_BASELINE


def ablate(model: nn.Module, data: Any, interventions: Sequence[str] = INTERVENTIONS, **options: Any) -> pd.DataFrame:
    """Replace one PE site at a time and compare the predictions with the intact model's.

    Returns a tidy frame ``hook, layer, intervention, metric, value``: one group of rows per site (``layer``: the
    block index, -1 the Last LN, -2 the input), intervention (``zero``, ``mean``, ``shuffle``) and metric
    (``top1`` with labelled data, ``agree``, ``kl``); ``frame.attrs`` says what was run (``n_images``,
    ``intact_top1``, ``effect``, ``seed``, ``shuffle_perm``, ``cost``, ...). ``options`` are those of
    :func:`pe_probe.probing.ablation.run_ablation` (``sites``, ``effect``, ``seed``, ``reuse_prefix``, the data
    options of :func:`pe_probe.probe`, ``run``, ``progress``). docs/causal.md has the definitions.
    """
    return ablation_frame(run_ablation(model, data, interventions, **options))


def attribute(model: nn.Module, data: Any, target: int | str | None = None, **options: Any) -> Attribution:
    """Integrated gradients (captum) of the target logit (default: the predicted class) with respect to each PE
    site's PE and its tokens, on the first 32 images unless ``max_images`` says otherwise (None: all), from the
    row-mean PE (``baseline="mean"``, the one that converges at the input site), with a progress bar.

    Returns an :class:`~pe_probe.analysis.causal.Attribution`: ``frame`` (``hook, layer, metric, value`` with
    ``pe_attr``, ``tok_attr``, ``pe_abs``, ``tok_abs``, ``pe_share``, ``fdiff``, ``delta_abs_mean``,
    ``delta_abs_max``, ``rel_delta``; ``attrs``: what was run), and per-token maps of the first images
    (``pe_maps``, ``tok_maps``: hook -> (K, h, w)). ``options`` are those of
    :func:`pe_probe.probing.attribution.run_attribution` (``sites``, ``effect``, ``baseline``, ``tokens``,
    ``n_steps``, ``internal_batch_size``, ``n_maps``, ``warn_rel_delta``, the data options of
    :func:`pe_probe.probe`). docs/causal.md has the definitions, the convergence caveats and the cost.
    """
    return attribution_of(run_attribution(model, data, target, **options))


# the public names take exactly the torch floor's keywords: show them in help() and IDEs
ablate.__signature__ = inspect.signature(run_ablation).replace(return_annotation=pd.DataFrame)  # type: ignore[attr-defined]
attribute.__signature__ = inspect.signature(run_attribution).replace(return_annotation=Attribution)  # type: ignore[attr-defined]


def _run_data(rd: RunDir, data_dir: str | os.PathLike | None,
              load: Callable[[], Run] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model and its data options; ``load``: a caller's loader of the run (so a caller that needs the
    model for several measurements loads it once)."""
    run = load() if load is not None else load_run(rd.path)
    data = run.config["data"]
    return run.model, dict(data=data["dataset"], data_dir=data_dir or data.get("data_dir"), mean=data.get("mean"),
                           std=data.get("std"), trained_on=data)


@locked_on("run_dir")  # the run is not trained or evaluated while its ablation is written
def ablate_run(run_dir: str | os.PathLike | RunDir, *, data_dir: str | os.PathLike | None = None,
               max_images: int | None = None, batch_size: int = 64, recompute: bool = False,
               progress: bool = True, load: Callable[[], Run] | None = None) -> pd.DataFrame:
    """The PE ablation of a run: read from ``RUN/ablation.csv`` if saved, else measured on the run's validation
    data (all three interventions, direct effect) and saved there (with ``ablation.json``). ``load``: returns the
    loaded run (default: :func:`~pe_probe.training.load_run`)."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if rd.ablation_path.is_file() and not recompute:
        try:
            return read_ablation(rd.path)
        except Exception as exc:  # a damaged cache is rebuilt, not fatal
            log.warning("re-ablating %s: saved ablation unreadable (%s)", rd.path, exc)
    model, data = _run_data(rd, data_dir, load)
    frame = ablate(model, data.pop("data"), max_images=max_images, batch_size=batch_size, run=rd.name,
                   progress=progress, **data)
    save_ablation(frame, rd.path)
    return frame


@locked_on("run_dir")  # the run is not trained or evaluated while its attribution is written
def attribute_run(run_dir: str | os.PathLike | RunDir, *, data_dir: str | os.PathLike | None = None,
                  max_images: int | None = RUN_ATTRIBUTION_IMAGES, n_steps: int = RUN_ATTRIBUTION_STEPS,
                  baseline: str = RUN_ATTRIBUTION_BASELINE, batch_size: int = 16, recompute: bool = False,
                  progress: bool = True, load: Callable[[], Run] | None = None) -> Attribution:
    """The PE attribution of a run: read from ``RUN/attribution.csv`` if saved, else measured on the first
    ``max_images`` validation images (predicted class, ``baseline`` PE, zero tokens) and saved there (with
    ``attribution.json``). ``load``: returns the loaded run (default: :func:`~pe_probe.training.load_run`)."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if rd.attribution_path.is_file() and not recompute:
        try:
            return read_attribution(rd.path)
        except Exception as exc:  # a damaged cache is rebuilt, not fatal
            log.warning("re-attributing %s: saved attribution unreadable (%s)", rd.path, exc)
    model, data = _run_data(rd, data_dir, load)
    # incomplete sites: the saved frame keeps each site's delta and the attribution figure's notes in index.md
    # name them, so here they are logged at INFO only (24 runs would print 24 warnings over reproduce's progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result = attribute(model, data.pop("data"), max_images=max_images, n_steps=n_steps, baseline=baseline,
                           batch_size=batch_size, run=rd.name, progress=progress, **data)
    for w in caught:
        log.info("%s: %s", rd.name, w.message)
    save_attribution(result, rd.path)
    return result
