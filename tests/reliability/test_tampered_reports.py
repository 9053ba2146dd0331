"""A probe report edited or damaged in a run's cache (``RUN/probe``) is never used: ``ProbeReport.load`` checks
that its files still hash to the report id they carry and that its metadata has its JSON types, and ``figures``
(``probe_run``) probes the run again (cases B05, B06)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pe_probe.core.errors import DataError
from pe_probe.core.report import ARRAYS_FILE, ID_KEY, META_FILE, ProbeReport
from pe_probe.pipeline.run import probe_run

from ..fakes import PRESETS, fake_report


def _saved(tmp_path):
    report = fake_report("r", PRESETS["mpvg"])
    return report.save(tmp_path / "probe")


def _edit_meta(folder, **changes):
    meta = json.loads((folder / META_FILE).read_text())
    meta.update(changes)
    (folder / META_FILE).write_text(json.dumps(meta))


def _edit_arrays(folder, fn):
    with np.load(folder / ARRAYS_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(folder / ARRAYS_FILE, **{k: v if k == ID_KEY else fn(v) for k, v in arrays.items()})  # id kept


def test_an_intact_report_loads(tmp_path):
    folder = _saved(tmp_path)
    assert ProbeReport.load(folder).report_id() == json.loads((folder / META_FILE).read_text())[ID_KEY]


@pytest.mark.parametrize("changes", [{"depth": "abc"}, {"grid": ["a", 2]}, {"n_images": 3.5}])
def test_meta_of_wrong_types_is_refused_in_one_line(tmp_path, changes):
    """B05: meta.json of wrong types is a one-line DataError."""
    folder = _saved(tmp_path)
    _edit_meta(folder, **changes)
    with pytest.raises(DataError, match="probe again") as err:
        ProbeReport.load(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_arrays_of_other_shapes_are_refused(tmp_path):
    """B06: arrays.npz of other shapes is a one-line DataError."""
    folder = _saved(tmp_path)
    _edit_arrays(folder, lambda v: np.zeros((1,) * max(1, v.ndim)))
    with pytest.raises(DataError, match="hash to their report id"):
        ProbeReport.load(folder)


def test_wrong_types_that_still_hash_are_refused(tmp_path):
    report = fake_report("r", PRESETS["mpvg"])
    report.meta["depth"] = "2"  # saved so by the API: the id matches, the type does not
    folder = report.save(tmp_path / "probe")
    with pytest.raises(DataError, match="depth must be an integer"):
        ProbeReport.load(folder)


@pytest.mark.parametrize("tamper", ["meta", "arrays"])
def test_figures_cache_reprobes_a_tampered_report(digits_run, tamper):
    """B05 / B06 as ``figures`` meets them in a run's cache: the run is probed again, not used."""
    first = probe_run(digits_run, max_images=16, progress=False, decode=False)
    folder = digits_run / "probe"
    if tamper == "meta":
        _edit_meta(folder, depth="abc")
    else:
        _edit_arrays(folder, lambda v: np.zeros((1,) * max(1, v.ndim)))
    again = probe_run(digits_run, max_images=16, progress=False, decode=False)
    assert again.meta["depth"] == first.meta["depth"] and again.report_id() == first.report_id()
    assert ProbeReport.load(folder).report_id() == first.report_id()  # the cache was rewritten whole
