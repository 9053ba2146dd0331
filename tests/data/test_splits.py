"""Image-folder splits (train / val / all), the default split, training-image overlap and data signatures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pe_probe.core.errors import DataError
from pe_probe.data import DataSignature, build_dataset
from pe_probe.data.folders import default_split, folder_image_size, reads_training_images, split_root
from pe_probe.data.signature import check_fits


def folder(root: Path, classes=("a", "b"), n=10, size=(12, 12), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (*size, 3) if mode == "RGB" else size
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(root / c / f"{i}.png")
    return root


def test_plain_folder_splits_partition_all(tmp_path):
    folder(tmp_path)
    parts = {s: build_dataset("imagefolder", data_dir=tmp_path, split=s, img_size=8) for s in ("train", "val", "all")}
    assert (len(parts["train"]), len(parts["val"]), len(parts["all"])) == (18, 2, 20)
    assert set(parts["train"].indices).isdisjoint(parts["val"].indices)
    assert sorted(parts["train"].indices + parts["val"].indices) == list(range(20))
    assert parts["all"].signature == DataSignature((12, 12), 3, 2)
    # train=True/False are the same as split="train"/"val"
    assert build_dataset("imagefolder", data_dir=tmp_path, train=False, img_size=8).indices == parts["val"].indices
    with pytest.raises(ValueError, match="contradicts"):
        build_dataset("imagefolder", data_dir=tmp_path, train=True, split="val", img_size=8)


def test_layouts(tmp_path):
    both = tmp_path / "both"
    folder(both / "train"), folder(both / "val", n=3)
    assert split_root(both, "val") == (both / "val", "all")
    with pytest.raises(DataError, match="choose --split val or train"):
        split_root(both, "all")
    only_val = tmp_path / "only_val"
    folder(only_val / "val", n=3)
    assert split_root(only_val, "all") == (only_val / "val", "all")
    with pytest.raises(DataError, match="no train/"):
        split_root(only_val, "train")
    with pytest.raises(DataError, match="split 'all' reads a plain image folder"):
        build_dataset("digits", split="all", img_size=8)


def test_default_split_and_training_overlap(tmp_path):
    plain = folder(tmp_path / "plain")
    both = tmp_path / "both"
    folder(both / "train"), folder(both / "val", n=3)
    assert default_split("imagefolder", plain, own=False) == "all"
    assert default_split("imagefolder", plain, own=True) == "val"  # the run's own folder: its held-out part
    assert default_split("imagefolder", both, own=False) == "val"
    assert default_split("cifar10", plain, own=False) == "val"
    run_plain = {"dataset": "imagefolder", "data_dir": str(plain)}
    assert not reads_training_images(run_plain, "imagefolder", plain, "val")
    assert reads_training_images(run_plain, "imagefolder", plain, "train")
    assert reads_training_images(run_plain, "imagefolder", plain, "all")
    assert reads_training_images(run_plain, "imagefolder", tmp_path, "all")  # a folder that contains it
    run_both = {"dataset": "imagefolder", "data_dir": str(both)}
    assert reads_training_images(run_both, "imagefolder", both / "train", "all")
    assert not reads_training_images(run_both, "imagefolder", both, "val")
    assert not reads_training_images(run_both, "imagefolder", plain, "all")
    assert reads_training_images({"dataset": "digits"}, "digits", None, "train")
    assert not reads_training_images({"dataset": "digits"}, "digits", None, "val")


def test_signatures_of_grey_and_mixed_folders(tmp_path):
    grey = build_dataset("imagefolder", data_dir=folder(tmp_path / "g", mode="L", size=(8, 6)), split="all", img_size=8)
    assert grey.signature == DataSignature((8, 6), 1, 2)
    mixed = folder(tmp_path / "m", classes=("a",), n=2)
    folder(tmp_path / "m", classes=("b",), n=2, size=(20, 20))
    assert build_dataset("imagefolder", data_dir=mixed, split="all", img_size=8).signature.size is None
    assert folder_image_size(mixed) is None and folder_image_size(tmp_path / "g") == 8
    assert build_dataset("digits", split="val", img_size=16).signature == DataSignature((8, 8), 1, 10)
    with pytest.raises(DataError, match=r"\(image size\): it has variable-size colour images, 2 classes; "
                                        r"the run was trained on 12x12 colour images, 2 classes"):
        check_fits(DataSignature((12, 12), 3, 2), DataSignature(None, 3, 2), "x")
    check_fits(DataSignature(None, None, 2), DataSignature((5, 5), 1, 2), "x")  # unknowns are not compared
