"""Input checking and batching for the probe: a tensor, a DataLoader (or any iterable of batches), a
``torch.utils.data.Dataset`` or a data-set name.

Every public function that streams images through a model (``probe``, ``ablate``, ``attribute``,
``attention_stats``, ``patch_shuffle``, ``probe_at_sizes``) takes the same data keywords; it gathers them once
into :class:`DataOptions` and reads the data through one entry point, :func:`stream_data` (open, check against
the run's training data, shard under ``torch.distributed``, cap at ``max_images``, batch-by-batch checks and
the progress bar).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core.errors import DataError
from .adapter import ModelView

#: Keys tried, in order, when a batch is a dict.
IMAGE_KEYS = ("image", "images", "pixel_values", "x")
#: Keys tried, in order, for the class labels of a dict batch.
LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def check_images(images: Any, view: ModelView) -> torch.Tensor:
    """Return ``images`` on the model's device and dtype after checking they fit the model.

    Raises :class:`~pe_probe.core.errors.DataError` naming the expected and actual shape when ``images`` is not
    a floating (B, C, H, W) tensor with C = the model's input channels and (H, W) = its input size.
    """
    want = f"(B, {view.in_chans}, {view.img_size[0]}, {view.img_size[1]})"
    if not isinstance(images, torch.Tensor):
        raise DataError(f"images must be a torch.Tensor of shape {want}, got {type(images).__name__}")
    if images.ndim != 4:
        raise DataError(f"images must have shape {want}, got {tuple(images.shape)} ({images.ndim} dims)")
    if not images.is_floating_point():
        raise DataError(f"images must be a floating-point tensor (normalised pixels), got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise DataError("images is an empty batch (B=0)")
    if images.shape[1] != view.in_chans:
        raise DataError(f"images have {images.shape[1]} channels; the model takes {view.in_chans} "
                        f"(expected {want}, got {tuple(images.shape)})")
    if tuple(images.shape[2:]) != view.img_size:
        raise DataError(f"images are {images.shape[2]}x{images.shape[3]} px; the model takes "
                        f"{view.img_size[0]}x{view.img_size[1]} (expected {want}, got {tuple(images.shape)})")
    param = next(view.model.parameters(), None)
    if param is not None:
        images = images.to(device=param.device, dtype=param.dtype)
    return images


def batch_images(batch: Any) -> Any:
    """The image tensor of one batch: the batch itself, its first element (``(images, labels)``) or a dict
    entry (``image``, ``images``, ``pixel_values``, ``x``)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, dict):
        for key in IMAGE_KEYS:
            if key in batch:
                return batch[key]
        raise DataError(f"a dict batch needs one of the keys {IMAGE_KEYS}; got {sorted(batch)}")
    raise DataError(f"cannot find images in a batch of type {type(batch).__name__}")


def open_data(
    data: Any,
    view: ModelView,
    *,
    batch_size: int,
    data_dir: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_workers: int = 0,
    split: str | None = None,
    trained_on: dict | None = None,
    source: dict | None = None,
) -> tuple[Any, int | None]:
    """Turn ``data`` into an iterable of batches plus the number of images when known.

    A data-set name is built with ``pe_probe.data.build_dataset(name, data_dir=..., split=...)`` (imported
    here, lazily) at the model's input size and channels, with the given mean/std (None: the data set's own
    statistics). ``split`` None picks ``all`` for a plain image folder that is not the run's own data and
    ``val`` otherwise (:func:`pe_probe.data.folders.default_split`). ``trained_on``: the run's ``config.json``
    ``data`` (with its ``signature``); a data set whose images differ from it in size, channels or class count
    raises :class:`~pe_probe.core.errors.DataError`. ``source``, when given, receives ``data``, ``data_dir``
    and ``split`` of a named data set.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(data, torch.Tensor):
        check_images(data[:1] if data.ndim == 4 and len(data) else data, view)  # shape check up front
        return (data[i:i + batch_size] for i in range(0, len(data), batch_size)), len(data)
    what = type(data).__name__
    if isinstance(data, str):
        try:
            from ..data import build_dataset
            from ..data.folders import default_split
        except ImportError as exc:  # pragma: no cover - depends on the data package being present
            raise DataError(f"data set names need pe_probe.data.build_dataset, which is not available: {exc}") from exc
        if view.img_size[0] != view.img_size[1]:
            raise DataError(f"data set names need a square input size; the model takes {view.img_size}")
        run_dir = (trained_on or {}).get("data_dir")
        own = trained_on is not None and data == trained_on.get("dataset") and (
            data_dir is None or run_dir is None
            or Path(data_dir).expanduser().resolve() == Path(run_dir).expanduser().resolve())
        split = split or default_split(data, data_dir, own=own)
        what = f"{data} {data_dir} ({split})" if data_dir is not None else f"{data} ({split})"
        if source is not None:
            source.update(data=data, data_dir=data_dir, split=split)
        data = build_dataset(data, data_dir=data_dir, split=split, img_size=view.img_size[0],
                             in_chans=view.in_chans, mean=None if mean is None else tuple(mean),
                             std=None if std is None else tuple(std),
                             **({"skip_bad": True} if own and trained_on.get("skip_bad") else {}))  # as trained
    if trained_on is not None and isinstance(trained_on.get("signature"), dict) \
            and getattr(data, "signature", None) is not None:
        from ..data.signature import DataSignature, check_fits

        check_fits(DataSignature.from_dict(trained_on["signature"]), data.signature, what)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    total = None
    if isinstance(data, DataLoader):
        try:
            total = len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not hasattr(data, "__iter__"):
        raise DataError(f"data must be a tensor of images, a DataLoader, a Dataset or a data-set name; "
                        f"got {type(data).__name__}")
    return data, total


def batch_labels(batch: Any) -> torch.Tensor | None:
    """The integer class labels of one batch (the second element of ``(images, labels)``, or a dict entry
    ``label``, ``labels``, ``target``, ``targets``, ``y``), or None when it carries none (a bare tensor, soft
    or multi-dimensional targets)."""
    labels = None
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        labels = batch[1]
    elif isinstance(batch, dict):
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    if isinstance(labels, torch.Tensor) and labels.ndim == 1 and not labels.is_floating_point():
        return labels
    return None


def iter_batches(batches: Any, view: ModelView, max_images: int | None, *,
                 labels: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Checked ``(images, labels or None)`` from ``batches`` (labels on the images' device), stopping after
    ``max_images`` images. A batch's labels must be as many as its images (:class:`DataError`);
    ``labels=False`` reads none (every second element is None)."""
    seen = 0
    for batch in batches:
        if max_images is not None and seen >= max_images:
            break
        images = check_images(batch_images(batch), view)
        lab = batch_labels(batch) if labels else None
        if lab is not None:
            if len(lab) != len(images):
                raise DataError(f"a batch has {len(images)} images but {len(lab)} labels")
            lab = lab.to(images.device)
        if max_images is not None:
            images = images[: max_images - seen]
            lab = None if lab is None else lab[: max_images - seen]
        seen += len(images)
        yield images, lab


@dataclass(frozen=True)
class DataOptions:
    """The data keywords of every streaming function, checked and normalised once.

    ``batch_size``: images per forward pass (a positive int; also the chunk size of a tensor); ``max_images``:
    stop after that many images (a positive int, or None for all); ``data_dir``, ``mean``, ``std``, ``split``
    and ``num_workers``: how a data-set name is built and loaded (:func:`open_data`); ``trained_on``: the run's
    ``config.json`` ``data``, against which the images are checked. Bad values raise
    :class:`~pe_probe.core.errors.DataError`.
    """

    batch_size: int = 64
    max_images: int | None = None
    data_dir: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_workers: int = 0
    split: str | None = None
    trained_on: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DataError(f"batch_size must be a positive int, got {self.batch_size!r}")
        m = self.max_images
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise DataError(f"max_images must be a positive int or None, got {m!r}")
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(os.fspath(self.data_dir)))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    def open_kwargs(self) -> dict:
        """The keywords of :func:`open_data` (and of :func:`~pe_probe.probing.distributed.open_sharded`)."""
        return dict(batch_size=self.batch_size, data_dir=self.data_dir, mean=self.mean, std=self.std,
                    num_workers=self.num_workers, split=self.split, trained_on=self.trained_on)


class DataStream:
    """The checked ``(images, labels or None)`` batches of one data stream, with a progress bar.

    Made by :func:`stream_data`. ``total``: the images this process will read (after ``max_images`` and, under
    ``torch.distributed``, its shard), or None when unknown; ``source``: ``data``, ``data_dir`` and ``split``
    of a named data set (empty otherwise); ``start``: the global index of this process's first image (0 in one
    process; under ``torch.distributed`` its shard's offset); ``n_images``: the images yielded so far. Iterating advances the bar
    by ``len(images) * per_image`` once the caller is done with each batch; the bar is closed when the
    iteration ends or the stream is closed (``with stream:`` closes it also after an error).
    """

    def __init__(self, batches: Any, view: ModelView, total: int | None, max_images: int | None, *,
                 source: dict, desc: str, progress: bool, labels: bool, per_image: int, start: int = 0) -> None:
        self.batches, self.view, self.total, self.max_images = batches, view, total, max_images
        self.start = start
        self.source, self.desc, self.progress, self.labels, self.per_image = source, desc, progress, labels, per_image
        self.n_images = 0
        self._live: Iterator | None = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        self._live = self._batches()
        return self._live

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        total = None if self.total is None else self.total * self.per_image
        bar = tqdm(total=total, unit="img", desc=self.desc, disable=not self.progress, leave=False)
        try:
            for images, labels in iter_batches(self.batches, self.view, self.max_images, labels=self.labels):
                self.n_images += len(images)
                yield images, labels
                bar.update(len(images) * self.per_image)
        finally:
            bar.close()

    def close(self) -> None:
        """Stop the iteration in progress (if any) and close its progress bar."""
        if self._live is not None:
            self._live.close()  # type: ignore[attr-defined]
            self._live = None

    def __enter__(self) -> "DataStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def stream_data(data: Any, view: ModelView, options: DataOptions, *, desc: str, progress: bool = True,
                sharded: bool = True, labels: bool = True, per_image: int = 1) -> DataStream:
    """The one data-stream entry point of the measuring functions: open ``data`` for ``view`` with ``options``
    and return the :class:`DataStream` of its checked batches.

    ``data`` is opened at once (:func:`open_data`: a data-set name is built; data whose images differ from
    ``options.trained_on`` is refused with :class:`~pe_probe.core.errors.DataError` before any image is read).
    With ``sharded`` (the functions whose sums are combined over ranks) this process reads its exact shard
    under ``torch.distributed`` (:func:`~pe_probe.probing.distributed.open_sharded`; the identity without a
    process group). ``labels=False`` reads no labels; ``desc``, ``progress`` and ``per_image`` (bar steps per
    image, e.g. one per site) set up the progress bar.
    """
    source: dict = {}
    max_images, start = options.max_images, 0
    if sharded:
        from .distributed import open_sharded

        batches, total, max_images, start = open_sharded(data, view, max_images=max_images, source=source,
                                                         **options.open_kwargs())
    else:
        batches, total = open_data(data, view, source=source, **options.open_kwargs())
    if total is not None and max_images is not None:
        total = min(total, max_images)
    return DataStream(batches, view, total, max_images, source=source, desc=desc, progress=progress,
                      labels=labels, per_image=per_image, start=start)
