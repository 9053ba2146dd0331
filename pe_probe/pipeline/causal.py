"""Causal tests of the PE per run: the caches ``RUN/ablation.csv`` / ``RUN/attribution.csv`` the figures read.
The public ``pe_probe.ablate`` / ``pe_probe.attribute`` are the torch floor's
:func:`~pe_probe.probing.ablation.run_ablation` / :func:`~pe_probe.probing.attribution.run_attribution`, which
return the core result containers (``.meta``, ``.frame()``, ``.save``, ``.load``).

docs/causal.md defines every site, intervention and metric.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable

import pandas as pd
from torch import nn

from ..analysis.causal import (Attribution, ablation_frame, attribution_of, read_ablation, read_attribution,
                               save_ablation, save_attribution)
from ..core.causal import DEFAULT_BASELINE
from ..core.locks import locked_on
from ..core.rundir import RunDir
from ..probing.ablation import run_ablation
from ..probing.attribution import run_attribution
from ..training import Run, load_run

ablate, attribute = run_ablation, run_attribution  # the public names (pe_probe.ablate, pe_probe.attribute)

log = logging.getLogger(__name__)

#: What ``reproduce`` / ``pe-probe figures`` compute per run: ablation on every validation image (or the
#: ``max_images`` they are given), attribution on the first :data:`RUN_ATTRIBUTION_IMAGES` images with the
#: row-mean PE baseline (the zero baseline converges far more slowly at the input site; docs/causal.md). On a
#: digits MPVG run (6 blocks, 360 images) that is about 2 s of ablation and 5 s of attribution on one CPU thread.
#: The steps stay an explicit 32 (not ``pe_probe.attribute``'s ``"auto"``): the committed figures were made so,
#: and the attribution figure shows each site's ``rel_delta`` and names the incomplete ones.
RUN_ATTRIBUTION_IMAGES, RUN_ATTRIBUTION_STEPS, RUN_ATTRIBUTION_BASELINE = 16, 32, DEFAULT_BASELINE


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
    result = run_ablation(model, data.pop("data"), max_images=max_images, batch_size=batch_size, run=rd.name,
                          progress=progress, **data)
    save_ablation(result, rd.path)
    return ablation_frame(result)


@locked_on("run_dir")  # the run is not trained or evaluated while its attribution is written
def attribute_run(run_dir: str | os.PathLike | RunDir, *, data_dir: str | os.PathLike | None = None,
                  max_images: int | None = RUN_ATTRIBUTION_IMAGES, n_steps: int | str = RUN_ATTRIBUTION_STEPS,
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
        result = run_attribution(model, data.pop("data"), max_images=max_images, n_steps=n_steps, baseline=baseline,
                                 batch_size=batch_size, run=rd.name, progress=progress, **data)
    for w in caught:
        log.info("%s: %s", rd.name, w.message)
    save_attribution(result, rd.path)
    return attribution_of(result)
