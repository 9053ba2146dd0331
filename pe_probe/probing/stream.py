"""Stream a data set through a ViT and accumulate the PE statistics into a :class:`~pe_probe.core.report.ProbeReport`."""

from __future__ import annotations

import os
from typing import Any, Sequence

from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from ..core.errors import DataError
from ..core.report import META_KEYS, SCHEMA_VERSION, ProbeReport
from .accumulate import RunningStats
from .adapter import AdapterKind, ModelView, view_model
from .hooks import eval_inference, fill_derived, recording
from .inputs import iter_images, open_data


#: Metadata keys the probe computes itself (``probe(meta=...)`` may add others, not these).
COMPUTED_META = (*META_KEYS, "adapter", "img_size", "in_chans", "pe_probe_version", "n_norm_maps", "data",
                 "data_dir", "split", "schema_version", "family", "pe_kind", "pe_sites", "last_ln")


def model_name(model: nn.Module) -> str:
    """The registered timm name of ``model`` when known, else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def build_meta(view: ModelView, n_images: int, run: str | os.PathLike | None, **extra: Any) -> dict:
    """The report metadata (docs/probe.md): the required keys plus ``adapter``, ``img_size``, ``in_chans``, the
    report ``schema_version`` and what the PE family says of the model (``family``, ``pe_kind``, ``pe_sites``:
    name -> kind and layer; ``last_ln``: whether a norm acts on every token before pooling; family notes)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run": "" if run is None else str(run),
        "model": model_name(view.model),
        "pe_mode": view.pe_mode,
        "global_pool": view.global_pool,
        "num_prefix_tokens": view.num_prefix_tokens,
        "grid": list(view.grid),
        "depth": view.depth,
        "embed_dim": view.embed_dim,
        "n_images": n_images,
        "pe_derived": view.pe_derived,
        "receiving_blocks": list(view.receiving_blocks),
        "last_ln_pe": view.last_ln_pe,
        "adapter": view.kind,
        "img_size": list(view.img_size),
        "in_chans": view.in_chans,
        "pe_probe_version": __version__,
        "last_ln": view.final_norm is not None,
        **view.meta(),
        **extra,
    }


def probe(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 64,
    max_images: int | None = None,
    data_dir: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_workers: int = 0,
    adapter: AdapterKind = "auto",
    n_norm_maps: int = 8,
    run: str | os.PathLike | None = None,
    progress: bool = True,
    split: str | None = None,
    trained_on: dict | None = None,
    meta: dict | None = None,
) -> ProbeReport:
    """Stream ``data`` through ``model`` and return the PE statistics as a :class:`~pe_probe.core.report.ProbeReport`.

    ``data``: a (N, C, H, W) tensor of normalised images (cut into ``batch_size`` chunks), a DataLoader or
    any iterable of batches (``images``, ``(images, labels)`` or a dict with an ``image`` key), a torch
    ``Dataset``, or a data-set name built with ``pe_probe.data.build_dataset`` (``data_dir``; ``mean`` and
    ``std`` as the model was trained with, None for the data set's own statistics). Runs in eval mode under
    ``torch.inference_mode()`` (the train flag is restored after) and keeps only float64 running sums (see
    :class:`~pe_probe.probing.accumulate.RunningStats`): memory does not depend on the number of images,
    results do not depend on ``batch_size``. Every batch is checked before it reaches the model
    (:class:`~pe_probe.core.errors.DataError`). ``max_images`` stops early; ``n_norm_maps`` images keep their
    per-token norm maps; ``run`` is recorded in the metadata. Hooks are removed even on errors.

    For a data-set name, ``split`` says which part is read (``val``, ``train`` or ``all``; None: ``all`` for a
    plain image folder that is not the run's own data, else ``val``) and the report's metadata records
    ``data``, ``data_dir`` and ``split``. ``trained_on``: the run's ``config.json`` ``data``; data whose images
    differ from the run's training images in size, channels or class count is refused (``DataError``).
    ``meta``: extra metadata merged into the report's (e.g. the checkpoint it came from:
    ``CheckpointInfo.meta()``); it may not replace the keys the probe computes.

    The model is read through its PE family (:func:`pe_probe.families.family_for`; ``adapter`` forces one):
    every model gets the per-layer token stream and norms (and the Last LN where a norm acts on every token),
    layers with an additive PE the token-vs-PE statistics; the family and its sites are in ``meta``
    (``family``, ``pe_kind``, ``pe_sites``). Unsupported models raise
    :class:`~pe_probe.core.errors.UnsupportedModelError` in one line.
    """
    extra_meta = dict(meta or {})
    clash = sorted(set(extra_meta) & set(COMPUTED_META))
    if clash:
        raise ValueError(f"meta may not set {clash}: the probe computes them")
    view = view_model(model, adapter)
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise DataError(f"max_images must be a positive int or None, got {max_images!r}")
    stats = RunningStats(view, n_norm_maps=n_norm_maps)
    names = stats.hook_names()
    source: dict = {}
    batches, total = open_data(data, view, batch_size=batch_size, data_dir=None if data_dir is None else str(data_dir),
                               mean=mean, std=std, num_workers=num_workers, split=split, trained_on=trained_on,
                               source=source)
    if total is not None and max_images is not None:
        total = min(total, max_images)
    with eval_inference(model):
        derived: dict = {}
        fill_derived(view, names, derived)  # image-independent: computed once, before any hook exists
    feed = stats.feed()  # each block's statistics are added as the forward pass reaches it (cache-hot)
    with eval_inference(model), recording(view, names, store=feed):
        bar = tqdm(total=total, unit="img", desc="probe", disable=not progress, leave=False)
        try:
            for images in iter_images(batches, view, max_images):
                feed.reset(derived)
                view.run(images)
                stats.update(feed)
                bar.update(len(images))
        finally:
            bar.close()
            feed.reset()
    if stats.n_images == 0:
        raise DataError("the data yielded no images")
    computed = build_meta(view, stats.n_images, run, n_norm_maps=stats.n_maps, **source)
    return ProbeReport({**extra_meta, **computed}, stats.arrays())
