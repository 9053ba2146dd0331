"""``pe-probe attention``: attention statistics of a checkpoint, the patch-shuffle test and a resolution sweep,
each saved as its CSV + JSON pair and read back equal to the API's result; bad input in one line, exit 2."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import pe_probe
from pe_probe.cli import main
from pe_probe.core.attention import AttentionResult, ResolutionResult, ShuffleResult

from .test_causal_cli import fake_data, write_run, write_timm  # noqa: F401  (fixture)

torch.set_num_threads(1)


def test_attention_of_a_run_with_shuffle_and_sizes(tmp_path, fake_data, capsys):  # noqa: F811
    write_run(tmp_path / "run", "mpvg")
    out = tmp_path / "out"
    rc = main(["attention", str(tmp_path / "run"), "--out", str(out), "--no-progress", "--device", "cpu",
               "--batch-size", "4", "--shuffle", "--sizes", "8,16,24"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "attn_distance" in text and "patch shuffle" in text and "resolution sweep: top-1 8 px" in text
    att = AttentionResult.load(out)
    assert att.meta["n_images"] == 10 and set(att.frame()["layer"]) == {0, 1, 2, 3}
    # the API on the same model and data gives the same rows
    model, _ = pe_probe.load_checkpoint(tmp_path / "run")
    data = pe_probe.data.build_dataset("toy", img_size=16, in_chans=3)
    api = pe_probe.attention_stats(model, data, batch_size=4, progress=False)
    pd.testing.assert_frame_equal(att.frame(), api.frame(), check_exact=False, rtol=1e-6)
    sh = ShuffleResult.load(out)
    assert [b for b, m, _ in sh.rows if m == "agree"] == [1, 2, 4] and sh.rows[0][2] == 1.0
    res = ResolutionResult.load(out)
    assert sorted(set(res.frame()["img_size"])) == [8, 16, 24]
    assert res.meta["per_size"]["24"]["pe_resampled"] == [16, 36]


def test_bad_sizes_and_unsupported_models_are_one_line(tmp_path, fake_data, capsys):  # noqa: F811
    write_run(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        main(["attention", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--sizes", "a,b"])
    assert e.value.code == 2
    capsys.readouterr()
    rc = main(["attention", str(tmp_path / "run"), "--out", str(tmp_path / "o2"), "--no-progress", "--device", "cpu",
               "--sizes", "18"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "4-px patches" in err
    assert not (tmp_path / "o2" / "attention.csv").exists()  # refused before anything was measured
