"""Stream a data set through a ViT and accumulate the PE statistics into a :class:`~pe_probe.core.report.ProbeReport`."""

from __future__ import annotations

import os
from typing import Any, Sequence

from torch import nn

from .._version import __version__
from ..core.errors import DataError
from ..core.report import META_KEYS, SCHEMA_VERSION, ProbeReport
from ..models.foreign import convert_model
from .accumulate import RunningStats
from .adapter import AdapterKind, ModelView, view_model
from .distributed import collective_errors, reduce_position, reduce_running_stats  # [issue 22]
from .hooks import eval_inference, fill_derived, recording
from .inputs import DataOptions, stream_data
from .position import PositionProbe


#: Metadata keys the probe computes itself (``probe(meta=...)`` may add others, not these).
COMPUTED_META = (*META_KEYS, "adapter", "img_size", "in_chans", "pe_probe_version", "n_norm_maps", "data",
                 "data_dir", "split", "schema_version", "family", "pe_kind", "pe_sites", "last_ln", "position")


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
    strategy: str = "auto",
    stats_backend: str = "eager",
    decompose: bool = True,
    decode: bool = False,
    decode_images: int = 10,
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
    ``CheckpointInfo.meta()``); it may not replace the keys the probe computes. ``strategy``: how the
    statistics are reduced (same numbers to float32 rounding): ``layer`` inside each layer's hooks while its
    tensors are cache-hot, ``stacked`` all layers together after each forward pass in a fixed number of
    operations (few kernel launches; holds the batch's captured activations), ``auto`` (default): ``layer``
    on CPU, ``stacked`` elsewhere. No strategy reads anything back to the host between batches.
    ``stats_backend`` (:data:`pe_probe.core.vocab.STATS_BACKENDS`): ``eager`` (default), or ``compile`` to fuse
    each layer's float32 passes and the float64 step with ``torch.compile`` (the same report to float32
    rounding, 1e-5 relative; compiled once per shape, so it pays on long runs; eager with one warning where it
    cannot compile).

    The model is read through its PE family (:func:`pe_probe.families.family_for`; ``adapter`` forces one):
    every model gets the per-layer token stream and norms (and the Last LN where a norm acts on every token),
    layers with an additive PE the token-vs-PE statistics; the family and its sites are in ``meta``
    (``family``, ``pe_kind``, ``pe_sites``). Unsupported models raise
    :class:`~pe_probe.core.errors.UnsupportedModelError` in one line.

    Position per layer (docs/probe.md, :mod:`pe_probe.probing.position`): ``decompose`` (on by default) adds the
    variance decomposition of the residual stream (the family's ``hook_resid_pre`` taps) and the PE's direct
    logit share (a Last LN and an additive PE); ``decode`` the ridge and logistic position decoders
    (``decode_images`` images for the classifier) with their permuted-label and PE-ablated controls (a second
    forward pass per batch, on a copy of the model with every PE site of its family off); what was left out and
    why is in ``meta["position"]``.
    """
    model = convert_model(model)  # a torchvision / Hugging Face / open_clip ViT object -> its timm model
    extra_meta = dict(meta or {})
    clash = sorted(set(extra_meta) & set(COMPUTED_META))
    if clash:
        raise ValueError(f"meta may not set {clash}: the probe computes them")
    view = view_model(model, adapter)
    options = DataOptions(batch_size=batch_size, max_images=max_images, data_dir=data_dir, mean=mean, std=std,
                          num_workers=num_workers, split=split, trained_on=trained_on)
    stats = RunningStats(view, n_norm_maps=n_norm_maps, strategy=strategy, stats_backend=stats_backend)
    names = stats.hooks_read()
    # [issue 22] under torch.distributed: this rank's exact shard of the first max_images images
    stream = stream_data(data, view, options, desc="probe", progress=progress, labels=False)
    # --- position per layer (issue 19): its own hooks and accumulators, fed beside RunningStats ---------
    pos = PositionProbe(view, decompose=decompose, decode=decode, decode_images=decode_images)
    pos.setup_ablated()  # the PE-ablated copy for decode, taken before any hook exists
    pos_names, pos_feed = (pos.hooks_read() if pos.enabled else []), pos.feed()
    # --- end position
    with eval_inference(model):
        derived: dict = {}
        fill_derived(view, names, derived)  # image-independent: computed once, before any hook exists
        pos.prepare()
    feed = stats.feed()  # each block's statistics are added as the forward pass reaches it (cache-hot)
    with collective_errors("probe"), eval_inference(model), recording(view, names, store=feed), \
            recording(view, pos_names, store=pos_feed), stream:  # [issue 22] errors end every rank
        try:
            for images, _ in stream:
                first = stream.start + stats.n_images  # the batch's first GLOBAL image index (sets, samples, permutations)
                pos.begin(pos_feed, first, len(images))  # position
                feed.reset(derived)
                view.run(images)
                stats.update(feed)
                if pos.enabled:  # position: the batch's PE term and logits, then the PE-ablated control
                    pos.end(pos_feed, len(images))
                    pos.begin_ablated(first, len(images))
                    pos.ablated(images)
        finally:
            feed.reset()
            dict.clear(pos_feed)  # position: no activation outlives the call
    reduce_running_stats(stats)  # [issue 22] float64 sums, exact counts and the first maps over the ranks
    reduce_position(pos)  # [issue 22] the position sums and the decoders' sample, before their fits (arrays())
    if stats.n_images == 0:
        raise DataError("the data yielded no images")
    computed = build_meta(view, stats.n_images, run, n_norm_maps=stats.n_maps, **stream.source,
                          position={"decompose": decompose, "decode": decode, "decode_images": decode_images,
                                    **pos.meta()})
    return ProbeReport({**extra_meta, **computed}, {**stats.arrays(), **pos.arrays()})  # position: its arrays
