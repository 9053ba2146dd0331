"""Run under torchrun (2 CPU processes, gloo) by test_sharded_families.py: ``pe_probe.probe`` with the position
analyses (``decompose`` and ``decode``) of models whose families keep per-layer state (token count or width
changing along the depth) and of a plain PE model, on data where rank 1 reads no image (5 images, one batch of
8) and where both ranks read some (20 images: the classifier's sample of 10 spans both ranks). Rank 0 pickles
what it got to argv[1]."""

from __future__ import annotations

import datetime
import pickle
import sys

import torch.distributed as dist

from tests.distributed.common import model_and_data, zoo_images, zoo_models

#: The probe's options in both the workers and the single-process reference.
OPTIONS = {"batch_size": 8, "n_norm_maps": 12, "progress": False, "decode": True, "decode_images": 10}


def main(out: str) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    import pe_probe

    res = {}
    models = {**zoo_models(), "mpvg": model_and_data()[0]}
    for name, model in models.items():
        for n in (5, 20):
            rep = pe_probe.probe(model, zoo_images(n, model), **OPTIONS)
            res[(name, n)] = (rep.meta, rep.arrays)
    if dist.get_rank() == 0:
        with open(out, "wb") as f:
            pickle.dump(res, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
