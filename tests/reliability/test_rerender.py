"""A re-render of ``figures`` is all or nothing: it is written into a temporary folder inside ``--out`` and moved
into place only when complete (index.md last), so a render that fails (disk full, a file-size limit, a figure
raising with strict, an interrupt) leaves the previous set with its claims.csv and index.md, and no temporary
folder (cases FS06, D04)."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys

import pytest

import pe_probe.figures.render as render_module
from pe_probe.figures import builtin_specs_dir, render_all

from ..fakes import paper_runs
from .common import ROOT, env, listing

#: Two specs (a figure and a table): enough for a set with an index, cheap to draw.
SPECS = [str(builtin_specs_dir() / "fig1.toml"), str(builtin_specs_dir() / "table1.toml")]


@pytest.fixture(scope="module")
def runs():
    return paper_runs()


def _snapshot(out):
    return {p: (out / p).read_bytes() for p in listing(out) if (out / p).is_file()}


@pytest.fixture
def rendered(runs, tmp_path):
    """``(out, its files' bytes)`` after one complete render."""
    out = tmp_path / "o"
    result = render_all(runs, out, specs=SPECS, strict=True, dpi=20)
    assert result.index == out / "index.md" and (out / "claims.csv").is_file()
    snap = _snapshot(out)
    assert {"fig1.png", "fig1.pdf", "fig1.csv", "table1.md", "table1.csv", "claims.csv", "index.md"} <= set(snap)
    return out, snap


def _fail_rename_onto(monkeypatch, name, code):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name:
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _raise_at(monkeypatch, spec_id, exc):
    real = render_module.render_spec

    def render_spec(spec, *args, **kwargs):
        if spec.id == spec_id:
            raise exc
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(render_module, "render_spec", render_spec)


@pytest.mark.parametrize("how", ["disk-full", "no-room-for-the-temp-folder", "strict-figure-raises", "interrupt"])
def test_fs06_a_failed_rerender_keeps_the_previous_set_with_its_index(how, rendered, runs, monkeypatch):
    out, before = rendered
    if how == "disk-full":  # the second spec's file cannot be written
        _fail_rename_onto(monkeypatch, "table1.md", errno.ENOSPC)
        with pytest.raises(OSError) as err:
            render_all(runs, out, specs=SPECS, dpi=30)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(out / "table1.md")  # not the temp's
    elif how == "no-room-for-the-temp-folder":
        def mkdtemp(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / ".render.pe-probe-abcd1234.tmp"))

        monkeypatch.setattr(render_module.tempfile, "mkdtemp", mkdtemp)
        with pytest.raises(OSError) as err:
            render_all(runs, out, specs=SPECS, dpi=30)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(out)
    elif how == "strict-figure-raises":
        _raise_at(monkeypatch, "table1", ValueError("broken"))
        with pytest.raises(ValueError, match="broken"):
            render_all(runs, out, specs=SPECS, strict=True, dpi=30)
    else:
        _raise_at(monkeypatch, "table1", KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            render_all(runs, out, specs=SPECS, dpi=30)
    assert _snapshot(out) == before  # claims.csv, index.md and every figure as they were (dpi 30 drew new ones)
    assert [p for p in listing(out) if p.startswith(".")] == []  # no temporary folder, no lock file


def test_d04_a_first_render_that_fails_leaves_no_index(runs, tmp_path, monkeypatch):
    out = tmp_path / "o"
    _fail_rename_onto(monkeypatch, "table1.md", errno.ENOSPC)
    with pytest.raises(OSError) as err:
        render_all(runs, out, specs=SPECS, dpi=20)
    assert err.value.filename == str(out / "table1.md")
    assert not out.exists() or [p for p in listing(out) if p.endswith(".md") or p.startswith(".")] == []


def test_the_finished_render_is_moved_into_place_with_index_md_last(rendered, runs, monkeypatch):
    out, _ = rendered
    (out / ".render.pe-probe-abcd1234.tmp").mkdir()  # what a killed render leaves: swept
    (out / ".render.pe-probe-abcd1234.tmp" / "fig1.png").write_bytes(b"half")
    (out / ".render.notes.tmp").mkdir()  # a user's folder: kept
    moved = []
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        moved.append((os.path.basename(os.path.dirname(src)), os.path.dirname(dst), os.path.basename(dst)))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    result = render_all(runs, out, specs=SPECS, dpi=30)
    into_out = [name for src_dir, dst_dir, name in moved if src_dir.startswith(".render.pe-probe-")
                and dst_dir == str(out)]
    assert into_out[-2:] == ["claims.csv", "index.md"] and len(into_out) == 7
    assert result.index == out / "index.md" and all(p.parent == out and p.exists() for p in result.files())
    assert [p for p in listing(out) if p.startswith(".")] == [".render.notes.tmp"]


@pytest.mark.slow
def test_fs06_under_a_file_size_limit_the_previous_set_survives(rendered, tmp_path):
    out, before = rendered  # at dpi 20; the new render at dpi 150 writes a PNG over the 4 KiB limit
    limit = 4096

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = ("import sys\nfrom pe_probe.figures import render_all\nfrom tests.fakes import paper_runs\n"
            "render_all(paper_runs(), sys.argv[1], specs=sys.argv[2:], strict=True, dpi=150)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out), *SPECS], env=env(MPLBACKEND="Agg"),
                          capture_output=True, text=True, timeout=300, preexec_fn=limited, cwd=ROOT)
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr
    assert str(out / "fig1.png") in proc.stderr  # the file in --out, not in the temporary folder
    assert _snapshot(out) == before
    assert [p for p in listing(out) if p.startswith(".")] == []
