"""The runs of a study measured by the ranks of one job (``torchrun ... -m pe_probe figures``): each run is
probed, ablated and attributed by exactly one rank, alone (rank ``r`` of ``W`` takes runs ``r, r + W, ...``),
each into its own run directory under that run's lock; then every rank waits for all, and rank 0 alone reads
the cached measurements back and renders the figures once, holding the figures folder's lock.

(Spreading the runs over *jobs* is :mod:`pe_probe.pipeline.executors`: one job per run, one figures job.)
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, Sequence, TypeVar

from ..core.errors import CheckpointError
from ..core.locks import folder_lock
from ..probing.distributed import collective_errors, env_rank, local_only, rank_world

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def spread_over_ranks(items: Sequence[Any], measure: Callable[[Any], Any], what: str = "figures") -> bool:
    """Under a process group of several ranks: rank ``r`` calls ``measure`` on ``items[r::world]`` (alone:
    :func:`~pe_probe.probing.distributed.local_only`), then all ranks wait for each other; a failing rank ends
    every rank (:func:`~pe_probe.probing.distributed.collective_errors`). A run whose weights are missing
    (:class:`~pe_probe.core.errors.CheckpointError`) is logged and left to the reader. Returns whether it
    spread anything (False with one process: then nothing was called)."""
    rank, world = rank_world()
    if world == 1:
        return False
    with collective_errors(what), local_only():
        for item in items[rank::world]:
            try:
                measure(item)
            except CheckpointError as exc:
                log.warning("%s: not measured (%s)", item, exc)
    return True


def main_locked_on(param: str) -> Callable[[F], F]:
    """:func:`pe_probe.core.locks.locked_on` for rank 0 only: under a process group the other ranks take no lock
    (they write no file of that folder); with one process it is ``locked_on``."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if rank_world()[0] != 0 or env_rank() != 0:
                return fn(*args, **kwargs)
            with folder_lock(sig.bind(*args, **kwargs).arguments[param]):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
