"""Position at the input: patch shuffles with the PE kept, and the same model at other input resolutions.

- :func:`patch_shuffle`: top-1 and agreement with the unshuffled prediction when each image's patches are
  permuted within blocks of ``b`` x ``b`` patches (``b = 1``: no change; the whole grid: any patch anywhere),
  as in Naseer et al. 2021 ("Intriguing properties of vision transformers").
- :func:`probe_at_sizes`: the probe (and top-1 where labels exist) at other input sizes. A model with an
  absolute PE is copied and its PE resampled with timm's ``set_input_size`` (``resample_abs_pos_embed``); the
  native size probes the model itself, so it reproduces the plain probe exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core.attention import SHUFFLE_METRICS, ShuffleResult
from ..core.errors import CheckpointError, DataError
from .adapter import view_model
from .hooks import eval_inference
from .inputs import DataOptions, stream_data


def shuffle_patches(images: torch.Tensor, patch: int, block: int, generator: torch.Generator) -> torch.Tensor:
    """``images`` (B, C, H, W) with their ``patch``-px patches permuted within each ``block`` x ``block`` group
    of patches (one random permutation per group and image, drawn from ``generator``); ``block=1`` returns the
    images unchanged. The grid (H / patch, W / patch) must be divisible by ``block`` (ValueError)."""
    B, C, Hh, W = images.shape
    gh, gw = Hh // patch, W // patch
    if Hh % patch or W % patch or gh % block or gw % block:
        raise ValueError(f"a {gh}x{gw} grid of {patch}-px patches cannot be cut into {block}x{block} blocks")
    if block == 1:
        return images
    nb_h, nb_w = gh // block, gw // block
    x = images.reshape(B, C, nb_h, block, patch, nb_w, block, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7).reshape(B, nb_h, nb_w, block * block, C, patch, patch)
    perm = torch.rand(B, nb_h, nb_w, block * block, generator=generator).argsort(-1).to(images.device)
    x = torch.gather(x, 3, perm[..., None, None, None].expand_as(x))
    x = x.reshape(B, nb_h, nb_w, block, block, C, patch, patch)
    return x.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(B, C, Hh, W)


def shuffle_blocks(grid: tuple[int, int]) -> list[int]:
    """The block sizes of a patch-shuffle sweep on ``grid``: 1, 2, 4, ... while they divide both sides, then
    the whole grid when it is square (every patch may go anywhere)."""
    h, w = grid
    out, b = [], 1
    while h % b == 0 and w % b == 0 and b <= min(h, w):
        out.append(b)
        b *= 2
    if h == w and out[-1] != h:
        out.append(h)
    return out


def patch_shuffle(
    model: nn.Module,
    data: Any,
    *,
    blocks: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    max_images: int | None = None,
    data_dir: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    split: str | None = None,
    trained_on: dict | None = None,
    progress: bool = True,
    run: str | os.PathLike | None = None,
) -> ShuffleResult:
    """Top-1 and agreement with the unshuffled prediction when each image's patches are permuted within
    blocks of ``b`` x ``b`` patches, for each ``b`` in ``blocks`` (default :func:`shuffle_blocks`), the PE kept.

    ``data`` as for :func:`pe_probe.probe`. Returns a :class:`~pe_probe.core.attention.ShuffleResult`: rows
    ``(block, metric, value)`` (``agree``; ``top1`` where every batch has labels) and ``meta`` (``n_images``,
    ``seed``, ``grid``, ``patch``, ``blocks``, ``run``). Seeded: the
    permutations depend on ``seed`` and the order of the images only.
    """
    view = view_model(model)
    options = DataOptions(batch_size=batch_size, max_images=max_images, data_dir=data_dir, mean=mean, std=std,
                          split=split, trained_on=trained_on)
    patch = view.img_size[0] // view.grid[0]
    blocks = list(shuffle_blocks(view.grid) if blocks is None else blocks)
    for b in blocks:
        if not isinstance(b, int) or isinstance(b, bool) or b < 1 or view.grid[0] % b or view.grid[1] % b:
            raise ValueError(f"block size {b!r} does not divide the {view.grid[0]}x{view.grid[1]} patch grid")
    stream = stream_data(data, view, options, desc="patch shuffle", progress=progress, sharded=False)
    gen = torch.Generator().manual_seed(seed)
    agree = {b: 0 for b in blocks}
    correct = {b: 0 for b in blocks}
    labelled = True
    with eval_inference(model), stream:
        for images, labels in stream:
            pred = view.run(images).argmax(-1)
            labelled = labelled and labels is not None
            for b in blocks:
                out = view.run(shuffle_patches(images, patch, b, gen)).argmax(-1)
                agree[b] += int((out == pred).sum())
                if labels is not None:
                    correct[b] += int((out == labels).sum())
    n = stream.n_images
    if n == 0:
        raise DataError("the data yielded no images")
    rows: list[tuple[int, str, float]] = []
    agree_metric, top1_metric = SHUFFLE_METRICS
    for b in blocks:
        rows.append((b, agree_metric, agree[b] / n))
        if labelled:
            rows.append((b, top1_metric, correct[b] / n))
    return ShuffleResult(rows, {"run": "" if run is None else str(run), "n_images": n, "seed": seed,
                                "grid": list(view.grid), "patch": patch, "blocks": blocks})


def at_resolution(model: nn.Module, img_size: int | tuple[int, int]) -> tuple[nn.Module, dict]:
    """``model`` for ``img_size`` inputs and what was done: the model itself at its own size, else a copy
    whose input size was changed with timm's ``set_input_size`` (an absolute PE resampled with
    ``resample_abs_pos_embed``). Returns ``(model, info)``, ``info`` = ``img_size``, ``grid``,
    ``pe_resampled`` (the PE's old and new row counts, or None)."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    view = view_model(model)
    if size == tuple(view.img_size):
        return model, {"img_size": list(size), "grid": list(view.grid), "pe_resampled": None}
    if not hasattr(model, "set_input_size"):
        raise CheckpointError(f"{type(model).__name__} has no set_input_size; it cannot be run at {size}")
    patch = view.img_size[0] // view.grid[0]
    if size[0] % patch or size[1] % patch:
        raise DataError(f"{size[0]}x{size[1]} px is not a whole number of {patch}-px patches")
    new = copy.deepcopy(model)
    rows_before = None if getattr(model, "pos_embed", None) is None else int(model.pos_embed.shape[1])
    new.set_input_size(img_size=size)
    rows_after = None if getattr(new, "pos_embed", None) is None else int(new.pos_embed.shape[1])
    grid = [int(g) for g in new.patch_embed.grid_size]
    info = {"img_size": list(size), "grid": grid,
            "pe_resampled": None if rows_before == rows_after else [rows_before, rows_after]}
    return new, info


def check_sizes(model: nn.Module, sizes: Sequence[int]) -> list[int]:
    """``sizes`` as a list once each is a positive int and a whole number of the model's patches (else
    ValueError / :class:`~pe_probe.core.errors.DataError` naming the size): checked before anything is measured."""
    view = view_model(model)
    patch = view.img_size[0] // view.grid[0]
    out = []
    for s in sizes:
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise ValueError(f"sizes must be positive ints (pixels), got {s!r}")
        if s % patch:
            raise DataError(f"{s}x{s} px is not a whole number of {patch}-px patches")
        out.append(s)
    return out


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``images`` resized to ``size`` (bilinear with antialiasing; unchanged at their own size)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


class _Resized:
    """The batches of ``data`` (read for ``view`` with ``options``, all of them: ``max_images`` is applied by
    whoever reads this) with their images resized to ``size`` (labels kept): a plain iterable of batches (not a
    ``Dataset``, which the probe would batch again) that opens the data afresh on each iteration."""

    def __init__(self, data: Any, view, options: DataOptions, size: tuple[int, int]) -> None:
        self.data, self.view, self.size = data, view, size
        self.options = dataclasses.replace(options, max_images=None)

    def __iter__(self):
        for images, labels in stream_data(self.data, self.view, self.options, desc="", progress=False, sharded=False):
            images = resize_images(images, self.size)
            yield images if labels is None else (images, labels)


def probe_at_sizes(
    model: nn.Module,
    data: Any,
    sizes: Sequence[int],
    *,
    batch_size: int = 64,
    max_images: int | None = None,
    data_dir: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    split: str | None = None,
    trained_on: dict | None = None,
    progress: bool = True,
    **probe_kwargs: Any,
) -> dict[int, tuple[Any, dict]]:
    """Probe ``model`` at each input size in ``sizes`` (pixels, square): ``{size: (report, info)}``.

    Images are read at the model's own size and resized (:func:`resize_images`), so every size sees the same
    images; the model is :func:`at_resolution` (PE resampled where it is absolute; the native size probes the
    model itself and gives the plain probe's report). ``info`` adds ``top1`` (where the data has labels) and is
    also recorded in the report's metadata (``resolution``). ``trained_on``: the run's ``config.json`` ``data``
    (its images are checked against it at the model's own size, and it picks the split as the probe does).
    Other keywords go to :func:`pe_probe.probe`.
    """
    from .stream import probe

    view = view_model(model)
    options = DataOptions(batch_size=batch_size, max_images=max_images, data_dir=data_dir, mean=mean, std=std,
                          split=split, trained_on=trained_on)
    out: dict[int, tuple[Any, dict]] = {}
    sizes = check_sizes(model, sizes)
    for s in tqdm(sizes, desc="resolutions", disable=not progress, leave=False):
        m, info = at_resolution(model, s)
        resized = _Resized(data, view, options, (s, s))
        correct = seen = 0
        labelled = True
        top1 = stream_data(resized, view_model(m), options, desc="top-1", progress=False, sharded=False)
        with eval_inference(m), top1:
            for images, labels in top1:
                if labels is None:
                    labelled = False
                    break
                correct += int((m(images).argmax(-1) == labels).sum())
                seen += len(images)
        if labelled and seen:
            info["top1"] = correct / seen
        report = probe(m, resized, batch_size=batch_size, max_images=max_images, progress=progress,
                       meta={"resolution": info}, **probe_kwargs)
        out[s] = (report, info)
    return out
