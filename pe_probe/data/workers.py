"""How many data-loader worker processes fit this machine."""

from __future__ import annotations

import os

import torch

#: At most this many workers per process (decoding and augmenting ImageNet-size JPEGs for one GPU).
MAX_WORKERS_CUDA = 8
MAX_WORKERS_CPU = 4


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask; a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(device: torch.device | str, *, in_memory: bool = False, cpus: int | None = None,
                        processes: int | None = None) -> int:
    """The default number of ``DataLoader`` workers for one process training or evaluating on ``device``.

    - ``in_memory`` data (already decoded tensors, e.g. digits): 0, there is nothing to overlap.
    - CUDA: the GPU computes while workers decode, so use every core but one (for the main process), at most
      :data:`MAX_WORKERS_CUDA`.
    - CPU: the model's own operations already run on every core (torch's intra-op threads), so workers only
      compete with them: on a 2-core machine 2 workers trained 13-22 % slower than none (BENCHMARKS.md,
      section 5). Workers pay off only with spare cores: 0 up to 2 cores, then a quarter of the cores, at
      most :data:`MAX_WORKERS_CPU`.

    ``cpus`` defaults to :func:`usable_cpus`, shared among ``processes`` processes on this machine (default:
    torchrun's ``LOCAL_WORLD_SIZE``, else 1).
    """
    if in_memory:
        return 0
    device = torch.device(device)
    cpus = usable_cpus() if cpus is None else cpus
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if processes is None else processes
    cpus = max(1, cpus // max(1, processes))
    if device.type == "cuda":
        return max(0, min(MAX_WORKERS_CUDA, cpus - 1))
    return 0 if cpus <= 2 else min(MAX_WORKERS_CPU, cpus // 4)
