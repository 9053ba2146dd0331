"""``pe-probe probe``: run directories, timm safetensors state dicts, one-line errors with exit code 2."""

from __future__ import annotations

import json
import sys
import types

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

import pe_probe
from pe_probe import PEVisionTransformer, ProbeReport
from pe_probe.cli import main

from ..conftest import TINY


@pytest.fixture
def fake_data(monkeypatch):
    """A stand-in for pe_probe.data.build_dataset that records its arguments."""
    calls = []

    def build_dataset(name, *, data_dir=None, train=True, img_size=224, in_chans=3, mean=None, std=None):
        calls.append(dict(name=name, img_size=img_size, in_chans=in_chans, mean=mean, std=std, train=train))
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(10, in_chans, img_size, img_size, generator=g), torch.zeros(10))

    fake = types.ModuleType("pe_probe.data")
    fake.build_dataset = build_dataset
    monkeypatch.setitem(sys.modules, "pe_probe.data", fake)
    return calls


def test_timm_state_dict(tmp_path, fake_data, capsys):
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=7)
    ckpt = tmp_path / "deit.safetensors"
    save_file(model.state_dict(), str(ckpt))
    rc = main(["probe", str(ckpt), "--model", "deit_tiny_patch16_224", "--model-arg", "img_size=32",
               "--model-arg", "depth=2", "--data", "toy", "--out", str(tmp_path / "rep"), "--no-progress",
               "--max-images", "6", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tok_pe_corr" in out and "pe_derived=True" in out
    report = ProbeReport.load(tmp_path / "rep")
    assert report.meta["n_images"] == 6 and report.meta["pe_derived"] and report.meta["depth"] == 2
    assert fake_data[0]["img_size"] == 32 and fake_data[0]["train"] is False


def write_run(run, model_kwargs: dict) -> PEVisionTransformer:
    """A run directory (RunDir: config.json + model.safetensors)."""
    model = timm.create_model("pe_deit_tiny_patch16_224", pretrained=False, **model_kwargs)
    run.mkdir()
    config = {"model": "pe_deit_tiny_patch16_224", "model_kwargs": model_kwargs, "pe_config": {},
              "num_classes": model_kwargs["num_classes"], "recipe": {}, "pe_probe_version": pe_probe.__version__,
              "data": {"dataset": "toy", "img_size": 16, "in_chans": 3, "mean": [0.5, 0.5, 0.5],
                       "std": [0.2, 0.2, 0.2]}}
    (run / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    return model


def test_run_directory(tmp_path, fake_data, capsys):
    kw = dict(TINY, pe_mode="mpvg")
    kw.pop("img_size"), kw.pop("patch_size")
    write_run(tmp_path / "run", dict(kw, img_size=16, patch_size=4))
    rc = main(["probe", str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--no-progress", "--mpvg-check",
               "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mpvg constant-offset check" in out
    assert fake_data[0]["mean"] == (0.5, 0.5, 0.5) and fake_data[0]["name"] == "toy"
    report = ProbeReport.load(tmp_path / "rep")
    assert report.meta["pe_mode"] == "mpvg" and report.meta["run"] == str(tmp_path / "run")
    assert report.meta["model"] == "pe_deit_tiny_patch16_224" and report.meta["n_images"] == 10


@pytest.mark.parametrize(
    "args,match",
    [
        (["missing.safetensors", "--model", "deit_tiny_patch16_224"], "does not exist"),
        (["{sd}"], "--model"),
        (["{sd}", "--model", "no_such_model_xyz"], "unknown timm model"),
        (["{sd}", "--model", "deit_small_patch16_224", "--model-arg", "img_size=32"], "does not fit"),
        (["{sd}", "--model", "deit_tiny_patch16_224", "--model-arg", "img_size"], "key=value"),
        (["{dir}"], "config.json"),
        (["{dir}", "--model", "deit_tiny_patch16_224"], "run directory names its own model"),
        (["{txt}"], "neither a run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, match, capsys):
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    sd = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(sd))
    (tmp_path / "d").mkdir()
    (tmp_path / "x.txt").write_text("x")
    subs = {"{sd}": str(sd), "{dir}": str(tmp_path / "d"), "{txt}": str(tmp_path / "x.txt")}
    argv = ["probe"] + [subs.get(a, a) for a in args] + ["--data", "toy", "--out", str(tmp_path / "rep")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pe-probe probe: error:") and match in err and "\n" not in err
