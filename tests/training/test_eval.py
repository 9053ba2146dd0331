"""Evaluating and probing a run on a user's own data: the whole test folder is scored, the split is named,
the run's training images warn, and data that does not fit the run (size, channels, classes) is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pe_probe
from pe_probe import DataError, DataWarning
from pe_probe.cli import main

#: A tiny colour model for 12-px images (3x3 grid of 4-px patches), one block: trains in a second.
MODEL = dict(img_size=12, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0)
RUN = dict(recipe="digits", dataset="imagefolder", model_kwargs=MODEL, epochs=1, batch_size=8, lr=1e-3,
           warmup_epochs=0, progress=False, verbose=False, num_threads=1)


def make_folder(root: Path, classes=("a", "b", "c"), n: int = 8, size: int = 12, mode: str = "RGB",
                seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained on data/train (3 classes of 12-px colour images), validated on data/val."""
    base = tmp_path_factory.mktemp("eval")
    make_folder(base / "data" / "train")
    make_folder(base / "data" / "val", n=2, seed=1)
    return pe_probe.train(out=base / "run", data_dir=base / "data", **RUN), base


def _fails(argv, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"pe-probe {argv[0]}: error:") and match in err, err


def test_run_records_the_signature_of_its_training_images(run):
    out, _ = run
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["signature"] == {"size": [12, 12], "channels": 3, "num_classes": 3}


def test_plain_test_folder_is_scored_whole(run, tmp_path, capsys):
    out, _ = run
    test = make_folder(tmp_path / "test", n=5, seed=7)  # 15 images: a 10 % split would score 3
    capsys.readouterr()
    assert main(["eval", str(out), "--dataset", "imagefolder", "--data-dir", str(test)]) == 0
    printed = capsys.readouterr()
    assert "split all" in printed.out and "n 15" in printed.out and "warning" not in printed.err
    # the score is the model's on exactly these 15 images, computed here independently
    model = pe_probe.load_model(out)
    cfg = json.loads((out / "config.json").read_text())["data"]
    mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
    x, y = [], []
    for label, c in enumerate(("a", "b", "c")):
        for f in sorted((test / c).iterdir()):
            img = torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1) / 255
            x.append((img - mean) / std)
            y.append(label)
    with torch.no_grad():
        top1 = (model(torch.stack(x)).argmax(-1) == torch.tensor(y)).float().mean().item() * 100
    entry = [e for e in json.loads((out / "eval.json").read_text()) if e["split"] == "all"]
    assert len(entry) == 1 and entry[0]["n"] == 15 and entry[0]["top1"] == pytest.approx(top1)
    assert entry[0]["data_dir"] == str(test.resolve())
    # --split val reads the 10 % held out per class instead; both evaluations are kept
    assert main(["eval", str(out), "--dataset", "imagefolder", "--data-dir", str(test), "--split", "val"]) == 0
    records = json.loads((out / "eval.json").read_text())
    splits = sorted(e["split"] for e in records if e["data_dir"] == str(test.resolve()))
    assert splits == ["all", "val"] and "n 3" in capsys.readouterr().out


def test_the_runs_own_data_defaults_to_val_and_training_images_warn(run, capsys):
    out, base = run
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr()
    assert "split val" in printed.out and "n 6" in printed.out and printed.err == ""
    assert main(["eval", str(out), "--split", "train"]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("pe-probe eval: warning:") and "trained on" in err and len(err.splitlines()) == 1
    # the training folder itself, as a plain folder of classes: every image is a training image
    with pytest.warns(DataWarning, match="trained on"):
        res = pe_probe.evaluate(out, dataset="imagefolder", data_dir=base / "data" / "train")
    assert res["split"] == "all" and res["n"] == 24


@pytest.mark.parametrize("case, match", [
    ("grey", "channels"),
    ("small", "image size"),
    ("classes", "class count"),
    ("digits", "(image size, channels and class count): it has 8x8 grey images, 10 classes; the run was trained "
               "on 12x12 colour images, 3 classes"),
])
def test_data_that_does_not_fit_the_run_is_refused(run, tmp_path, capsys, case, match):
    out, _ = run
    if case == "digits":
        args = ["--dataset", "digits"]
    else:
        kw = {"grey": dict(mode="L"), "small": dict(size=8), "classes": dict(classes=("a", "b", "c", "d"))}[case]
        args = ["--dataset", "imagefolder", "--data-dir", str(make_folder(tmp_path / "bad", **kw))]
    before = (out / "eval.json").read_text() if (out / "eval.json").exists() else None
    _fails(["eval", str(out), *args], capsys, match)
    assert ((out / "eval.json").read_text() if (out / "eval.json").exists() else None) == before
    data = "digits" if case == "digits" else "imagefolder"
    probe_args = ["--data", data] + args[2:]
    _fails(["probe", str(out), *probe_args, "--out", str(tmp_path / "rep"), "--no-progress"], capsys, match)
    assert not (tmp_path / "rep").exists()
    with pytest.raises(DataError, match="does not fit the model"):
        pe_probe.evaluate(out, **({"dataset": "digits"} if case == "digits" else
                                  {"dataset": "imagefolder", "data_dir": tmp_path / "bad"}))


def test_probe_defaults_to_the_runs_data_and_reads_a_test_folder_whole(run, tmp_path):
    out, _ = run
    assert main(["probe", str(out), "--out", str(tmp_path / "own"), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "own" / "meta.json").read_text())
    assert (meta["data"], meta["split"], meta["n_images"]) == ("imagefolder", "val", 6)
    test = make_folder(tmp_path / "test", n=4, seed=3)
    assert main(["probe", str(out), "--data-dir", str(test), "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert (meta["split"], meta["n_images"], meta["data_dir"]) == ("all", 12, str(test))
