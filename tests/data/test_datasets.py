"""Data sets: shapes, normalization, deterministic splits, and one-line errors for bad names and folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pe_probe.data import DATASETS, build_dataset, dataset_info
from pe_probe.core.errors import DataError, UnknownNameError


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("img_size", [8, 16])
def test_digits_shapes_and_normalization(in_chans, img_size):
    ds = build_dataset("digits", train=True, img_size=img_size, in_chans=in_chans)
    x, y = ds[0]
    assert x.shape == (in_chans, img_size, img_size) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < 10
    assert ds.num_classes == 10
    if img_size == 8:  # native size: the stored statistics normalize exactly
        allx = torch.stack([ds[i][0] for i in range(len(ds))])
        assert abs(allx.mean().item()) < 0.05 and abs(allx.std().item() - 1) < 0.05


def test_digits_split_is_fixed_and_disjoint():
    tr = build_dataset("digits", train=True, img_size=8, in_chans=1)
    va = build_dataset("digits", train=False, img_size=8, in_chans=1)
    assert (len(tr), len(va)) == (1437, 360)
    again = build_dataset("digits", train=False, img_size=8, in_chans=1)
    assert torch.equal(va[7][0], again[7][0])
    a = {tr[i][0].numpy().tobytes() for i in range(len(tr))}
    b = [va[i][0].numpy().tobytes() for i in range(len(va))]
    assert sum(x in a for x in b) < 10  # a few digits are pixel-identical across the split; no leakage beyond that


def test_digits_augment_uses_timm_transform():
    ds = build_dataset("digits", train=True, img_size=16, in_chans=3, augment=True, re_prob=0.5)
    torch.manual_seed(0)
    x1 = ds[3][0]
    torch.manual_seed(1)
    x2 = ds[3][0]
    assert x1.shape == (3, 16, 16) and torch.isfinite(x1).all()
    assert not torch.equal(x1, x2)


def _make_folder(root: Path, classes=("a", "b", "c"), n=6, size=12) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_train_val_layout(tmp_path):
    _make_folder(tmp_path / "train")
    _make_folder(tmp_path / "val", n=2)
    tr = build_dataset("imagefolder", data_dir=tmp_path, train=True, img_size=16, augment=True,
                       auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    va = build_dataset("imagefolder", data_dir=tmp_path, train=False, img_size=16, in_chans=1)
    assert (len(tr), len(va), tr.num_classes) == (18, 6, 3)
    assert tr[0][0].shape == (3, 16, 16) and va[0][0].shape == (1, 16, 16)


def test_imagefolder_single_folder_split_is_deterministic(tmp_path):
    _make_folder(tmp_path, n=10)
    tr = build_dataset("imagefolder", data_dir=tmp_path, train=True, img_size=8)
    va = build_dataset("imagefolder", data_dir=tmp_path, train=False, img_size=8)
    assert len(tr) + len(va) == 30 and len(va) == 3 and tr.num_classes == 3
    va2 = build_dataset("imagefolder", data_dir=tmp_path, train=False, img_size=8)
    assert va.indices == va2.indices and not set(va.indices) & set(tr.indices)


def test_imagefolder_on_cifar10_mini(cifar10_mini):
    va = build_dataset("imagefolder", data_dir=cifar10_mini, train=False, img_size=32, mean=DATASETS["cifar10"].mean,
                       std=DATASETS["cifar10"].std)
    assert len(va) == 1000 and va.num_classes == 10 and va[0][0].shape == (3, 32, 32)
    assert va.classes[:2] == ["airplane", "automobile"]
    tr = build_dataset("imagefolder", data_dir=cifar10_mini, train=True, img_size=32)
    assert len(tr) == 4000 and tr.classes == va.classes


def test_unknown_dataset():
    with pytest.raises(UnknownNameError, match="unknown dataset 'mnist'"):
        build_dataset("mnist", train=True, img_size=8)
    with pytest.raises(UnknownNameError):
        dataset_info("mnist")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_missing_empty_and_file_data_dirs(tmp_path, name):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(name, data_dir=tmp_path / "nope", train=True, img_size=32)
    with pytest.raises(DataError, match="is empty"):
        build_dataset(name, data_dir=tmp_path, train=True, img_size=32)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        build_dataset(name, data_dir=tmp_path / "f.txt", train=True, img_size=32)
    with pytest.raises(DataError, match="needs a data directory"):
        build_dataset(name, train=True, img_size=32)


def test_cifar_without_files_asks_for_download(tmp_path):
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="--download"):
        build_dataset("cifar10", data_dir=tmp_path, train=True, img_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # nothing downloaded or written


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class folders"):
        build_dataset("imagefolder", data_dir=tmp_path, train=True, img_size=32)


def test_dataset_info_normalization():
    info = dataset_info("digits")
    assert info.num_classes == 10 and info.normalization(3)[0] == info.mean * 3
    assert len(dataset_info("cifar100").normalization(1)[0]) == 1
    assert dataset_info("imagefolder").num_classes is None


@pytest.mark.parametrize("layout", ["plain", "train+val"])
def test_one_class_is_refused_in_one_line_naming_the_fix(tmp_path, layout):
    # one class would train to "100 % top-1" on a single label
    data = tmp_path / "data"
    for root in ([data] if layout == "plain" else [data / "train", data / "val"]):
        _make_folder(root, classes=("cat",))
    with pytest.raises(DataError, match="holds one class folder \\(cat\\): a classifier needs at least two") as exc:
        build_dataset("imagefolder", data_dir=data, train=True, img_size=8)
    assert "\n" not in str(exc.value)
    # the folder above the classes, given one level too high, is named
    _make_folder(tmp_path / "wrapped" / "imgs")
    with pytest.raises(DataError, match=f"try {tmp_path / 'wrapped' / 'imgs'}"):
        build_dataset("imagefolder", data_dir=tmp_path / "wrapped", split="all", img_size=8)


def test_a_data_set_root_as_a_class_is_refused(tmp_path):
    # --data-dir one level above the data set: its only "class" holds train/ and val/
    _make_folder(tmp_path / "cifar" / "train")
    _make_folder(tmp_path / "cifar" / "val")
    _make_folder(tmp_path / "other", n=2)  # a second "class", so the class count alone would pass
    with pytest.raises(DataError, match=f"look like a data set's root.*try {tmp_path / 'cifar'}"):
        build_dataset("imagefolder", data_dir=tmp_path, train=True, img_size=8)
    # train/ whose classes are split folders again (train/train/<class>)
    _make_folder(tmp_path / "nested" / "train" / "train")
    _make_folder(tmp_path / "nested" / "train" / "val")
    with pytest.raises(DataError, match="class folder\\(s\\) train, val look like"):
        build_dataset("imagefolder", data_dir=tmp_path / "nested", train=True, img_size=8)
    # two real classes pass
    assert build_dataset("imagefolder", data_dir=tmp_path / "cifar", train=True, img_size=8).num_classes == 3
