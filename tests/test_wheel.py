"""A normal (non-editable) install works: build the wheel, install it into a fresh virtual environment away from
the source tree, and render figures from a small saved run there with the installed ``pe-probe`` command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_layers import saved_runs

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_renders_figures_without_the_source_tree(tmp_path):
    src = tmp_path / "src"  # only what the build reads (the tracked package, pyproject, README)
    shutil.copytree(ROOT / "pe_probe", src / "pe_probe", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"),
          str(src)], cwd=tmp_path)
    wheel = next((tmp_path / "whl").glob("pe_probe-*.whl"))

    venv = tmp_path / "venv"  # the dependencies come from this interpreter's site-packages; nothing is downloaded
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    py, cli = venv / "bin" / "python", venv / "bin" / "pe-probe"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
         cwd=tmp_path)

    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(py), "-c", "import pe_probe.figures as f; print(f.__file__); print(f.builtin_specs_dir())"],
                 cwd=work).stdout.split()
    assert all(str(venv) in p for p in where), where  # the installed copy, specs included, not the source tree

    runs = saved_runs(work / "runs")
    proc = _run([str(cli), "figures", str(runs), "--out", str(work / "figs"), "--no-progress"], cwd=work)
    assert "failed" in proc.stdout and " 0 failed" in proc.stdout, proc.stdout
    index = (work / "figs" / "index.md").read_text()
    for fig in ("fig4", "fig5"):
        assert (work / "figs" / f"{fig}.png").stat().st_size > 0 and f"({fig}.png)" in index
