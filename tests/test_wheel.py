"""A normal (non-editable) install works: build the wheel, install it into a fresh virtual environment away from
the source tree, and render figures from a small saved run there with the installed ``pe-probe`` command."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from .test_layers import saved_runs

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no source tree on the path
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _site_dirs() -> list[str]:
    """The folders this interpreter imports installed packages from (a venv's own, or the system's)."""
    dirs = [*site.getsitepackages(), site.getusersitepackages() if site.ENABLE_USER_SITE else ""]
    return [d for d in dict.fromkeys(dirs) if d and Path(d).is_dir()]


def _see_this_interpreters_packages(py: Path) -> None:
    """Let the new venv import the dependencies of the interpreter running the tests, nothing downloaded.

    ``venv --system-site-packages`` would not do: from inside a venv it shows the *base* interpreter's
    packages, not this venv's (where pandas, torch, ... are). A ``.pth`` file in the new venv's site-packages
    appends this interpreter's site folders instead; entries of a ``.pth`` file go after the venv's own folder,
    so the installed wheel is found first, and the ``.pth`` files inside them (an editable install of the
    source tree among them) are not run."""
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_pe_probe_test_deps.pth").write_text("\n".join(_site_dirs()) + "\n")


@pytest.mark.slow
def test_wheel_installs_and_renders_figures_without_the_source_tree(tmp_path):
    src = tmp_path / "src"  # only what the build reads (the tracked package, pyproject, README)
    shutil.copytree(ROOT / "pe_probe", src / "pe_probe", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"),
          str(src)], cwd=tmp_path)
    wheel = next((tmp_path / "whl").glob("pe_probe-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py, cli = venv / "bin" / "python", venv / "bin" / "pe-probe"
    _see_this_interpreters_packages(py)
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
