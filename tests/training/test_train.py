"""Training on digits: it learns, the run directory has the files RunDir names, and loading gives the same model."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import pe_probe
from pe_probe.core.errors import CheckpointError
from pe_probe.training import RECIPES, TrainConfig, TrainingDivergedError, get_recipe
from pe_probe.training.config import recipe_for

from .common import TINY_RUN


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny MPVG run shared by the tests of this module."""
    out = tmp_path_factory.mktemp("runs") / "mpvg"
    return pe_probe.train(out=out, pe_mode="mpvg", **TINY_RUN)


def test_tiny_model_learns_digits(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["top1"] > 50, summary  # chance is 10 %
    assert summary["epochs"] == 2 and summary["train_time_s"] < 60


def test_run_directory_follows_the_contract(run_dir):
    assert {p.name for p in run_dir.iterdir()} == {
        "config.json", "model.safetensors", "metrics.jsonl", "state.pt", "summary.json"}
    config = json.loads((run_dir / "config.json").read_text())
    assert {"model", "model_kwargs", "pe_config", "num_classes", "data", "recipe", "pe_probe_version"} <= set(config)
    assert config["model"] == "pe_vit_lite_7_4_32" and config["num_classes"] == 10
    kw = config["model_kwargs"]
    assert kw["pe_mode"] == "mpvg" and kw["last_ln_pe"] == 0 and kw["global_pool"] == "avg"
    assert {"pe_input_add", "pe_layer0", "pe_hierarchical", "pe_type", "img_size", "in_chans"} <= set(kw)
    assert config["pe_config"]["layerwise"] is True
    data = config["data"]
    assert (data["dataset"], data["img_size"], data["in_chans"]) == ("digits", 8, 1)
    assert len(data["mean"]) == len(data["std"]) == 1
    assert config["recipe"]["name"] == "digits" and config["recipe"]["epochs"] == 2
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"epoch", "train_loss", "val_loss", "top1", "top5", "lr", "images_per_sec"} <= set(lines[0])
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (2, 0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"top1", "top5", "epochs"} <= set(summary) and summary["top1"] == lines[-1]["top1"]


def test_load_model_roundtrip_gives_identical_logits(run_dir):
    run = pe_probe.load_run(run_dir)
    assert not run.model.training and run.summary is not None and run.data_config["input_size"] == (1, 8, 8)
    # the weights the trainer held at the end (resume state) in a model built from config.json
    ref = timm.create_model(run.config["model"], **run.config["model_kwargs"])
    ref.load_state_dict(torch.load(run_dir / "state.pt", weights_only=True)["model"])
    ref.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(run.model(x), ref(x))
        assert torch.equal(pe_probe.load_model(run_dir)(x), ref(x))
    assert load_file(str(run_dir / "model.safetensors")).keys() == ref.state_dict().keys()


def test_evaluate_run_and_model(run_dir):
    res = pe_probe.evaluate(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert res["n"] == 360 and res["top1"] == pytest.approx(summary["top1"])
    assert res["loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    res2 = pe_probe.evaluate(pe_probe.load_model(run_dir), dataset="digits")
    assert res2["top1"] == pytest.approx(res["top1"]) and res2["top5"] >= res2["top1"]


def test_existing_run_needs_resume_and_keeps_its_config(run_dir):
    with pytest.raises(ValueError, match="--resume"):
        pe_probe.train(out=run_dir, **TINY_RUN)
    with pytest.raises(ValueError, match="lr=0.5 differs"):
        pe_probe.train(out=run_dir, resume=True, **{**TINY_RUN, "lr": 0.5})
    before = (run_dir / "metrics.jsonl").read_text()
    assert pe_probe.train(out=run_dir, resume=True, progress=False, verbose=False) == run_dir  # complete: no-op
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_corrupt_and_mismatched_checkpoints(run_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        pe_probe.load_model(bad)
    (bad / "summary.json").unlink()
    (bad / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="state.pt is corrupt"):
        pe_probe.train(out=bad, resume=True, progress=False, verbose=False)
    wrong = tmp_path / "wrong"
    shutil.copytree(run_dir, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["model_kwargs"]["embed_dim"] = 48
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        pe_probe.load_run(wrong)
    with pytest.raises(CheckpointError, match="not a pe-probe run directory"):
        pe_probe.load_run(tmp_path)


def test_nan_loss_names_the_step(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"at step \d+ \(epoch 1, batch \d+\)"):
        pe_probe.train(out=tmp_path / "nan", **{**TINY_RUN, "lr": 1e30, "warmup_epochs": 0})


def test_train_config_and_options():
    cfg = TrainConfig(out="x", lr=1e-3)
    assert pe_probe.TrainConfig is TrainConfig and cfg.replace(lr=2e-3).lr == 2e-3
    with pytest.raises(ValueError, match="unknown training option"):
        cfg.replace(learning_rate=1)
    with pytest.raises(ValueError, match="needs out"):
        pe_probe.train(TrainConfig())
    r = recipe_for(TrainConfig(dataset="cifar100", epochs=2, randaugment="none"))
    assert (r.name, r.epochs, r.randaugment, r.lr) == ("vit_lite_cifar", 2, None, 6e-4)
    with pytest.raises(ValueError, match="batch_size"):
        recipe_for(TrainConfig(recipe="deit", batch_size=3))


@pytest.mark.parametrize(
    "name, lr, wd, batch, epochs, warmup",
    [("deit", 5e-4, 0.05, 1024, 300, 5), ("swin", 1e-3, 0.05, 1024, 300, 20), ("t2t", 1e-3, 0.03, 512, 310, 10),
     ("vit_lite_cifar", 6e-4, 0.06, 128, 310, 10)],
)
def test_paper_recipes(name, lr, wd, batch, epochs, warmup):
    r = get_recipe(name)
    assert (r.lr, r.weight_decay, r.batch_size, r.epochs, r.warmup_epochs, r.opt) == (lr, wd, batch, epochs, warmup,
                                                                                       "adamw")
    assert r.model is None or timm.is_model(r.model)
    assert set(RECIPES) == {"deit", "swin", "t2t", "vit_lite_cifar", "digits"}


def _recording_steps(monkeypatch) -> list[dict]:
    """Patch the trainer's step to record the raw batch, the images the model sees and the loss targets."""
    from pe_probe.training import loop

    records: list[dict] = []
    step = loop._Trainer._step

    def spy(self, x, y):
        rec = {"raw": x.clone(), "y": y.clone()}
        model, criterion = self.ddp, self.criterion

        def see(inp):
            rec["input"] = inp.detach().clone()
            return model(inp)

        def score(logits, target):
            rec["target"] = target.detach().clone()
            return criterion(logits, target)

        self.ddp, self.criterion = see, score
        try:
            return step(self, x, y)
        finally:
            self.ddp, self.criterion = model, criterion
            records.append(rec)

    monkeypatch.setattr(loop._Trainer, "_step", spy)
    return records


def test_mixup_cutmix_and_label_smoothing_reach_the_loss(tmp_path, monkeypatch):
    """Every batch is mixed (mixup or cutmix, both seen) and its targets are smoothed and mixed by the same lam,
    checked against the formulas (timm's Mixup, DeiT's recipe), not against the trainer's own objects."""
    records = _recording_steps(monkeypatch)
    ls, classes = 0.1, 10
    pe_probe.train(out=tmp_path / "aug", pe_mode="lape", **{
        **TINY_RUN, "epochs": 1, "batch_size": 64, "augment": True, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5, "label_smoothing": ls, "drop_path_rate": 0.1, "re_prob": 0.25, "clip_grad": 1.0})
    off, on = ls / classes, 1 - ls + ls / classes
    kinds = []
    for rec in records:
        raw, inp, t, y = rec["raw"], rec["input"], rec["target"], rec["y"]
        flip, y2 = raw.flip(0), y.flip(0)
        smooth = lambda labels: torch.full((len(labels), classes), off).scatter_(1, labels[:, None], on)  # noqa: E731
        i = int(torch.nonzero(y != y2)[0])
        lam = float((t[i, y[i]] - off) / (on - off))
        torch.testing.assert_close(t, lam * smooth(y) + (1 - lam) * smooth(y2), rtol=0, atol=1e-5)
        assert t.min() >= off - 1e-6  # label smoothing: no class gets 0
        if torch.allclose(inp, lam * raw + (1 - lam) * flip, atol=1e-5) and lam < 1 - 1e-6:
            kinds.append("mixup")
            continue
        box = (inp != raw).any(0).any(0)  # pixels replaced in some image and channel
        rows, cols = torch.nonzero(box.any(1)).ravel(), torch.nonzero(box.any(0)).ravel()
        assert len(rows) and len(cols), "a batch was not mixed"
        sl = (slice(None), slice(None), slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        torch.testing.assert_close(inp[sl], flip[sl], rtol=0, atol=0)
        area = len(rows) * len(cols) / box.numel()
        assert lam == pytest.approx(1 - area, abs=1e-6)  # timm's corrected lam: the box's share
        kinds.append("cutmix")
    assert len(records) == 1437 // 64 and {"mixup", "cutmix"} == set(kinds), kinds


def test_mpvg_without_a_last_ln_pe_is_built_as_asked(tmp_path):
    """timm.create_model drops None kwargs; last_ln_pe=None must still reach the model (not the preset's 0)."""
    out = pe_probe.train(out=tmp_path / "mpvg_none", pe_mode="mpvg", last_ln_pe="none", **{**TINY_RUN, "epochs": 1})
    config = json.loads((out / "config.json").read_text())
    assert config["pe_config"]["last_ln_pe"] is None
    model = pe_probe.load_model(out)
    assert model.pe_config.last_ln_pe is None and model.last_pe_norm is None
    assert not any(k.startswith("last_pe_norm") for k in load_file(str(out / "model.safetensors")))


def test_mpvg_constant_offset_check_takes_the_run_directory(run_dir):
    # the README's call on a run directory: the same number as on the model loaded from it
    from_dir = pe_probe.mpvg_constant_offset_check(run_dir)
    from_str = pe_probe.mpvg_constant_offset_check(str(run_dir))
    from_model = pe_probe.mpvg_constant_offset_check(pe_probe.load_model(run_dir))
    assert from_dir == from_str == from_model and from_dir < 1e-4
