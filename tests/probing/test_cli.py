"""``pe-probe probe``: run directories, timm safetensors state dicts, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

import pe_probe
from pe_probe import PEVisionTransformer, ProbeReport
from pe_probe.cli import main

from ..conftest import TINY
from ..training.test_formats import PE_ARCH, PE_NAME, Evil, lape_state_dict, pe_model, save_lape, sd_of


@pytest.fixture
def fake_data(monkeypatch):
    """A stand-in for pe_probe.data.build_dataset that records its arguments."""
    calls = []

    def build_dataset(name, *, data_dir=None, split="val", img_size=224, in_chans=3, mean=None, std=None):
        calls.append(dict(name=name, img_size=img_size, in_chans=in_chans, mean=mean, std=std, split=split,
                          data_dir=data_dir))
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(10, in_chans, img_size, img_size, generator=g), torch.zeros(10))

    import pe_probe.data

    monkeypatch.setattr(pe_probe.data, "build_dataset", build_dataset)
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
    # a bare state dict records no mean/std: the data set's own are used, and the output says so
    assert "normalised with the toy data set's own mean/std (the checkpoint records none)" in out
    assert fake_data[0]["mean"] is None and fake_data[0]["std"] is None
    report = ProbeReport.load(tmp_path / "rep")
    assert report.meta["n_images"] == 6 and report.meta["pe_derived"] and report.meta["depth"] == 2
    assert fake_data[0]["img_size"] == 32 and fake_data[0]["split"] == "val"


def write_run(run, model_kwargs: dict) -> PEVisionTransformer:
    """A run directory (RunDir: config.json + model.safetensors)."""
    model = timm.create_model("pe_deit_tiny_patch16_224", pretrained=False, **model_kwargs)
    run.mkdir()
    config = {"model": "pe_deit_tiny_patch16_224", "model_kwargs": model_kwargs, "pe_config": {},
              "num_classes": model_kwargs["num_classes"], "recipe": {}, "pe_probe_version": pe_probe.__version__,
              "data": {"dataset": "toy", "img_size": 16, "in_chans": 3, "mean": [0.5, 0.5, 0.5],
                       "std": [0.2, 0.2, 0.2], "data_dir": str(run.parent / "toy-data")}}
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
    assert fake_data[0]["data_dir"] == str(tmp_path / "toy-data")  # the run's recorded data directory
    report = ProbeReport.load(tmp_path / "rep")
    assert report.meta["pe_mode"] == "mpvg" and report.meta["run"] == str(tmp_path / "run")
    assert report.meta["model"] == "pe_deit_tiny_patch16_224" and report.meta["n_images"] == 10
    assert report.meta["checkpoint_format"] == "run" and report.meta["split"] == "val"
    assert report.meta["scheme"]["pe_mode"] == "mpvg" and report.meta["pos_embed_resampled"] is None
    argv = ["probe", str(tmp_path / "run"), "--model", "deit_tiny_patch16_224", "--out", str(tmp_path / "r2")]
    assert main(argv) == 2
    assert "names its own model" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_lape_checkpoint_with_no_flags_records_its_source(tmp_path, fake_data, capsys):
    save_lape(tmp_path / "best_checkpoint.pth", lape_state_dict())
    rc = main(["probe", str(tmp_path / "best_checkpoint.pth"), "--data", "toy", "--out", str(tmp_path / "rep"),
               "--no-progress", "--max-images", "4"])
    assert rc == 0
    assert "pe_deit_tiny_patch16_224 (LaPE's args.model='deit_tiny_patch16_224'), weights model" in \
        capsys.readouterr().out
    meta = ProbeReport.load(tmp_path / "rep").meta
    assert meta["checkpoint"] == str(tmp_path / "best_checkpoint.pth") and meta["weights_key"] == "model"
    assert meta["pe_mode"] == "lape" and meta["scheme"]["input_add"] is False and meta["scheme"]["layer0"] is True
    assert meta["scheme_source"] == "LaPE's args.join_type='LaPE'" and meta["n_images"] == 4
    assert fake_data[0]["img_size"] == 32 and fake_data[0]["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert main(["probe", str(tmp_path / "best_checkpoint.pth"), "--ema", "--data", "toy", "--out",
                 str(tmp_path / "ema"), "--no-progress", "--max-images", "2"]) == 0
    assert ProbeReport.load(tmp_path / "ema").meta["weights_key"] == "model_ema"


def test_resampled_pe_is_recorded(tmp_path, fake_data):
    save_file(sd_of(pe_model("pvg")), str(tmp_path / "w.safetensors"))
    args = [f"--model-arg={k}={v}" for k, v in {**PE_ARCH, "img_size": 8}.items()]
    assert main(["probe", str(tmp_path / "w.safetensors"), "--model", PE_NAME, *args, "--data", "toy", "--out",
                 str(tmp_path / "rep"), "--no-progress", "--resample-pos-embed"]) == 0
    meta = ProbeReport.load(tmp_path / "rep").meta
    assert meta["pos_embed_resampled"]["from"] == [4, 4] and meta["pos_embed_resampled"]["to"] == [2, 2]
    assert meta["grid"] == [2, 2] and meta["scheme"]["pe_mode"] == "pvg" and "inferred" in meta["scheme_source"]


@pytest.mark.parametrize("case, match", [
    ("evil", "never unpickles code"),
    ("share", "join_type='share'"),
    ("rpe", "pe='2D_RPE'"),
    ("distilled", "distilled"),
    ("as_default", "pe_mode='lape', global_pool='token' fits"),
    ("into_timm", "load it as pe_deit_tiny_patch16_224"),
    ("grid", "--resample-pos-embed"),
    ("no_name", "--model NAME"),
    ("no_ema", "no EMA weights"),
])
def test_checkpoint_refusals_are_one_line_and_exit_2(tmp_path, fake_data, capsys, case, match):
    marker = tmp_path / "PWNED"
    extra: list[str] = []
    path = tmp_path / "c.pth"
    if case == "evil":
        torch.save({"model": sd_of(pe_model()), "args": Evil(str(marker))}, path)
        extra = ["--model", PE_NAME]
    elif case in ("share", "rpe", "distilled"):
        args = {"share": dict(join_type="share"), "rpe": dict(pe="2D_RPE"),
                "distilled": dict(model="deit_tiny_distilled_patch16_224")}[case]
        save_lape(path, lape_state_dict(), **args)
    elif case in ("as_default", "into_timm", "grid"):
        save_lape(path, lape_state_dict())
        extra = {"as_default": ["--model-arg", "pe_mode=default"], "into_timm": ["--model", "deit_tiny_patch16_224"],
                 "grid": ["--model-arg", "img_size=64"]}[case]
    else:
        torch.save(sd_of(pe_model()), path)
        extra = ["--model", PE_NAME, "--ema"] if case == "no_ema" else []
    out = tmp_path / "rep"
    assert main(["probe", str(path), *extra, "--data", "toy", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pe-probe probe: error:") and match in err and "\n" not in err, err
    assert not out.exists() and not marker.exists() and not fake_data  # nothing probed, nothing written


@pytest.mark.parametrize(
    "args,match",
    [
        (["missing.safetensors", "--model", "deit_tiny_patch16_224"], "does not exist"),
        (["{sd}"], "--model"),
        (["{sd}", "--model", "no_such_model_xyz"], "unknown timm model"),
        (["{sd}", "--model", "deit_small_patch16_224", "--model-arg", "img_size=32"], "cannot match"),
        (["{sd}", "--model", "deit_tiny_patch16_224", "--model-arg", "img_size"], "key=value"),
        (["{dir}"], "config.json"),
        (["{dir}", "--model", "deit_tiny_patch16_224"], "no config.json"),
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


def test_a_non_layerwise_run_prints_the_numbers_worth_looking_at(tmp_path, fake_data, capsys):
    kw = dict(TINY, pe_mode="default", global_pool="avg")
    write_run(tmp_path / "run", kw)
    assert main(["probe", str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--no-progress", "--device",
                 "cpu"]) == 0
    out = capsys.readouterr().out
    assert "no block receives a PE" in out and "Last LN  last_ln_beta_var" in out
    assert "normalised with the checkpoint's recorded mean [0.5, 0.5, 0.5]" in out
    frame = pe_probe.summary_frame(ProbeReport.load(tmp_path / "rep"))
    norms = frame[(frame.metric == "tok_norm_mean") & (frame.layer >= 0)]
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == len(norms) == TINY["depth"]  # one line per block, with its number
    assert all(f"{v:+.4f}" in row for v, row in zip(norms.value, rows))
