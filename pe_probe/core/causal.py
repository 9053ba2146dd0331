"""The nouns of the causal analyses (ablation and attribution of the PE), defined once and torch-free.

The torch floor (:mod:`pe_probe.probing.ablation`, :mod:`pe_probe.probing.attribution`) fills an
:class:`AblationResult` / :class:`AttributionResult` with plain rows, and ``pe_probe.ablate`` /
``pe_probe.attribute`` return them: ``.meta``, ``.frame()`` (tidy, built on call), ``.save(dir)``, ``.load(dir)``.

A *site* is one place where a PE term enters the network, named by the hook on that term (column ``site``),
its PE kind (``pe_kind``, :data:`~pe_probe.core.hook_points.PE_KINDS`) and a ``layer`` (:func:`pe_probe.core.hook_points.pe_site_hook`): the input (``hook_input_pe``, layer
:data:`~pe_probe.core.hook_points.INPUT` = -2), block ``i`` (``blocks.{i}.hook_pe``, layer ``i``) and the Last
LN (``hook_last_pe``, layer :data:`~pe_probe.core.hook_points.LAST` = -1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .results import Result

#: What replaces a site's PE: all rows 0; every patch row the mean patch row; the patch rows permuted.
INTERVENTIONS = ("zero", "mean", "shuffle")
#: ``direct``: only the term added at the site changes; ``total``: the change also reaches every later reader
#: of that PE (the next blocks' PE chain, the Last LN).
EFFECTS = ("direct", "total")
#: The PE an attribution path starts from: zeros, or the row mean (the PE without its position information).
BASELINES = ("zero", "mean")
#: The token term an attribution path starts from: zeros, or the intact tokens (only the PE moves).
TOKEN_BASELINES = ("zero", "keep")
#: The baseline used when none is named: the row mean, whose attributions converge at the input site (from a
#: zero PE and zero tokens ``x_0`` goes to 0, and ``rel_delta`` stays near 1 whatever the steps; docs/causal.md).
DEFAULT_BASELINE = "mean"
#: ``n_steps="auto"`` (the default): per site, the integration steps tried in turn, each over every image, until
#: the site's ``rel_delta`` is at most ``warn_rel_delta`` (block sites stop at the first; the input site of a
#: trained PVG / MPVG model needs 64-128, docs/causal.md); a site still above it at the last is warned about.
AUTO_STEPS = (32, 64, 128, 256, 512)
#: ``rel_delta`` above this: a site's attributions are incomplete (``warn_rel_delta``: warned about, and the
#: level ``n_steps="auto"`` doubles the steps to reach; ``pe-probe attribute`` marks such sites).
WARN_REL_DELTA = 0.05
#: What ``n_steps`` takes besides an int: the doubling schedule :data:`AUTO_STEPS`.
AUTO = "auto"
#: Images attributed when ``max_images`` is not given: attribution costs about ``3 n_steps + 5`` forward passes
#: per image and site (32 images of a digits model: a few seconds on one CPU core); ``max_images=None``: all.
ATTRIBUTION_IMAGES = 32

#: Columns of an ablation frame (and of ``ablation.csv``).
ABLATION_COLUMNS = ("site", "pe_kind", "layer", "intervention", "metric", "value")
#: Columns of an attribution frame (and of ``attribution.csv``).
ATTRIBUTION_COLUMNS = ("site", "pe_kind", "layer", "metric", "value")
#: Ablation metrics: accuracy on labelled data, agreement with the intact model's prediction, mean KL divergence.
ABLATION_METRICS = ("top1", "agree", "kl")
#: Attribution metrics, per site (docs/causal.md), in the order the frames list them.
#: ``n_steps``: the integration steps the site's numbers come from (with ``n_steps="auto"`` the step it stopped at;
#: files saved before it was a metric lack it, and their ``meta["n_steps"]`` says it).
ATTRIBUTION_METRICS = ("pe_attr", "tok_attr", "pe_abs", "tok_abs", "pe_share", "fdiff", "delta_abs_mean",
                       "delta_abs_max", "rel_delta", "n_steps")
#: The attribution metrics a summary table shows, one row per site (``pe-probe attribute`` prints it).
ATTRIBUTION_SUMMARY = ("pe_share", "pe_attr", "tok_attr", "fdiff", "rel_delta", "n_steps")

#: File names, in a run directory (:class:`~pe_probe.core.rundir.RunDir`) or a ``--out`` folder: the rows (CSV)
#: and what was run (JSON: the frame's ``attrs``; for attribution also the per-token maps).
ABLATION_CSV, ABLATION_JSON = "ablation.csv", "ablation.json"
ATTRIBUTION_CSV, ATTRIBUTION_JSON = "attribution.csv", "attribution.json"


#: Version of the saved ablation / attribution layout (``schema_version`` in their JSON). 2: the columns
#: ``site`` (was ``hook``) and ``pe_kind``. A saved result of another schema is refused in one line by
#: :meth:`AblationResult.load` / :meth:`AttributionResult.load` (the per-run caches are then measured again).
RESULT_SCHEMA_VERSION = 2


@dataclass
class AblationResult(Result):
    """What :func:`pe_probe.ablate` returns: rows ``(site, pe_kind, layer, intervention, metric, value)`` in forward
    order of the sites, and ``meta``: what was run and measured besides (``n_images``, ``intact_top1``, ``effect``,
    ``seed``, ``shuffle_perm``, ``cost``, ``family``, ...). :meth:`frame` gives the tidy DataFrame; :meth:`save` /
    :meth:`load` the ``ablation.csv`` + ``ablation.json`` pair."""

    rows: list[tuple[str, str, int, str, str, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    COLUMNS = ABLATION_COLUMNS
    TYPES: ClassVar[dict[str, type]] = {"layer": int, "value": float}
    CSV, JSON, KIND = ABLATION_CSV, ABLATION_JSON, "ablation"
    SCHEMA_VERSION = RESULT_SCHEMA_VERSION


@dataclass
class AttributionResult(Result):
    """What :func:`pe_probe.attribute` returns: rows ``(site, pe_kind, layer, metric, value)`` per site, ``meta``
    (``n_images``, ``n_steps``: an int or ``"auto"``, ``site_steps``: the steps of each site, ``baseline``, ...),
    and per site the per-token attribution maps of the first images on the patch grid, ``(K, h, w)`` arrays
    summed over channels: ``pe_maps`` (to the PE) and ``tok_maps`` (to the tokens). :meth:`frame`, :meth:`save`
    and :meth:`load` as for :class:`AblationResult` (the maps go into ``attribution.json``)."""

    rows: list[tuple[str, str, int, str, float]]
    meta: dict[str, Any] = field(default_factory=dict)
    pe_maps: dict[str, np.ndarray] = field(default_factory=dict)
    tok_maps: dict[str, np.ndarray] = field(default_factory=dict)

    COLUMNS = ATTRIBUTION_COLUMNS
    TYPES: ClassVar[dict[str, type]] = {"layer": int, "value": float}
    CSV, JSON, KIND = ATTRIBUTION_CSV, ATTRIBUTION_JSON, "attribution"
    SCHEMA_VERSION = RESULT_SCHEMA_VERSION

    def _extra_json(self) -> dict[str, Any]:
        return {"pe_maps": {k: np.asarray(v).tolist() for k, v in self.pe_maps.items()},
                "tok_maps": {k: np.asarray(v).tolist() for k, v in self.tok_maps.items()}}

    @classmethod
    def _from_parts(cls, rows: list, meta: dict[str, Any]) -> AttributionResult:
        maps = {k: {h: np.asarray(v, dtype=float) for h, v in (meta.pop(k, None) or {}).items()}
                for k in ("pe_maps", "tok_maps")}
        return cls(rows, meta, maps["pe_maps"], maps["tok_maps"])
