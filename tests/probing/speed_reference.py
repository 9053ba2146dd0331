"""The saved reference for tests/probing/test_speed.py: reports of the statistics as computed before issue 21.

``python -m tests.probing.speed_reference`` (from the repository root, with the pre-issue-21 code on the
path) rewrites ``tests/probing/data/speed_reference.npz``. The models and images are seeded, so the new code
must give the same arrays to float64 rounding (1e-12 relative).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from pe_probe import PEVisionTransformer, probe

from ..conftest import TINY
from .reference import randomize_norms

PATH = Path(__file__).resolve().parent / "data" / "speed_reference.npz"

#: (id, model kwargs, the image stream's class-token-free residual layout matters: mpvg is GAP, lape has a class token)
CONFIGS = {
    "mpvg": dict(pe_mode="mpvg"),
    "lape": dict(pe_mode="lape"),
    "pvg-token-lastpe": dict(pe_mode="pvg", global_pool="token", last_ln_pe=2),
    "default": dict(pe_mode="default"),
}


def build(kw: dict) -> torch.nn.Module:
    """The seeded tiny model of one configuration."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = PEVisionTransformer(**{**TINY, **kw})
    randomize_norms(m)
    with torch.no_grad():  # a PE large enough to matter
        for name, p in m.named_parameters():
            if "pos_embed" in name:
                p.mul_(20.0)
    return m.eval()


def images() -> torch.Tensor:
    """The seeded images (not a multiple of the batch size, so the last batch is smaller)."""
    return torch.randn(19, 3, 16, 16, generator=torch.Generator().manual_seed(5))


def arrays(kw: dict, **probe_kw) -> dict[str, np.ndarray]:
    """The report arrays of one configuration, batch size 6."""
    return dict(probe(build(kw), images(), batch_size=6, progress=False, n_norm_maps=4, **probe_kw).arrays)


def main() -> None:
    """Write the reference file."""
    out = {f"{cid}/{k}": v for cid, kw in CONFIGS.items() for k, v in arrays(kw).items()}
    PATH.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(PATH, **out)
    print(f"wrote {len(out)} arrays to {PATH}")


if __name__ == "__main__":
    main()
