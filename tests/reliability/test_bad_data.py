"""Damaged image files (truncated, not an image, empty, a decompression bomb, a FIFO, a link loop, unreadable) and
train/ and val/ with different classes: one line naming the file and exit 2 from train, eval and probe, checked
before anything is written; nothing hangs; --skip-bad leaves them out and counts them."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from pe_probe.cli import main
from pe_probe.data import build_dataset
from pe_probe.data import scan
from pe_probe.data.scan import BadImagesError

from .common import DAMAGE, listing, make_folder, plant
from .conftest import folder_train_args

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
#: What the one-line error says about each kind of damage.
REASON = {"truncated": "not a readable image", "text": "not an image file", "empty": "empty file",
          "bomb": "decompression bomb", "fifo": "a FIFO", "loop": "symbolic link loop",
          "dirloop": "symbolic link loop", "unreadable": "permission denied"}


@pytest.fixture(autouse=True)
def _fresh_scan_cache():
    scan.clear_cache()
    yield
    scan.clear_cache()


def _damaged(tmp_path, kind, monkeypatch, split="val"):
    """A copy of a clean folder with one damaged file of ``kind`` in ``split/b``; returns (folder, bad path)."""
    data = make_folder(tmp_path / "data")
    if kind == "unreadable" and AS_ROOT:  # root reads any file: make the open fail as it would for a user
        bad = plant(data / split / "b", "text")
        bad = bad.rename(bad.with_name("bad_unreadable.jpg"))
        real_open = os.open

        def deny(path, *args, **kwargs):
            if str(path).endswith("bad_unreadable.jpg"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(scan.os, "open", deny)
        return data, bad
    return data, plant(data / split / "b", kind)


def _one_line_exit_2(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    return err


@pytest.mark.parametrize("kind", DAMAGE)
def test_each_damage_is_named_before_the_data_set_exists(kind, tmp_path, monkeypatch):
    data, bad = _damaged(tmp_path, kind, monkeypatch)
    with pytest.raises(BadImagesError) as exc:
        build_dataset("imagefolder", data_dir=data, split="val", img_size=8)
    assert bad.name in str(exc.value) and REASON[kind] in str(exc.value) and "--skip-bad" in str(exc.value)
    assert list(exc.value.bad) == [str(bad)]
    ds = build_dataset("imagefolder", data_dir=data, split="val", img_size=8, skip_bad=True)
    assert len(ds) == 24 and list(ds.bad) == [str(bad)]  # the 24 good files, the bad one left out
    assert {int(y) for _, y in (ds[i] for i in range(len(ds)))} == {0, 1}


@pytest.mark.parametrize("kind", ["truncated", "fifo", "bomb", "dirloop", "unreadable"])
def test_train_refuses_damaged_data_before_writing(kind, tmp_path, monkeypatch, capsys):
    data, bad = _damaged(tmp_path, kind, monkeypatch, split="train")
    before = listing(tmp_path)
    _one_line_exit_2(folder_train_args(data, tmp_path / "run"), capsys, "pe-probe train: error:", bad.name,
                     REASON[kind])
    assert listing(tmp_path) == before  # no run directory, nothing else


@pytest.mark.parametrize("kind", ["truncated", "text", "fifo"])
@pytest.mark.parametrize("command", ["eval", "probe"])
def test_eval_and_probe_refuse_damaged_data_before_writing(command, kind, folder_master, tmp_path, monkeypatch,
                                                           capsys):
    _, master = folder_master
    run = shutil.copytree(master, tmp_path / "run")
    data, bad = _damaged(tmp_path, kind, monkeypatch)
    before = listing(tmp_path)
    argv = ["eval", str(run), "--data-dir", str(data)] if command == "eval" else \
        ["probe", str(run), "--data-dir", str(data), "--out", str(tmp_path / "report"), "--no-progress"]
    _one_line_exit_2(argv, capsys, f"pe-probe {command}: error:", bad.name, REASON[kind])
    assert listing(tmp_path) == before  # no eval.json, no report folder


def test_skip_bad_trains_without_them_and_counts_them(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    bad = [plant(data / "train" / "a", "truncated"), plant(data / "train" / "b", "fifo"),
           plant(data / "val" / "a", "empty")]
    run = tmp_path / "run"
    assert main(folder_train_args(data, run, "--skip-bad")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_images"] == len(bad)
    assert json.loads((run / "config.json").read_text())["data"]["skip_bad"] is True
    # evaluating and probing the run on its own data skip what training skipped
    assert main(["eval", str(run)]) == 0
    record = json.loads((run / "eval.json").read_text())[0]
    assert (record["n"], record["skipped_images"]) == (24, 1)
    assert main(["probe", str(run), "--out", str(tmp_path / "report"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "report" / "meta.json").read_text())["n_images"] == 24


def test_train_and_val_with_different_classes_are_refused(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    (data / "val" / "b").rename(data / "val" / "c")
    before = listing(tmp_path)
    _one_line_exit_2(folder_train_args(data, tmp_path / "run"), capsys, "only in train/: b", "only in val/: c")
    assert listing(tmp_path) == before


def test_scan_finds_the_same_on_threads_and_accepts_a_file_whose_extension_lies(tmp_path):
    data = make_folder(tmp_path / "data", n=40)
    planted = {str(plant(data / "train" / "a", kind)) for kind in ("truncated", "text", "empty", "bomb", "fifo")}
    (data / "train" / "b" / "000.jpg").rename(data / "train" / "b" / "really_a_jpeg.png")  # wrong extension, fine
    files = sorted(str(p) for p in (data / "train").rglob("*") if p.name.lower().endswith((".jpg", ".png")))
    one = scan.scan_images(files, threads=1)
    scan.clear_cache()
    four = scan.scan_images(files, threads=4)
    assert set(one) == set(four) == planted and one == four


@pytest.mark.parametrize("where", ["one class", "above the root"])
def test_train_refuses_one_class_or_a_misplaced_root_before_writing(where, tmp_path, capsys):
    data = make_folder(tmp_path / "data", classes=("a",) if where == "one class" else ("a", "b"))
    arg = data if where == "one class" else tmp_path  # tmp_path/data holds train/ and val/: one level too high
    before = listing(tmp_path)
    needle = "a classifier needs at least two classes" if where == "one class" else "one level too high"
    _one_line_exit_2(folder_train_args(arg, tmp_path / "run"), capsys, needle)
    assert listing(tmp_path) == before
