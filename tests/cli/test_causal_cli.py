"""``pe-probe ablate`` and ``pe-probe attribute``: every checkpoint form ``probe`` takes, the run's data set by
default, CSV + JSON written atomically as a pair, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

import pe_probe
import pe_probe.data
from pe_probe.cli import main

from ..conftest import TINY

torch.set_num_threads(1)


@pytest.fixture
def fake_data(monkeypatch):
    """A stand-in for pe_probe.data.build_dataset (10 labelled images) that records its arguments."""
    calls = []

    def build_dataset(name, *, data_dir=None, split="val", img_size=224, in_chans=3, mean=None, std=None):
        calls.append(dict(name=name, data_dir=data_dir, img_size=img_size, mean=mean, std=std, split=split))
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(10, in_chans, img_size, img_size, generator=g),
                             torch.randint(0, 5, (10,), generator=g))

    monkeypatch.setattr(pe_probe.data, "build_dataset", build_dataset)
    return calls


def write_run(run, pe_mode: str = "pvg") -> None:
    """A run directory (config.json + model.safetensors) whose config records the data set ``toy``."""
    kw = dict(TINY, pe_mode=pe_mode)
    model = timm.create_model("pe_deit_tiny_patch16_224", pretrained=False, **kw)
    run.mkdir()
    config = {"model": "pe_deit_tiny_patch16_224", "model_kwargs": kw, "pe_config": {}, "num_classes": 5,
              "recipe": {}, "pe_probe_version": pe_probe.__version__,
              "data": {"dataset": "toy", "img_size": 16, "in_chans": 3, "mean": [0.5, 0.5, 0.5],
                       "std": [0.2, 0.2, 0.2]}}
    (run / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))


def write_timm(path) -> None:
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=7)
    save_file(model.state_dict(), str(path))


def test_ablate_run_directory_uses_the_runs_data(tmp_path, fake_data, capsys):
    write_run(tmp_path / "run")
    rc = main(["ablate", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu",
               "--batch-size", "4"])
    assert rc == 0
    assert fake_data[0]["name"] == "toy" and fake_data[0]["mean"] == (0.5, 0.5, 0.5) and fake_data[0]["split"] == "val"
    frame = pd.read_csv(tmp_path / "out" / "ablation.csv")
    assert list(frame.columns) == ["site", "pe_kind", "layer", "intervention", "metric", "value"]
    assert list(dict.fromkeys(frame.layer)) == [-2, 1, 2, 3]  # pvg: the input, then blocks 1..3
    assert set(frame.metric) == {"top1", "agree", "kl"}  # the fake data set is labelled
    meta = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert meta["n_images"] == 10 and meta["effect"] == "direct" and meta["run"] == str(tmp_path / "run")
    assert meta["cost"]["plain_passes_per_image"] == 1 + 3 * 4
    out = capsys.readouterr().out
    assert "ablated 10 images of 'toy'" in out and "blocks.3.hook_pe" in out and "agree:" in out
    assert pe_probe.read_ablation(tmp_path / "out").attrs["seed"] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ablation.csv", "ablation.json"]


def test_attribute_timm_state_dict(tmp_path, fake_data, capsys):
    ckpt = tmp_path / "deit.safetensors"
    write_timm(ckpt)
    rc = main(["attribute", str(ckpt), "--model", "deit_tiny_patch16_224", "--model-arg", "img_size=32",
               "--model-arg", "depth=2", "--data", "toy", "--out", str(tmp_path / "out"), "--no-progress",
               "--max-images", "3", "--n-steps", "4", "--baseline", "mean", "--n-maps", "2", "--device", "cpu"])
    assert rc == 0
    frame = pd.read_csv(tmp_path / "out" / "attribution.csv")
    assert list(frame.columns) == ["site", "pe_kind", "layer", "metric", "value"]
    assert set(frame.site) == {"hook_input_pe"} and set(frame.pe_kind) == {"absolute"} and {"pe_share", "rel_delta", "pe_attr"} <= set(frame.metric)
    meta = json.loads((tmp_path / "out" / "attribution.json").read_text())
    assert meta["n_images"] == 3 and meta["baseline"] == "mean" and meta["pe_mode"] == "timm"
    assert len(meta["pe_maps"]["hook_input_pe"]) == 2  # (K, h, w) = (2, 2, 2) for 32 px, 16 px patches
    assert "pe_share" in capsys.readouterr().out
    assert fake_data[0]["img_size"] == 32


def test_ablate_timm_state_dict_with_sites(tmp_path, fake_data):
    ckpt = tmp_path / "deit.safetensors"
    write_timm(ckpt)
    rc = main(["ablate", str(ckpt), "--model", "deit_tiny_patch16_224", "--model-arg", "img_size=32",
               "--model-arg", "depth=2", "--data", "toy", "--out", str(tmp_path / "out"), "--no-progress",
               "--interventions", "shuffle", "--sites", "-2", "--seed", "4"])
    assert rc == 0
    frame = pd.read_csv(tmp_path / "out" / "ablation.csv")
    assert set(frame.intervention) == {"shuffle"} and set(frame.layer) == {-2}


def test_outputs_are_replaced_as_a_pair_or_not_at_all(tmp_path, fake_data, monkeypatch, capsys):
    write_run(tmp_path / "run")
    out = tmp_path / "out"
    argv = ["ablate", str(tmp_path / "run"), "--out", str(out), "--no-progress", "--interventions", "zero"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_csv(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pe_probe.core.results, "write_rows", broken_csv)  # the CSV, after the JSON's temporary
    capsys.readouterr()
    assert main(argv + ["--seed", "7"]) == 2  # a file-system error is one line too (docs/reliability.md)
    assert capsys.readouterr().err.strip() == "pe-probe ablate: error: disk full"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file, old pair intact


@pytest.mark.parametrize(
    "command,args,match",
    [
        ("ablate", ["missing.safetensors", "--model", "deit_tiny_patch16_224"], "does not exist"),
        ("attribute", ["{sd}"], "--model"),
        ("ablate", ["{sd}", "--model", "deit_tiny_patch16_224", "--model-arg", "img_size=32", "--model-arg",
                    "depth=2"], "--data is required"),
        ("ablate", ["{run}", "--sites", "blocks.9.hook_pe"], "unknown PE site"),
        ("ablate", ["{run}", "--sites", "0"], "unknown PE site"),  # pvg: block 0 receives no PE
        ("attribute", ["{run}", "--target", "cat"], "--target"),
        ("attribute", ["{run}", "--target", "99"], "target=99"),
        ("attribute", ["{run}", "--n-steps", "0"], "n_steps"),
        ("ablate", ["{run}", "--batch-size", "0"], "batch_size"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, fake_data, command, args, match, capsys):
    write_timm(tmp_path / "m.safetensors")
    write_run(tmp_path / "run")
    subs = {"{sd}": str(tmp_path / "m.safetensors"), "{run}": str(tmp_path / "run")}
    argv = [command] + [subs.get(a, a) for a in args] + ["--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pe-probe {command}: error:") and match in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_attribute_defaults_and_its_table(tmp_path, fake_data, capsys):
    # by default: the row-mean baseline (it converges) and a bounded number of images; one table row per site
    write_run(tmp_path / "run")
    assert main(["attribute", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--no-progress", "--device",
                 "cpu", "--n-steps", "4", "--batch-size", "5"]) == 0
    meta = json.loads((tmp_path / "out" / "attribution.json").read_text())
    assert meta["baseline"] == "mean" and meta["n_images"] == 10  # the fake data set's 10 < 32
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("normalised with the checkpoint's recorded mean [0.5, 0.5, 0.5]")
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["layer"])
    header, rows = lines[start], lines[start + 1:-1]
    assert header.split()[:4] == ["layer", "site", "pe_kind", "pe_share"]
    frame = pd.read_csv(tmp_path / "out" / "attribution.csv")
    sites = list(dict.fromkeys(frame.site))
    assert [r.split()[2] for r in rows] == list(frame.groupby("site", sort=False).pe_kind.first())
    assert [r.split()[1] for r in rows] == sites == ["hook_input_pe", "blocks.1.hook_pe", "blocks.2.hook_pe",
                                                      "blocks.3.hook_pe"]  # pvg: 4 sites, 4 rows
    assert not any("nan" in r for r in rows)
    share = frame[(frame.metric == "pe_share") & (frame.site == "blocks.2.hook_pe")].value.item()
    assert f"{share:.3f}" in rows[2]
    assert main(["attribute", str(tmp_path / "run"), "--out", str(tmp_path / "all"), "--no-progress", "--device",
                 "cpu", "--n-steps", "2", "--max-images", "all", "--sites", "1"]) == 0
    assert json.loads((tmp_path / "all" / "attribution.json").read_text())["n_images"] == 10


def test_attribute_api_defaults_to_a_bounded_number_of_images():
    from pe_probe.core.causal import ATTRIBUTION_IMAGES, DEFAULT_BASELINE

    model = timm.create_model("pe_deit_tiny_patch16_224", pretrained=False, **dict(TINY, pe_mode="pvg")).eval()
    x = torch.randn(ATTRIBUTION_IMAGES + 8, 3, 16, 16)
    attr = pe_probe.attribute(model, x, sites=[1], n_steps=2, progress=False)
    assert attr.meta["n_images"] == ATTRIBUTION_IMAGES == 32 and attr.meta["baseline"] == DEFAULT_BASELINE == "mean"


def test_attribute_table_fits_family_sites():
    # family sites have longer names than blocks.{l}.hook_pe and sites with tokens kept have no PE share:
    # every row is one site, its columns line up with the header, and a NaN share prints as '-'
    from pe_probe.cli.attribute import format_attribution
    from pe_probe.core.causal import ATTRIBUTION_METRICS, AttributionResult

    sites = [("hook_input_pe", "absolute", -2, 0.25), ("blocks.11.attn.hook_attn_bias", "attn_bias", 11, float("nan"))]
    rows = [(s, k, l, m, share if m == "pe_share" else 0.5) for s, k, l, share in sites for m in ATTRIBUTION_METRICS]
    lines = format_attribution(AttributionResult(rows).frame()).splitlines()
    header, body = lines[0], lines[1:-1]
    assert [r.split()[:4] for r in body] == [["-2", "hook_input_pe", "absolute", "0.250"],
                                             ["11", "blocks.11.attn.hook_attn_bias", "attn_bias", "-"]]
    ends = [header.index(c) + len(c) for c in ("pe_share", "rel_delta")]
    for r in body:
        assert r[ends[0] - 1] != " " and r[ends[1] - 1] != " "  # right-aligned under their headers
