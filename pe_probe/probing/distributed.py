"""Measuring under ``torch.distributed`` (torchrun, or a process group the caller started): exact sharding of
the images, exact combination of the running sums, one writer.

- **Sharding** (:func:`batch_shard`, :func:`open_sharded`): the images (after ``max_images``) are cut into the
  batches one process would read, and process ``r`` of ``W`` reads a contiguous run of whole batches. Every
  image is read exactly once (no padding duplicates, unlike ``DistributedSampler``), and every batch is the
  very batch one process would have fed the model, so per-batch float32 partials are bit-identical and only
  the order in which float64 batch sums are added differs (relative differences around 1e-16).
- **Combining** (:func:`all_reduce_state`, :func:`reduce_running_stats`, :func:`reduce_position`,
  :func:`all_reduce_numbers`, :func:`gather_first`): float64 sums and counts are all-reduced with SUM (counts
  are integers far below 2**53, so exact); the min/max columns of moments (``[count, sum, sumsq, min, max]``,
  keys ending in ``_mom``) with MIN/MAX; "the first K images" (norm maps, attribution maps) are gathered in
  rank order, which with contiguous shards are the first K images of the data set. The position analyses
  assign images to their sets and samples by global index (:func:`open_sharded` gives each rank its first),
  so their states add up the same way; their fits run once the states are combined.
- **Failures** (:func:`collective_errors`): every rank leaves a measuring loop through one exchange; when
  any rank raised, every rank raises (the failing one its own error, the others :class:`PeerFailedError`
  carrying the failing rank's one-line message), so no rank waits forever in a collective.
- **One writer** (:func:`is_main`, :func:`main_lock`): rank 0 alone takes the folder lock and writes.

With no process group, or one of a single process, or inside :func:`local_only`, every function here is
the identity: single-process behaviour is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler, Subset

from ..core.errors import DataError, PEProbeError


class PeerFailedError(PEProbeError, RuntimeError):
    """Another rank of the job failed; the message is that rank's one-line error."""


_local = threading.local()


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within the block this process measures alone, even under a process group (used when the ranks of a
    job split the runs of a study between them, each run measured by one rank)."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the process group this process measures in; ``(0, 1)`` without one (or
    inside :func:`local_only`)."""
    if getattr(_local, "depth", 0) or not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return rank_world()[0] == 0


def env_rank() -> int:
    """This process's rank as the launcher says (torchrun's ``RANK``, SLURM's ``SLURM_PROCID``), before any
    process group is joined; 0 outside a launcher."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


@contextlib.contextmanager
def main_lock(folder: str | os.PathLike) -> Iterator[bool]:
    """Rank 0 holds the writer lock of ``folder`` (:func:`pe_probe.core.locks.folder_lock`) for the block; the
    other ranks take none. Yields whether this process is the writer."""
    from ..core.locks import folder_lock

    if rank_world()[0] == 0 and env_rank() == 0:
        with folder_lock(folder):
            yield True
    else:
        yield False


@contextlib.contextmanager
def joined_group(device: str | None = None) -> Iterator[Any]:
    """Join torchrun's process group for the block when ``WORLD_SIZE`` > 1 (gloo on CPU, NCCL on CUDA, one GPU
    per local rank) and leave it afterwards; yields the :class:`~pe_probe.training.distributed.DistEnv`. A
    group that is already initialised is used as it is and left running."""
    from ..training.distributed import DistEnv, init_distributed, shutdown

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        yield DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)
        return
    env = init_distributed(device)
    try:
        yield env
    finally:
        shutdown(env)


@contextlib.contextmanager
def quiet_peers() -> Iterator[None]:
    """On a rank other than 0, turn an error that rank 0 reports for the whole job (``reported_by_main``, see
    :func:`collective_errors`) into a silent exit with code 2, so a command prints its one line once."""
    try:
        yield
    except Exception as exc:
        if rank_world()[0] != 0 and getattr(exc, "reported_by_main", False):
            raise SystemExit(2) from None
        raise


# ---------------------------------------------------------------------------------------------------- sharding
def batch_shard(n: int, batch_size: int, rank: int, world_size: int) -> range:
    """The images ``rank`` of ``world_size`` reads out of ``n``: a contiguous run of whole batches of
    ``batch_size`` (the last batch may be short). The shards are disjoint and cover ``range(n)``; their batch
    counts differ by at most one; a rank may get none when there are fewer batches than ranks."""
    if n <= 0:
        return range(0)
    batches = -(-n // batch_size)
    lo, hi = rank * batches // world_size, (rank + 1) * batches // world_size
    return range(min(lo * batch_size, n), min(hi * batch_size, n))


def open_sharded(data: Any, view, *, batch_size: int, max_images: int | None,
                 **options: Any) -> tuple[Any, int | None, int | None, int]:
    """:func:`pe_probe.probing.inputs.open_data`, then this rank's exact shard (:func:`batch_shard`) of the first
    ``max_images`` images. Returns ``(batches, images this rank reads or None, max_images left to apply, global
    index of this rank's first image)`` (the last is 0 without a process group).

    Without a process group this is ``open_data`` itself. Under one, ``data`` must be a tensor, a ``Dataset``,
    a data-set name or a ``DataLoader`` over a map-style data set read in order (its own sampler would decide
    which images a rank sees): other iterables raise :class:`~pe_probe.core.errors.DataError`.
    """
    from .inputs import open_data

    batches, total = open_data(data, view, batch_size=batch_size, **options)
    rank, world = rank_world()
    if world == 1:
        return batches, total, max_images, 0
    if isinstance(data, torch.Tensor):
        n = len(data) if max_images is None else min(len(data), max_images)
        r = batch_shard(n, batch_size, rank, world)
        part = data[r.start:r.stop]
        return (part[i:i + batch_size] for i in range(0, len(part), batch_size)), len(part), None, r.start
    loader = batches
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset) \
            or loader.batch_size is None or not isinstance(loader.sampler, SequentialSampler):
        raise DataError("under torch.distributed the data must be a tensor, a Dataset, a data-set name or a "
                        "DataLoader reading a map-style data set in order (shuffle=False), so that each "
                        f"process reads an exact shard; got {type(data).__name__}")
    n = len(loader.dataset)
    n = n if max_images is None else min(n, max_images)
    if loader.drop_last:
        n -= n % loader.batch_size
    r = batch_shard(n, loader.batch_size, rank, world)
    part: Dataset = Subset(loader.dataset, list(r))
    sharded = DataLoader(part, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                         collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                         worker_init_fn=loader.worker_init_fn, timeout=loader.timeout)
    return sharded, len(r), None, r.start


# ---------------------------------------------------------------------------------------------------- combining
def _comm_device(t: torch.Tensor) -> torch.device:
    """Where a collective on ``t`` runs: this rank's GPU for NCCL, the CPU otherwise (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _moment_cols(key: str, t: torch.Tensor) -> bool:
    """Whether ``t`` is a moments tensor with min/max columns (``[..., 5]``: count, sum, sumsq, min, max)."""
    return key.endswith("_mom") and t.ndim >= 1 and t.shape[-1] == 5


@torch.inference_mode()  # the probe's states are inference tensors
def all_reduce_state(state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    """All-reduce an accumulator's state (float64 tensors) in place, in float64: SUM for sums and counts, and
    for the moments with min/max columns (keys ending in ``_mom`` with a last dimension of 5) MIN on column 3
    and MAX on column 4. ``skip``: keys that are not sums (e.g. per-image maps; see :func:`gather_first`).
    Three collectives whatever the number of tensors."""
    if rank_world()[1] == 1:
        return
    keys = [k for k in state if k not in skip]
    if not keys:
        return
    dev = _comm_device(state[keys[0]])
    sums, mins, maxs = [], [], []
    for k in keys:
        t = state[k].to(device=dev, dtype=torch.float64)
        if _moment_cols(k, t):
            sums.append(t[..., :3].reshape(-1))
            mins.append(t[..., 3].reshape(-1))
            maxs.append(t[..., 4].reshape(-1))
        else:
            sums.append(t.reshape(-1))
    flat = {op: torch.cat(parts) if parts else None for op, parts in
            ((dist.ReduceOp.SUM, sums), (dist.ReduceOp.MIN, mins), (dist.ReduceOp.MAX, maxs))}
    for op, t in flat.items():
        if t is not None:
            dist.all_reduce(t, op=op)
    pos = {op: 0 for op in flat}

    def take(op, count: int) -> torch.Tensor:
        start = pos[op]
        pos[op] = start + count
        return flat[op][start:start + count]

    for k in keys:
        t = state[k]
        if _moment_cols(k, t):
            rows = t[..., 0].numel()
            lead = t.shape[:-1]
            t[..., :3] = take(dist.ReduceOp.SUM, rows * 3).reshape(*lead, 3).to(t.device, t.dtype)
            t[..., 3] = take(dist.ReduceOp.MIN, rows).reshape(lead).to(t.device, t.dtype)
            t[..., 4] = take(dist.ReduceOp.MAX, rows).reshape(lead).to(t.device, t.dtype)
        else:
            t.copy_(take(dist.ReduceOp.SUM, t.numel()).reshape(t.shape))


def all_reduce_numbers(values: dict[str, float | int], op: str = "sum") -> dict[str, float | int]:
    """The ``op`` (``sum``, ``min`` or ``max``) over all ranks of a few numbers, in float64; ints stay ints
    (exact below 2**53). The identity with one process."""
    if rank_world()[1] == 1 or not values:
        return dict(values)
    red = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    t = t.to(_comm_device(t))
    dist.all_reduce(t, op=red)
    out = t.cpu().tolist()
    return {k: (int(round(v)) if isinstance(values[k], (int, bool)) else v) for k, v in zip(keys, out)}


def gather_objects(obj: Any) -> list:
    """Every rank's ``obj`` (small picklable data), in rank order; ``[obj]`` with one process."""
    if rank_world()[1] == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_first(rows: Any, k: int) -> Any:
    """The first ``k`` rows of the concatenation, in rank order, of every rank's ``rows`` (a numpy array or a
    tensor, moved to the CPU): with contiguous shards, the rows of the data set's first ``k`` images."""
    import numpy as np

    parts = gather_objects(rows.detach().cpu() if isinstance(rows, torch.Tensor) else rows)
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return rows
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)[:k]
    return np.concatenate(parts)[:k]


@torch.inference_mode()
def reduce_running_stats(stats) -> None:
    """Combine a :class:`~pe_probe.probing.accumulate.RunningStats` over the ranks, in place: its float64 sums
    and moments (:func:`all_reduce_state`), its image count (exact) and its first ``n_norm_maps`` norm maps
    (in rank order). A rank that read no image contributes zeros. The identity with one process."""
    if rank_world()[1] == 1:
        return
    if stats.state is None:  # this rank read nothing: the neutral state (zeros, +inf/-inf for min/max)
        param = next(stats.view.model.parameters(), None)
        stats._init(param.device if param is not None else torch.device("cpu"))
    _align_state_keys(stats)
    maps = tuple(m for m in ("norm_before", "norm_after") if m in stats.state)  # none without a Last LN
    all_reduce_state(stats.state, skip=maps)
    total = all_reduce_numbers({"n_images": stats.n_images})["n_images"]
    k = stats.n_norm_maps
    got = gather_objects((stats.n_maps, [stats.state[m][:stats.n_maps].cpu() for m in maps]))
    n_maps = min(k, sum(n for n, _ in got))
    for i, m in enumerate(maps):
        rows = [parts[i] for n, parts in got if n]
        if rows:
            stats.state[m][:n_maps] = torch.cat(rows)[:n_maps].to(stats.state[m].device)
    stats.n_images, stats.n_maps = total, n_maps


@torch.inference_mode()
def reduce_position(pos) -> None:
    """Combine a :class:`~pe_probe.probing.position.PositionProbe` over the ranks, in place, before its fits: every
    rank first gets the same per-row accumulators (non-uniform families create a row's on the first batch that
    reaches it, so a rank that read no image has none: :meth:`~pe_probe.probing.position.PositionProbe.add_rows`
    adds the missing ones, empty), then every float64 state entry is all-reduced with SUM
    (:func:`all_reduce_state`). Every entry is a sum over images assigned by their global index; the decoders'
    bounded sample (``sample.x``, image k in slot k, zeros where a rank did not read image k) is filled by
    exactly one rank per slot, so its sum is the single-process sample exactly. The ridge solve and the logistic
    fit then run on the combined state, identically on every rank. The identity with one process."""
    if rank_world()[1] == 1 or not pos.enabled:
        return
    rows: dict[int, tuple[int, int]] = {}
    for part in gather_objects(pos.row_shapes()):
        for i, shape in part.items():
            rows.setdefault(i, shape)
    pos.add_rows(rows)
    specs = gather_objects([(k, tuple(t.shape)) for k, t in pos.state.items()])
    if any(spec != specs[0] for spec in specs):  # a defect, not bad input: the collectives would mix entries
        raise RuntimeError("the position states differ between the ranks after aligning their rows")
    all_reduce_state(pos.state)


def _align_state_keys(stats) -> None:
    """Give every rank the same state keys, shapes and order before the collectives: families whose token count
    or width changes along the depth fill their per-layer state (``tok_sum@{l}``, ...) as shapes are seen, so a
    rank that read no image has none of it. A missing entry is the neutral one (zeros; +inf/-inf in the min/max
    columns of moments)."""
    import math

    specs = gather_objects([(k, tuple(t.shape)) for k, t in stats.state.items()])
    union: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        for k, shape in spec:
            union.setdefault(k, shape)
    if list(union) == list(stats.state):
        return
    param = next(iter(stats.state.values()), None)
    if param is None:
        param = next(stats.view.model.parameters(), None)
    dev = param.device if param is not None and param.device.type != "mps" else torch.device("cpu")
    state = {}
    for k, shape in union.items():
        t = stats.state.get(k)
        if t is None:
            t = torch.zeros(shape, dtype=torch.float64, device=dev)
            if _moment_cols(k, t):
                t[..., 3], t[..., 4] = math.inf, -math.inf
        state[k] = t
    stats.state = state


# ---------------------------------------------------------------------------------------------------- failures
def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@contextlib.contextmanager
def collective_errors(what: str = "the job") -> Iterator[None]:
    """Leave the block on every rank together: each rank says whether it raised; if any did, the failing rank
    re-raises its own error and every other rank raises :class:`PeerFailedError` with the first failing rank's
    one-line message. The exceptions carry ``reported_by_main = True`` when rank 0 raises too, so the
    command line prints the failure once (on rank 0). With one process: the block as it is."""
    rank, world = rank_world()
    if world == 1:
        yield
        return
    err: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - exchanged with the other ranks, then re-raised
        err = exc
    status = gather_objects(None if err is None else _one_line(err))
    failed = [(r, line) for r, line in enumerate(status) if line is not None]
    if not failed:
        return
    if err is None:
        r, line = failed[0]
        more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
        err = PeerFailedError(f"rank {r} of {world} failed in {what}: {line}{more}")
    with contextlib.suppress(AttributeError, TypeError):
        err.reported_by_main = True  # type: ignore[attr-defined]
    raise err
