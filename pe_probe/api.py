"""Public functions that join layers: the torch layer's statistics become the analysis layer's report."""

from __future__ import annotations

import inspect

from .analysis.report import ProbeReport
from .probe.stream import stream_statistics


def probe(model, data, **options) -> ProbeReport:
    """Stream ``data`` through ``model`` and return the PE statistics as a :class:`ProbeReport`.

    ``data``: a (N, C, H, W) tensor of normalised images, a DataLoader or iterable of batches, a torch
    ``Dataset``, or a data-set name (``data_dir``, ``mean``, ``std``). Options (``batch_size``,
    ``max_images``, ``adapter``, ``n_norm_maps``, ``run``, ``progress``, ...) are those of
    :func:`pe_probe.probe.stream.stream_statistics`, which documents the streaming and its guarantees:
    eval mode and inference mode, running sums only (memory independent of the number of images), results
    independent of the batch size, hooks removed even on errors.
    """
    meta, arrays = stream_statistics(model, data, **options)
    return ProbeReport(meta, arrays)


# show the full option list in help() and IDEs
probe.__signature__ = inspect.signature(stream_statistics).replace(return_annotation=ProbeReport)
