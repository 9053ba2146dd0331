"""config.json, hub configs, spec files and run folders are untrusted input: what timm would load, download or
allocate is refused before it happens, every output stays inside its folder, and a report folder mixed by a killed
write is re-probed, not reused."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import timm
from safetensors.torch import save_file

from pe_probe.cli import main
from pe_probe.core.io import UnsafePathError, contained
from pe_probe.core.report import ProbeReport
from pe_probe.figures.render import render_spec
from pe_probe.figures.spec import load_spec, parse_spec

from .common import listing

#: Edits of a run's config.json (applied to the parsed JSON) and the words of the one-line error.
CONFIG_EDITS = {
    "checkpoint_path": (lambda c, fifo: c["model_kwargs"].update(checkpoint_path=str(fifo)), "checkpoint_path is not allowed"),
    "pretrained": (lambda c, _: c["model_kwargs"].update(pretrained=True), "pretrained is not allowed"),
    "pretrained_cfg": (lambda c, _: c["model_kwargs"].update(pretrained_cfg={"file": "x"}), "pretrained_cfg is not allowed"),
    "unknown key": (lambda c, _: c["model_kwargs"].update(bogus=1), "takes no keyword(s) ['bogus']"),
    "embed_dim": (lambda c, _: c["model_kwargs"].update(embed_dim=100000, num_heads=1), "embed_dim=100000 is out of range"),
    "depth": (lambda c, _: c["model_kwargs"].update(depth=100000), "depth=100000 is out of range"),
    "cannot match": (lambda c, _: c["model_kwargs"].update(depth=1000), "they cannot match"),
    "num_heads": (lambda c, _: c["model_kwargs"].update(num_heads=3), "num_heads=3 does not divide embed_dim=32"),
    "kwarg type": (lambda c, _: c["model_kwargs"].update(depth="2"), "depth='2' has the wrong type"),
    "kwargs type": (lambda c, _: c.update(model_kwargs=[1]), "model_kwargs must be an object"),
    "num_classes type": (lambda c, _: c.update(num_classes="10"), 'num_classes must be a positive integer, not "10"'),
    "img_size type": (lambda c, _: c["data"].update(img_size=[8]), "data.img_size must be a positive integer"),
    "mean type": (lambda c, _: c["data"].update(mean="grey"), "data.mean must be a list of numbers"),
    "signature type": (lambda c, _: c["data"]["signature"].update(size="8x8"), "data.signature must hold"),
    "not an object": (lambda c, _: c.update(data=None), "data must be an object"),
}


@pytest.mark.parametrize("edit", list(CONFIG_EDITS))
@pytest.mark.parametrize("command", ["eval", "probe"])
def test_tampered_config_is_refused_before_anything_is_built(command, edit, digits_run, tmp_path, capsys):
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)  # were checkpoint_path ever opened, the command would hang here (and the watchdog fail it)
    change, match = CONFIG_EDITS[edit]
    config = json.loads((digits_run / "config.json").read_text())
    change(config, fifo)
    (digits_run / "config.json").write_text(json.dumps(config))
    before = listing(tmp_path)
    argv = ["eval", str(digits_run)] if command == "eval" else \
        ["probe", str(digits_run), "--out", str(tmp_path / "report"), "--no-progress"]
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 30  # nothing huge was allocated
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"pe-probe {command}: error:") and match in err, err
    assert listing(tmp_path) == before


def test_tampered_resume_arguments_are_refused(digits_run, capsys):
    config = json.loads((digits_run / "config.json").read_text())
    config["recipe"]["args"]["lr"] = "fast"
    (digits_run / "config.json").write_text(json.dumps(config))
    (digits_run / "summary.json").unlink()
    before = listing(digits_run)
    assert main(["train", "--out", str(digits_run), "--resume", "--no-progress", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr='fast' must be a finite number" in err, err
    assert listing(digits_run) == before


def test_hub_folder_config_cannot_load_a_file(tmp_path, capsys):
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(model.state_dict(), str(hub / "model.safetensors"))
    os.mkfifo(tmp_path / "other.pth")
    (hub / "config.json").write_text(json.dumps({
        "architecture": "deit_tiny_patch16_224", "num_classes": 1000, "pretrained_cfg": {},
        "model_args": {"img_size": 32, "depth": 1, "checkpoint_path": str(tmp_path / "other.pth")}}))
    assert main(["probe", str(hub), "--data", "digits", "--out", str(tmp_path / "report"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint_path is not allowed" in err, err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "/tmp/x", ".hidden", "x.y", "é", "-x", ""])
def test_spec_ids_name_files_inside_the_output_folder_only(bad_id):
    spec = load_spec(next(iter(sorted((p for p in _builtin().iterdir() if p.name.endswith(".toml")),
                                      key=lambda p: p.name))))
    raw = {"id": bad_id, "title": "t", "caption": "c", "kind": spec.kind, "plot": spec.plot,
           "series": [{"key": "a", "label": "A", "select": {"pe_mode": "pvg"}}]}
    with pytest.raises(ValueError, match="id=" if bad_id else "'id' is required"):
        parse_spec(raw, "evil.toml")


def _builtin():
    from pe_probe.figures import builtin_specs_dir

    return builtin_specs_dir()


def test_render_never_writes_outside_its_folder(tmp_path):
    import dataclasses

    from tests.fakes import paper_runs

    spec = load_spec(_builtin() / "fig1.toml")
    evil = dataclasses.replace(spec, id="../escaped")  # a Spec built in code, past parse_spec's check
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafePathError):
        render_spec(evil, paper_runs(), out)
    assert listing(tmp_path) == ["out"]
    with pytest.raises(UnsafePathError):
        contained(out, "sub/../../x")


def test_probe_folder_that_is_a_link_out_of_the_run_is_refused(digits_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    run = digits_run.rename(runs / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    (run / "probe").symlink_to(elsewhere, target_is_directory=True)
    assert main(["figures", str(runs), "--out", str(tmp_path / "fig"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "symbolic link" in err and "run/probe" in err, err
    assert listing(elsewhere) == ["precious.txt"] and not (tmp_path / "fig").exists()


def test_a_mixed_report_folder_is_reprobed_not_reused(digits_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    run = digits_run.rename(runs / "run")
    out = tmp_path / "fig"
    assert main(["figures", str(runs), "--out", str(out), "--no-progress", "--max-images", "32"]) == 0
    first = json.loads((run / "probe" / "meta.json").read_text())["report_id"]
    # what a re-probe killed between its two files leaves: new arrays beside the old meta.json
    with np.load(run / "probe" / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["report_id"] = np.array("0123456789abcdef")
    arrays["tok_map@0"] = arrays["tok_map@0"] + 1.0
    np.savez(run / "probe" / "arrays.npz", **arrays)
    with pytest.raises(Exception, match="come from different probe runs"):
        ProbeReport.load(run / "probe")
    capsys.readouterr()
    assert main(["figures", str(runs), "--out", str(out), "--no-progress", "--max-images", "32"]) == 0
    report = ProbeReport.load(run / "probe")  # consistent again: probed anew
    with np.load(run / "probe" / "arrays.npz") as z:
        assert str(z["report_id"]) == report.meta["report_id"] == first  # the same images give the same report


@pytest.mark.parametrize("name, command", [("metrics.jsonl", "eval"), ("state.pt", "resume"),
                                           ("model.safetensors", "probe-file")])
def test_a_fifo_in_place_of_a_run_file_is_refused_not_waited_on(name, command, digits_run, tmp_path, capsys):
    (digits_run / name).unlink()
    os.mkfifo(digits_run / name)  # opening it for reading would block forever
    if command == "resume":
        (digits_run / "summary.json").unlink()
    argv = {"eval": ["eval", str(digits_run)],
            "resume": ["train", "--out", str(digits_run), "--resume", "--no-progress", "--quiet"],
            "probe-file": ["probe", str(digits_run / name), "--model", "pe_vit_lite_7_4_32", "--data", "digits",
                           "--out", str(tmp_path / "report"), "--no-progress"]}[command]
    before = listing(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and "regular file" in err, err
    assert listing(tmp_path) == before
