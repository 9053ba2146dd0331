"""reproduce, train and ``--plan`` resolve a run through one function (:func:`pe_probe.training.resolve_run`):
every preset plans only runs the training code builds, for the recipe each data set gets (no training here)."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from pe_probe.cli import build_parser, main
from pe_probe.cli._fields import field_values
from pe_probe.pipeline import PRESET_NAMES, plan_runs
from pe_probe.training import TrainConfig, resolve_run


def _folder(root: Path, size: int = 32) -> Path:
    """``root/{train,val}/{a,b}/*.png`` of ``size``-px images (a CIFAR-sized folder)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _builds(cfg: TrainConfig) -> int:
    """The depth of the model ``cfg`` trains, built by timm on the meta device (the model checks its own knobs)."""
    r = resolve_run(cfg)
    with torch.device("meta"):
        model = timm.create_model(r.model, pretrained=False, num_classes=10, **r.model_kwargs)
    return len(model.blocks)


def _data_cases(tmp_path):
    folder = _folder(tmp_path / "px32")
    return {"digits": dict(dataset="digits"), "px32": dict(dataset="imagefolder", data_dir=str(folder))}


@pytest.mark.parametrize("data", ["digits", "px32"])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_plans_only_runs_the_training_code_builds(preset, data, tmp_path):
    opts = _data_cases(tmp_path)[data]
    if preset == "paper" and data == "digits":
        pytest.skip("the paper preset refuses digits (tested in test_pipeline)")
    planned = plan_runs(tmp_path / "out", preset=preset, **opts)
    recipe = {"digits": "digits", "px32": "vit_lite_cifar"}[data]  # a 32-px folder gets ViT-Lite's recipe
    depth = {"digits": 6, "px32": 7}[data]
    for p in planned:
        r = resolve_run(p.config)
        assert (r.recipe.name, r.depth) == (recipe, depth)
        assert _builds(p.config) == depth
        k = p.config.last_ln_pe
        assert k in ("preset", None, 0) or 1 <= k <= depth - 1, (p.run.name, k)
    lasts = sorted({p.config.last_ln_pe for p in planned if isinstance(p.config.last_ln_pe, int)} - {0})
    if preset != "quick":  # Table 5's pos_5, pos_8, pos_11 of DeiT, placed on this model's blocks
        assert lasts == {"digits": [2, 4, 5], "px32": [3, 4, 6]}[data]


def test_plan_on_a_32px_folder_prints_commands_for_7_blocks(tmp_path, capsys):
    folder = _folder(tmp_path / "px32")
    argv = ["reproduce", "--out", str(tmp_path / "out"), "--preset", "ablations", "--dataset", "imagefolder",
            "--data-dir", str(folder), "--plan"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    trains = [shlex.split(line)[1:] for line in lines[:-1]]
    assert len(trains) == 8 + 3 + 7 and lines[-1].startswith("pe-probe figures")
    lasts = sorted(int(t[t.index("--last-ln-pe") + 1]) for t in trains if "--last-ln-pe" in t)
    assert lasts == [0, 3, 4, 6]  # 0: GAP + PE in the Last LN;  # not DeiT's 5, 8, 11 on a 7-block model
    # each printed command, parsed as pe-probe train parses it, resolves to the same 7-block run
    parser = build_parser()
    for t in trains:
        cfg = TrainConfig(**field_values(parser.parse_args(t), TrainConfig))
        assert _builds(cfg) == 7 and resolve_run(cfg).recipe.name == "vit_lite_cifar"
    assert not (tmp_path / "out").exists()  # a plan writes nothing


def test_an_invalid_run_is_refused_before_anything_is_trained(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="last_ln_pe=3 names no block"):
        resolve_run(TrainConfig(out=str(tmp_path / "r"), pe_mode="mpvg", last_ln_pe=3, model_kwargs={"depth": 3}))
    # a preset run the model cannot take is named before any run is trained (the plan resolves every run)
    from pe_probe.pipeline import presets

    monkeypatch.setattr(presets, "table5_layers", lambda depth: (depth,))
    with pytest.raises(ValueError, match="run mpvg_last_pos6: last_ln_pe=6 names no block"):
        plan_runs(tmp_path / "out", preset="ablations")
    assert not (tmp_path / "out").exists()


def test_a_named_model_decides_the_depth(tmp_path):
    folder = _folder(tmp_path / "px32")
    planned = plan_runs(tmp_path / "out", preset="ablations", dataset="imagefolder", data_dir=str(folder),
                        model="pe_vit_lite_7_4_32", model_kwargs={"depth": 4, "embed_dim": 32, "num_heads": 2})
    assert {resolve_run(p.config).depth for p in planned} == {4}
    assert sorted({p.config.last_ln_pe for p in planned if isinstance(p.config.last_ln_pe, int)} - {0}) == [1, 2, 3]
