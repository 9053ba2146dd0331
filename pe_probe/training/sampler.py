"""Data order as a pure function of (seed, epoch): what makes a resumed run replay the same batches."""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def _mix(*parts: int) -> int:
    """A 31-bit seed from integers (stable across processes and Python versions, unlike ``hash``)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class EpochSampler(Sampler):
    """This process's share of epoch ``epoch``, from batch ``start_batch`` on, as ``(index, item_seed)`` pairs.

    The permutation depends only on ``(seed, epoch)``; process ``rank`` of ``world_size`` takes every
    ``world_size``-th item, and the tail that does not fill a batch on every process is dropped. ``item_seed``
    seeds the random augmentation of that item, so augmentation does not depend on workers or on resuming.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world_size, self.start_batch, self.shuffle = rank, world_size, start_batch, shuffle

    @property
    def steps(self) -> int:
        """Full batches per process in one epoch."""
        return self.n // (self.batch_size * self.world_size)

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(_mix(self.seed, self.epoch, 0x5EED)).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        per_rank = self.steps * self.batch_size
        for j in range(self.start_batch * self.batch_size, per_rank):
            pos = self.rank + j * self.world_size
            yield int(order[pos]), _mix(self.seed, self.epoch, pos)

    def __len__(self) -> int:
        return max(0, (self.steps - self.start_batch) * self.batch_size)


class SeededItems(Dataset):
    """Wrap a data set so that ``ds[(index, item_seed)]`` draws its random augmentation from ``item_seed``.

    In the main process the global random states are restored afterwards, so loading data never changes
    the random numbers the training step draws (dropout, mixup). ``random=False`` (no augmentation) skips it.
    """

    def __init__(self, dataset: Dataset, random: bool = True) -> None:
        self.dataset, self.random = dataset, random

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, item_seed = key
        if not self.random:  # no random augmentation: nothing to seed
            return self.dataset[index]
        if get_worker_info() is not None:  # a worker process: its global state is its own
            _seed_all(item_seed)
            return self.dataset[index]
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            _seed_all(item_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py)
                np.random.set_state(npy)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

