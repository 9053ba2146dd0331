"""Bad input to ``figures`` is one line, before any probing: only incomplete runs, a missing or broken --spec,
--max-images 0, spec ids that would overwrite the render's own files; a truncated arrays.npz is the documented
DataError (cases F03, F05b, F06b, F07, SP09, SP10, API36)."""

from __future__ import annotations

import pytest

import pe_probe
from pe_probe.cli import main
from pe_probe.core.report import ProbeReport
from pe_probe.figures.spec import parse_spec
from pe_probe.pipeline.run import probe_run

from .common import listing


@pytest.fixture
def runs(digits_run, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    digits_run.rename(runs / "r1")
    return runs


def _one_line_nothing_written(argv, runs, tmp_path, capsys, needle):
    before = listing(runs)
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert listing(runs) == before and not (tmp_path / "o").exists()


def test_only_incomplete_runs_is_one_line(runs, tmp_path, capsys):
    """F03: only incomplete runs: one line (no warning line per run before it), nothing written."""
    (runs / "r1" / "summary.json").unlink()
    _one_line_nothing_written(["figures", str(runs), "--out", str(tmp_path / "o"), "--no-progress"], runs, tmp_path,
                              capsys, "no complete run")


@pytest.mark.parametrize("spec, text", [("nope.toml", None), ("bad.toml", "id = [")])
def test_a_bad_spec_is_reported_before_any_probing(spec, text, runs, tmp_path, capsys):
    """F05b (a missing --spec), F06b (a --spec that is not TOML): one line before any run is probed, ablated or
    attributed (no RUN/probe, RUN/ablation.* cache made)."""
    if text is not None:
        (tmp_path / spec).write_text(text)
    _one_line_nothing_written(["figures", str(runs), "--out", str(tmp_path / "o"), "--no-progress", "--spec",
                               str(tmp_path / spec)], runs, tmp_path, capsys, spec)


def test_max_images_0_is_refused(runs, tmp_path, capsys):
    """F07: ``figures --max-images 0``: one line, exit 2, nothing written."""
    _one_line_nothing_written(["figures", str(runs), "--out", str(tmp_path / "o"), "--no-progress", "--max-images",
                               "0"], runs, tmp_path, capsys, "max_images")


@pytest.mark.parametrize("spec_id", ["claims", "index", "Index"])
def test_spec_ids_of_the_renders_own_files_are_reserved(spec_id):
    """SP09 (id ``claims``), SP10 (id ``index``): refused as reserved names."""
    raw = {"id": spec_id, "title": "t", "caption": "c", "kind": "table", "plot": "accuracy_table"}
    with pytest.raises(ValueError, match="reserved"):
        parse_spec(raw, "x.toml")


def test_a_truncated_arrays_npz_is_a_data_error(digits_run):
    """API36: ``ProbeReport.load`` of a folder with a truncated arrays.npz raises DataError (not BadZipFile)."""
    probe_run(digits_run, max_images=16, progress=False)
    arrays = digits_run / "probe" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:100])
    with pytest.raises(pe_probe.DataError, match="unreadable"):
        ProbeReport.load(digits_run / "probe")
