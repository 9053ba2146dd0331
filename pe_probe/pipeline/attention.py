"""Attention and input-side measurements per run (issue 20): the public ``resolution_sweep`` (the probe at
several input sizes as one tidy :class:`~pe_probe.core.attention.ResolutionResult`) and the per-run caches
``RUN/attention.csv``, ``RUN/shuffle.csv`` and ``RUN/resolution.csv`` the figures read (each with its JSON).

docs/probe.md ("Attention and the input") defines every metric.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from torch import nn

from ..analysis.metrics import summary_frame
from ..core.attention import WHOLE_MODEL, AttentionResult, ResolutionResult, ShuffleResult
from ..core.locks import locked_on
from ..core.rundir import RunDir
from ..probing.attention import attention_stats
from ..probing.perturb import patch_shuffle, probe_at_sizes

log = logging.getLogger(__name__)

#: What ``reproduce`` / ``pe-probe figures`` measure per run: attention statistics on the first
#: :data:`RUN_ATTENTION_IMAGES` validation images, patch shuffles on every validation image (seed
#: :data:`RUN_SHUFFLE_SEED`), and the resolution sweep at :func:`run_sizes` of the training size.
RUN_ATTENTION_IMAGES, RUN_SHUFFLE_SEED = 64, 0
#: Input sizes of a run's resolution sweep, as multiples of its training size (rounded to whole patches).
RUN_SIZE_FACTORS = (0.5, 0.75, 1.0, 1.5)


def resolution_sweep(model: nn.Module, data: Any, sizes: Sequence[int], *, run: str | os.PathLike | None = None,
                     **options: Any) -> ResolutionResult:
    """The probe at each input size in ``sizes`` (:func:`pe_probe.probing.perturb.probe_at_sizes`: images
    resized, absolute PEs resampled with timm; the native size is the plain probe) as one
    :class:`~pe_probe.core.attention.ResolutionResult`: the tidy rows of each size's report
    (:func:`pe_probe.analysis.summary_frame`) plus ``top1`` (labelled data) at layer ``-3``; ``meta`` records what
    was done at each size (``grid``, ``pe_resampled``). ``options`` go to ``probe_at_sizes``."""
    out = probe_at_sizes(model, data, sizes, run=run, **options)
    rows, per_size = [], {}
    for size, (report, info) in out.items():
        frame = summary_frame(report)
        rows += [(int(size), str(r.site), str(r.pe_kind), int(r.layer), str(r.metric), float(r.value))
                 for r in frame.itertuples(index=False)]
        if "top1" in info:
            rows.append((int(size), "", "none", WHOLE_MODEL, "top1", float(info["top1"])))
        per_size[str(size)] = {k: v for k, v in info.items() if k != "img_size"}
    meta = {"run": "" if run is None else str(run), "sizes": [int(s) for s in out], "per_size": per_size,
            "n_images": next(iter(out.values()))[0].meta["n_images"] if out else 0}
    return ResolutionResult(rows, meta)


def run_sizes(img_size: int, patch: int) -> list[int]:
    """The input sizes of a run's resolution sweep: :data:`RUN_SIZE_FACTORS` of ``img_size``, each rounded to a
    whole number of ``patch``-px patches (at least one patch), without repeats."""
    sizes = [max(patch, int(round(img_size * f / patch)) * patch) for f in RUN_SIZE_FACTORS]
    return sorted(dict.fromkeys(sizes))


def _cached(rd: RunDir, cls, path, recompute: bool, measure):
    if path.is_file() and not recompute:
        try:
            return cls.load(rd.path)
        except Exception as exc:  # a damaged or old cache is measured again, not fatal
            log.warning("re-measuring %s: saved %s unreadable (%s)", rd.path, cls.KIND, exc)
    result = measure()
    result.save(rd.path)
    return result


def _model_and_data(rd: RunDir, data_dir, model, load=None):
    from .causal import _run_data

    loaded, data = _run_data(rd, data_dir, load=load)
    return (loaded if model is None else model), data


@locked_on("run_dir")  # the run is not trained or evaluated while its caches are written
def attention_run(run_dir: str | os.PathLike | RunDir, *, data_dir: str | os.PathLike | None = None,
                  max_images: int | None = RUN_ATTENTION_IMAGES, recompute: bool = False, progress: bool = True,
                  model: nn.Module | None = None, load=None) -> AttentionResult:
    """The attention statistics of a run: read from ``RUN/attention.csv`` if saved, else measured on the first
    ``max_images`` validation images and saved there. ``model``: the run's model when already loaded; ``load``: a loader of the run, called only if a
    measurement is needed (so a caller's model is loaded once, if at all)."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)

    def measure():
        m, data = _model_and_data(rd, data_dir, model, load)
        return attention_stats(m, data.pop("data"), max_images=max_images, run=rd.name, progress=progress, **data)

    return _cached(rd, AttentionResult, rd.attention_path, recompute, measure)


@locked_on("run_dir")
def shuffle_run(run_dir: str | os.PathLike | RunDir, *, data_dir: str | os.PathLike | None = None,
                max_images: int | None = None, recompute: bool = False, progress: bool = True,
                model: nn.Module | None = None, load=None) -> ShuffleResult:
    """The patch-shuffle test of a run: read from ``RUN/shuffle.csv`` if saved, else measured on its validation
    images (seed :data:`RUN_SHUFFLE_SEED`, the default block sizes) and saved there."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)

    def measure():
        m, data = _model_and_data(rd, data_dir, model, load)
        return patch_shuffle(m, data.pop("data"), seed=RUN_SHUFFLE_SEED, max_images=max_images, run=rd.name,
                             progress=progress, **data)

    return _cached(rd, ShuffleResult, rd.shuffle_path, recompute, measure)


@locked_on("run_dir")
def resolution_run(run_dir: str | os.PathLike | RunDir, *, data_dir: str | os.PathLike | None = None,
                   max_images: int | None = None, recompute: bool = False, progress: bool = True,
                   model: nn.Module | None = None, load=None) -> ResolutionResult:
    """The resolution sweep of a run: read from ``RUN/resolution.csv`` if saved, else measured on its
    validation images at :func:`run_sizes` of its training size and saved there."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)

    def measure():
        from ..families import family_for

        m, data = _model_and_data(rd, data_dir, model, load)
        fam = family_for(m)
        sizes = run_sizes(int(fam.img_size[0]), int(fam.img_size[0] // fam.grid[0]))
        return resolution_sweep(m, data.pop("data"), sizes, max_images=max_images, run=rd.name, progress=progress,
                                **data)

    return _cached(rd, ResolutionResult, rd.resolution_path, recompute, measure)


def position_tests(run: RunDir, data_dir, max_images: int | None, recompute: bool,
                   model: nn.Module | None = None, load=None) -> dict:
    """The run's attention, shuffle and resolution frames for figures (each computed once, then read back)."""
    att_images = RUN_ATTENTION_IMAGES if max_images is None else min(max_images, RUN_ATTENTION_IMAGES)
    kw = dict(data_dir=data_dir, recompute=recompute, progress=False, model=model, load=load)
    return {"attention": attention_run(run, max_images=att_images, **kw).frame(),
            "shuffle": shuffle_run(run, max_images=max_images, **kw).frame(),
            "resolution": resolution_run(run, max_images=max_images, **kw).frame()}
