"""Every named recipe trains on real JPEGs with its own augmentation on; image folders get a recipe that fits
their image size, and the run says which and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pe_probe
from pe_probe.cli import build_parser
from pe_probe.training import TrainConfig
from pe_probe.training.config import recipe_for
from pe_probe.training.recipes import DEIT_RANDAUGMENT, SMALL_IMAGE_MAX

#: The shared real-image data set: ``shared/data/cifar10-mini`` beside the checkout (``<repo>/../shared/...``).
CIFAR_MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-mini"

#: Per recipe: the model (None: the recipe's own) and constructor kwargs that make it tiny at 32 px.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
RECIPE_MODELS = {
    "deit": (None, TINY_VIT),                                   # pe_deit_tiny_patch16_224
    "swin": (None, dict(img_size=32, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)),  # Swin-T
    "t2t": ("vit_tiny_patch16_224", TINY_VIT),                  # timm has no T2T-ViT: the recipe needs a model
    "vit_lite_cifar": (None, dict(embed_dim=32, depth=2, num_heads=2)),  # pe_vit_lite_7_4_32
}


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
    """4 training and 1 validation JPEG per class of cifar10-mini, linked into a fresh folder."""
    if not CIFAR_MINI.is_dir():
        pytest.skip(f"the shared real-image data set is absent: looked for {CIFAR_MINI} (shared/data/cifar10-mini "
                    "beside the checkout)")
    root = tmp_path_factory.mktemp("cifar10-mini-subset")
    for split, n in (("train", 4), ("val", 1)):
        for cls in sorted(p for p in (CIFAR_MINI / split).iterdir() if p.is_dir()):
            (root / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.glob("*.jpg"))[:n]:
                (root / split / cls.name / f.name).symlink_to(f)
    return root


@pytest.mark.parametrize("recipe", sorted(RECIPE_MODELS))
def test_named_recipe_trains_on_real_jpegs_with_its_augmentation(tmp_path, cifar_subset, recipe):
    model, kwargs = RECIPE_MODELS[recipe]
    out = pe_probe.train(out=tmp_path / recipe, recipe=recipe, model=model, model_kwargs=kwargs,
                         dataset="imagefolder", data_dir=cifar_subset, epochs=1, batch_size=8, warmup_epochs=0,
                         progress=False, verbose=False, num_threads=1)
    config = json.loads((out / "config.json").read_text())
    r = config["recipe"]
    assert r["name"] == recipe and r["reason"] == "named with --recipe"
    assert r["augment"] and r["randaugment"] == DEIT_RANDAUGMENT and r["mixup"] > 0 and r["re_prob"] > 0
    assert config["data"]["signature"] == {"size": [32, 32], "channels": 3, "num_classes": 10}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 5 and np.isfinite(metrics[-1]["train_loss"])  # 40 images, batch 8
    assert json.loads((out / "summary.json").read_text())["recipe"] == recipe


def _folder(root: Path, size: int) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (size, size), (i * 40, 0, 0)).save(root / c / f"{i}.jpg")
    return root


@pytest.mark.parametrize("size, model, kwargs, expected", [
    (32, None, {}, "vit_lite_cifar"),                                      # the folder's images decide
    (96, None, {}, "deit"),
    (32, "pe_deit_tiny_patch16_224", {}, "deit"),                          # a named model's input decides
    (224, "pe_deit_tiny_patch16_224", {"img_size": 32}, "vit_lite_cifar"),
    (224, "pe_vit_lite_7_4_32", {}, "vit_lite_cifar"),
])
def test_imagefolder_recipe_follows_the_image_size(tmp_path, size, model, kwargs, expected):
    folder = _folder(tmp_path / "data", size)
    recipe = recipe_for(TrainConfig(dataset="imagefolder", data_dir=folder, model=model, model_kwargs=kwargs))
    assert recipe.name == expected
    side = kwargs.get("img_size") or (224 if model == "pe_deit_tiny_patch16_224" else 32 if model else size)
    assert f"{side} px" in recipe.reason and ("<=" if expected == "vit_lite_cifar" else ">") in recipe.reason
    named = recipe_for(TrainConfig(dataset="imagefolder", data_dir=folder, recipe="deit"))
    assert named.reason == "named with --recipe"


def test_small_image_folder_run_records_its_recipe_and_why(tmp_path):
    folder = _folder(tmp_path / "data", 16)
    out = pe_probe.train(out=tmp_path / "run", dataset="imagefolder", data_dir=folder, epochs=1, batch_size=2,
                         model_kwargs=dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2),
                         progress=False, verbose=False, num_threads=1, warmup_epochs=0)
    r = json.loads((out / "config.json").read_text())["recipe"]
    assert r["name"] == "vit_lite_cifar" and r["batch_size"] == 2 and r["scale"] == [0.8, 1.0]
    assert r["reason"] == (f"imagefolder, the folder's images 16 px (<= {SMALL_IMAGE_MAX} px): the small-image recipe "
                           "(CIFAR, 32 px)")


def test_train_help_says_how_the_recipe_is_chosen():
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(sub.format_help().split())
    assert "imagefolder -> vit_lite_cifar when the model's input" in text and "recipe.reason" in text
