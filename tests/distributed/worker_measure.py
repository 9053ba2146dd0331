"""Run under torchrun (2 CPU processes, gloo) by test_sharded_measures.py: the API under a process group the
caller started. Rank 0 pickles what it got to argv[1]; every rank writes its failure message to argv[1].rank<r>."""

from __future__ import annotations

import datetime
import pickle
import sys

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, TensorDataset

from tests.distributed.common import N_IMAGES, model_and_data


class FailsLate(Dataset):
    """Images whose index 30 and on (rank 1's shard with batch 8) raise a DataError."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from pe_probe.core.errors import DataError

        if i >= 30:
            raise DataError(f"image {i} is broken")
        return self.images[i]


def main(out: str) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    import pe_probe
    from pe_probe.probing.distributed import all_reduce_state

    model, images, labels = model_and_data()
    res = {"world": dist.get_world_size()}
    rep = pe_probe.probe(model, images, batch_size=8, n_norm_maps=20, progress=False)
    res["probe"] = (rep.meta, rep.arrays)
    ds = TensorDataset(images, labels)
    res["ablate"] = pe_probe.ablate(model, ds, batch_size=8, max_images=35, progress=False)
    att = pe_probe.attribute(model, ds, "label", batch_size=8, n_steps=4, max_images=30, n_maps=20, progress=False,
                      warn_rel_delta=10.0)
    res["attribute"] = (att.frame(), att.pe_maps, att.tok_maps)
    # a state dict with sums and a moments tensor with min/max columns, different on each rank
    g = torch.Generator().manual_seed(rank)
    state = {"x_sum": torch.randn(3, 4, generator=g, dtype=torch.float64),
             "corr_mom": torch.randn(2, 5, generator=g, dtype=torch.float64)}
    res["state_in"] = {k: v.clone() for k, v in state.items()}
    all_reduce_state(state)
    res["state_out"] = state
    res["state_in_all"] = [None, None]
    dist.all_gather_object(res["state_in_all"], res["state_in"])
    try:
        pe_probe.probe(model, FailsLate(images), batch_size=8, progress=False)
        msg = "no error"
    except Exception as exc:  # noqa: BLE001
        msg = f"{type(exc).__name__}|{exc}|{getattr(exc, 'reported_by_main', False)}"
    with open(f"{out}.rank{rank}", "w") as f:
        f.write(msg)
    if rank == 0:
        with open(out, "wb") as f:
            pickle.dump(res, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    assert N_IMAGES % 2
