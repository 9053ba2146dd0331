"""Options checked before anything is written: a bad value is one line and exit 2 and leaves no run directory;
a fresh run that fails before saving anything leaves none either."""

from __future__ import annotations

import pytest
from torch import nn

import pe_probe
from pe_probe.cli import main
from pe_probe.core.errors import PEProbeError

from ..training.common import TINY_RUN
from .common import listing

#: The tiny digits run, as flags, without --model-kwargs (each case adds its own).
BASE = ["--recipe", "digits", "--epochs", "2", "--batch-size", "16", "--lr", "5e-3", "--warmup-epochs", "0.5",
        "--num-threads", "1", "--no-progress", "--quiet"]
MODEL = {"img_size": "8", "patch_size": "4", "in_chans": "1", "embed_dim": "32", "depth": "2", "num_heads": "2"}


def _kwargs(**changes: str) -> list[str]:
    return ["--model-kwargs", *(f"{k}={v}" for k, v in {**MODEL, **changes}.items())]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--lr", "inf"], "lr=inf must be a finite number"),
        (["--lr", "-1"], "lr=-1.0 must be in [0, inf)"),
        (["--min-lr", "nan"], "min_lr=nan must be a finite number"),
        (["--warmup-lr=-1e-5"], "warmup_lr=-1e-05 must be in [0, inf)"),
        (["--weight-decay", "inf"], "weight_decay=inf"),
        (["--label-smoothing", "1"], "label_smoothing=1.0 must be in [0, 1)"),
        (["--mixup-prob", "1.5"], "mixup_prob=1.5 must be in [0, 1]"),
        (["--re-prob", "nan"], "re_prob=nan"),
        (["--drop-path-rate", "1"], "drop_path_rate=1.0"),
        (["--scale", "0.9", "0.1"], "scale=(0.9, 0.1)"),
        (["--clip-grad", "-1"], "clip_grad=-1.0"),
        (["--warmup-epochs", "5"], "warmup_epochs=5.0 must be in [0, epochs=2]"),
        (["--opt", "bogus"], "unknown optimizer opt='bogus'"),
        (["--augment", "--randaugment", "bogus"], "Unknown AA policy bogus"),
        (["--num-workers", "-1"], "num_workers=-1 must be an integer of at least 0"),
        (["--num-threads", "0"], "num_threads=0"),
        (["--checkpoint-every", "-1"], "checkpoint_every=-1"),
        (["--probe-every", "1", "--probe-images", "0"], "probe_images=0"),
        (["--device", "bogus"], "device='bogus' is not a device"),
        (["--device", "meta"], "pe-probe runs on cpu or cuda"),
    ],
)
def test_bad_option_is_one_line_and_leaves_nothing(extra, match, tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "run"), *BASE, *_kwargs(), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pe-probe train: error:") and match in err, err
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"num_heads": "3"}, "num_heads=3 does not divide embed_dim=32"),
        ({"depth": "100000"}, "depth=100000 is out of range"),
        ({"embed_dim": "100000", "num_heads": "1"}, "embed_dim=100000 is out of range"),
        ({"img_size": "100000"}, "at most 65536"),
        ({"depth": '"2"'}, "depth='2' has the wrong type"),
        ({"checkpoint_path": "/etc/passwd"}, "checkpoint_path is not allowed"),
        ({"pretrained": "true"}, "pretrained is not allowed"),
        ({"pretrained_cfg": "{}"}, "pretrained_cfg is not allowed"),
        ({"device": "meta"}, "device is not allowed"),
        ({"fc_norm": "true"}, "takes no keyword(s) ['fc_norm']"),
    ],
)
def test_bad_model_kwargs_are_refused_before_building(changes, match, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *BASE, *_kwargs(**changes)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(lr="fast"), "lr='fast' must be a finite number"),
        (dict(epochs=2.5), "epochs=2.5 must be an integer"),
        (dict(seed="0"), "seed='0' must be an integer"),
        (dict(skip_bad="yes"), "skip_bad='yes' must be true or false"),
        (dict(model_kwargs={"act_layer": nn.ReLU}), "act_layer=<class"),
        (dict(model_kwargs=[("depth", 2)]), "model_kwargs must be a dict"),
    ],
)
def test_api_options_of_the_wrong_type_raise_a_precise_error(options, match, tmp_path):
    with pytest.raises((PEProbeError, ValueError), match=match.replace("(", r"\(").replace("[", r"\[")):
        pe_probe.train(out=tmp_path / "run", **{**TINY_RUN, **options})
    assert listing(tmp_path) == []


def test_a_fresh_run_failing_before_it_saved_anything_leaves_no_directory(tmp_path):
    def fail(**_):
        raise RuntimeError("stopped at the end of epoch 1")

    with pytest.raises(RuntimeError, match="epoch 1"):
        pe_probe.train(out=tmp_path / "run", callbacks=[fail], **TINY_RUN)
    assert listing(tmp_path) == []  # config.json was written, then removed with the directory
    pe_probe.train(out=tmp_path / "run", **TINY_RUN)  # so the same command simply runs again
    assert (tmp_path / "run" / "summary.json").is_file()
