"""``pe-probe train`` / ``pe-probe eval``: a tiny end-to-end run, and bad input -> one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

from pe_probe.cli import main

from .common import cli_args


def _fails(argv, capsys, match: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and match in err, err


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), *cli_args(**{"--pe-mode": "pvg", "--global-pool": "token"})]) == 0
    return out


def test_cli_train_then_eval(cli_run, capsys):
    config = json.loads((cli_run / "config.json").read_text())
    kw = config["model_kwargs"]
    assert (kw["pe_mode"], kw["global_pool"], kw["embed_dim"], kw["patch_size"]) == ("pvg", "token", 32, 4)
    capsys.readouterr()
    assert main(["eval", str(cli_run)]) == 0
    records = json.loads((cli_run / "eval.json").read_text())
    summary = json.loads((cli_run / "summary.json").read_text())
    assert len(records) == 1 and records[0]["split"] == "val"
    record = records[0]
    assert record["dataset"] == "digits" and record["n"] == 360 and record["top1"] == pytest.approx(summary["top1"])
    assert "top1" in capsys.readouterr().out
    # a second evaluation (another split) is kept beside the first; repeating one replaces it
    assert main(["eval", str(cli_run), "--split", "train"]) == 0
    assert main(["eval", str(cli_run), "--split", "train"]) == 0
    records = json.loads((cli_run / "eval.json").read_text())
    assert [r["split"] for r in records] == ["val", "train"] and records[1]["n"] == 1437


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--model", "pe_vit_nope"], "unknown model 'pe_vit_nope'"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--recipe", "fast"], "unknown recipe 'fast'"),
        (["--dataset", "cifar100", "--data-dir", "{tmp}/missing"], "does not exist"),
        (["--dataset", "imagefolder", "--data-dir", "{tmp}/empty"], "is empty"),
        (["--dataset", "cifar10", "--data-dir", "{tmp}/other"], "--download"),
        (["--pe-mode", "default", "--no-pe-hierarchical"], "pe_hierarchical only applies"),
        (["--last-ln-pe", "9"], "last_ln_pe=9"),
        (["--epochs", "0"], "epochs=0"),
    ],
)
def test_cli_train_bad_input(tmp_path, capsys, extra, match):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *cli_args()] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    _fails(argv, capsys, match)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "other"]
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["x.txt"]


def test_cli_bad_model_kwargs(tmp_path, capsys):
    _fails(["train", "--out", str(tmp_path / "r"), *cli_args(), "--model-kwargs", "depth"], capsys, "key=value")
    _fails(["train", "--out", str(tmp_path / "r"), *cli_args(), "--model-kwargs", "bogus=1"], capsys, "takes no keyword(s) ['bogus']")
    assert not (tmp_path / "r").exists()


def test_cli_existing_run_without_resume(cli_run, capsys):
    before = sorted(p.name for p in cli_run.iterdir())
    _fails(["train", "--out", str(cli_run), *cli_args()], capsys, "--resume")
    assert sorted(p.name for p in cli_run.iterdir()) == before


def test_cli_corrupt_checkpoints(cli_run, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(cli_run, bad)
    (bad / "eval.json").unlink(missing_ok=True)
    (bad / "model.safetensors").write_bytes(b"\x00" * 20)
    _fails(["eval", str(bad)], capsys, "corrupt")
    assert not (bad / "eval.json").exists()
    (bad / "summary.json").unlink()
    (bad / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    _fails(["train", "--out", str(bad), "--resume", "--no-progress", "--quiet"], capsys, "corrupt")
    (bad / "config.json").write_text("{not json")
    _fails(["eval", str(bad)], capsys, "corrupt")
    _fails(["eval", str(tmp_path / "nowhere")], capsys, "does not exist")
