"""The exploration notebook runs top to bottom on tiny models (executed with nbclient)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "analyses" / "explore.ipynb"


@pytest.mark.slow
def test_explore_notebook_executes_says_what_it_shows_and_cleans_up(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("PE_PROBE_NB_EPOCHS", "2")
    monkeypatch.delenv("PE_PROBE_NB_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's temporary folder goes here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {i: c.get("outputs", []) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    assert all(not any(o.get("output_type") == "error" for o in outs) for outs in outputs.values())
    text = "\n".join(o.get("text", "") for outs in outputs.values() for o in outs if o.get("output_type") == "stream")
    # the sentences are computed from the run's own numbers, whatever they are
    assert "r from " in text and "slope over blocks" in text
    check = next(c for c in nb.cells if c.cell_type == "code" and "mpvg_constant_offset_check" in c.source)
    assert float(check.outputs[-1]["data"]["text/plain"]) < 1e-3 and "float rounding" in check.outputs[0]["text"]
    assert "removed" in text and not list(tmp_path.glob("pe-probe-nb-*"))  # its temporary folder is gone


def test_notebook_is_in_sync_with_its_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebook", NOTEBOOK.with_name("make_notebook.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in stored.cells] == [c.source for c in mod.build().cells]
    assert os.path.getsize(NOTEBOOK) > 0
