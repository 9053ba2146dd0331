"""A stand-in ProbeReport with synthetic numpy data, implementing exactly the contract's methods
(docs/contracts.md), and helpers that build RunResults like the ones ``pe_probe.train`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pe_probe.analysis.runs import RunResult

#: The PE presets (pe_probe.models.config.PRESETS), restated so these fakes stay torch-free.
PRESETS = {
    "default": dict(layerwise=False, input_add=True, layer0=False, hierarchical=True, last_ln_pe=None,
                    global_pool="token", pe_type="learned"),
    "lape": dict(layerwise=True, input_add=False, layer0=True, hierarchical=True, last_ln_pe=None,
                 global_pool="token", pe_type="learned"),
    "pvg": dict(layerwise=True, input_add=True, layer0=False, hierarchical=True, last_ln_pe=None,
                global_pool="avg", pe_type="learned"),
    "mpvg": dict(layerwise=True, input_add=True, layer0=False, hierarchical=True, last_ln_pe=0,
                 global_pool="avg", pe_type="learned"),
}

DEPTH, DIM, GRID, N_IMAGES = 4, 8, (3, 3), 4


class FakeReport:
    """Synthetic ProbeReport: ``meta``, ``to_frame``, ``mean_maps``, ``pe_similarity``, ``last_ln_params``,
    ``token_norm_maps``, ``save``/``load``. Maps are seeded random arrays of the contract's shapes."""

    def __init__(self, run: str, pe: dict, depth: int = DEPTH, dim: int = DIM, grid=GRID, seed: int = 0,
                 pe_mode: str = "pvg"):
        self.rng = np.random.default_rng(seed)
        prefix = 1 if pe["global_pool"] == "token" else 0
        if pe["layerwise"]:
            receiving = [i for i in range(depth) if i > 0 or pe["layer0"]]
        else:
            receiving = []
        self.meta = dict(run=run, model="pe_deit_tiny_patch16_224", pe_mode=pe_mode, global_pool=pe["global_pool"],
                         num_prefix_tokens=prefix, grid=list(grid), depth=depth, embed_dim=dim, n_images=N_IMAGES,
                         pe_derived=False, receiving_blocks=receiving, last_ln_pe=pe["last_ln_pe"])
        t = prefix + grid[0] * grid[1]
        self.maps = {}
        for layer in range(depth):
            tok = self.rng.normal(size=(t, dim))
            pe_map = -0.5 * tok + self.rng.normal(size=(t, dim)) if layer in receiving else None
            self.maps[layer] = (tok, pe_map)
        last_pe = self.rng.normal(size=(t, dim)) if pe["last_ln_pe"] is not None else None
        self.maps[-1] = (self.rng.normal(size=(t, dim)), last_pe)
        n = grid[0] * grid[1]
        self.sims = {}
        for layer in receiving:
            v = self.rng.normal(size=(n, dim))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            self.sims[layer] = v @ v.T
        self.params = pd.DataFrame({"channel": np.arange(dim), "gamma": self.rng.normal(1, 0.1, dim),
                                    "beta": self.rng.normal(0, 0.3, dim)})
        self.norms = {"before": self.rng.uniform(5, 10, (N_IMAGES, *grid)),
                      "after": self.rng.uniform(0, 3, (N_IMAGES, *grid))}
        self.cosine = float(self.rng.uniform(0, 1))

    def to_frame(self) -> pd.DataFrame:
        rows = [dict(layer=-1, metric="last_ln_cos_before_after", value=self.cosine)]
        rows += [dict(layer=l, metric="token_norm", value=float(np.linalg.norm(m[0]))) for l, m in self.maps.items()]
        df = pd.DataFrame(rows)
        for k in ("run", "model", "pe_mode", "global_pool"):
            df.insert(0, k, self.meta[k])
        return df[["run", "model", "pe_mode", "global_pool", "layer", "metric", "value"]]

    def mean_maps(self, layer: int):
        return self.maps[layer]

    def pe_similarity(self, layer: int) -> np.ndarray:
        return self.sims[layer]

    def last_ln_params(self) -> pd.DataFrame:
        return self.params.copy()

    def token_norm_maps(self) -> dict:
        return dict(self.norms)

    def save(self, dir) -> None:  # pragma: no cover - contract completeness only
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        (dir / "meta.json").write_text(json.dumps(self.meta))

    @classmethod
    def load(cls, dir):  # pragma: no cover - contract completeness only
        raise NotImplementedError("the fake is built in memory")


def make_run(name: str, preset: str = "default", *, report: bool = True, top1: float | None = 80.0,
             model: str = "pe_deit_tiny_patch16_224", dataset: str = "digits", seed: int = 0,
             **changes) -> RunResult:
    """A RunResult with a contract-shaped config.json dict; ``changes`` override PEConfig fields."""
    pe = {**PRESETS[preset], **changes}
    config = {
        "model": model,
        "model_kwargs": {"pe_mode": preset, "img_size": 12, "patch_size": 4, "embed_dim": DIM, "depth": DEPTH,
                         "num_heads": 2, "global_pool": pe["global_pool"]},
        "pe_config": pe,
        "num_classes": 10,
        "data": {"dataset": dataset, "img_size": 12, "in_chans": 1, "mean": [0.5], "std": [0.5]},
        "recipe": {"epochs": 1},
        "pe_probe_version": "0.1.0",
    }
    summary = {"top1": top1, "top5": 99.0, "epochs": 1} if top1 is not None else None
    rep = FakeReport(name, pe, seed=seed, pe_mode=preset) if report else None
    return RunResult(name=name, config=config, summary=summary, report=rep)


def paper_runs() -> list[RunResult]:
    """Every run the shipped specs can use (the quick reproduction plus the ablations)."""
    return [
        make_run("default", "default", top1=70.0, seed=1),
        make_run("gap", "default", global_pool="avg", top1=71.0, seed=2),
        make_run("lape", "lape", top1=72.0, seed=3),
        make_run("lape_gap", "lape", global_pool="avg", top1=70.5, seed=4),
        make_run("pvg", "pvg", top1=73.0, seed=5),
        make_run("pvg_token", "pvg", global_pool="token", top1=72.5, seed=6),
        make_run("mpvg", "mpvg", top1=74.0, seed=7),
        make_run("gap_last_ln_pe", "default", global_pool="avg", last_ln_pe=0, top1=70.8, seed=8),
        make_run("mpvg_pos2", "mpvg", last_ln_pe=2, top1=73.5, seed=9),
        make_run("mpvg_layer0", "mpvg", layer0=True, top1=73.2, seed=10),
    ]
