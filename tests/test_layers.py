"""The floors never import upward (docs/architecture.md): checked on the source with ast, and at run time in a
fresh interpreter (no module is faked)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pe_probe"

#: Floor of each subpackage/module: a module may import pe_probe modules of its own floor or below.
FLOOR = {
    "_version": 0, "core": 0,
    "models": 1, "data": 1, "probing": 1, "training": 1, "families": 1,
    "analysis": 2,
    "figures": 3,
    "pipeline": 4,
    "__init__": 5, "cli": 5,  # the public API (pe_probe's namespace) and the CLI that only calls it
    "__main__": 6,
}
TORCH = ("torch", "timm", "torchvision", "captum", "safetensors")
#: Third-party imports each floor must not make (matplotlib/seaborn only in figures and above).
FORBIDDEN = {0: TORCH + ("matplotlib", "seaborn", "pandas"), 2: TORCH + ("matplotlib", "seaborn"), 3: TORCH}
#: Imports a floor may make inside a function only, never at module level: the core result containers build
#: their tidy ``frame()`` with pandas on call, so ``import pe_probe.core`` never loads it (checked at run time
#: below).
DEFERRED = {0: ("pandas",)}


def _part(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module_level(tree: ast.Module) -> set[int]:
    """ids of the import nodes not inside a function (module level, also under if/try)."""
    top: set[int] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.add(id(node))
        todo.extend(ast.iter_child_nodes(node))
    return top


def _imports(path: Path, deferred_ok: tuple[str, ...] = ()):
    tree = ast.parse(path.read_text())
    top = _module_level(tree)
    pkg_parts = ["pe_probe", *path.relative_to(PKG).parts[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and id(node) not in top and all(
                a.name.split(".")[0] in deferred_ok for a in node.names):
            continue  # an import a function makes when called
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from .. import x  -> x may be a module
                    for a in node.names:
                        yield f"{mod}.{a.name}"
                    continue
                yield mod
            else:
                yield node.module or ""


SOURCES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_imports(path):
    floor = FLOOR[_part(path)]
    for name in _imports(path, DEFERRED.get(floor, ())):
        parts = name.split(".")
        if parts[0] == "pe_probe":
            target = parts[1] if len(parts) > 1 else "__init__"
            target_floor = FLOOR.get(target, FLOOR["__init__"])  # a name of the public namespace
            assert target_floor <= floor, f"{path.relative_to(PKG)} (floor {floor}) imports {name} (floor {target_floor})"
        else:
            assert parts[0] not in FORBIDDEN.get(floor, ()), f"{path.relative_to(PKG)} imports {name}"


def test_every_module_has_a_floor():
    assert {_part(p) for p in SOURCES} <= set(FLOOR)


RUNTIME = r"""
import json, sys
from pathlib import Path

import pe_probe                                   # cheap: the ground floor only
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision")], "import pe_probe"
import pe_probe.core, pe_probe.core.causal, pe_probe.core.report
assert "pandas" not in sys.modules, "pe_probe.core imports pandas"  # only the containers' frame() does, on call
import pe_probe.analysis, pe_probe.figures
from pe_probe import ProbeReport, RunDir
from pe_probe.analysis import RunResult, summary_frame
from pe_probe.figures import load_specs, render_all

root = Path(sys.argv[1])
runs = [RunResult.from_dir(RunDir(d), report=ProbeReport.load(RunDir(d).probe_dir)) for d in sorted(root.iterdir())]
summary_frame(runs[0].report)
specs = [s for s in load_specs() if s.id in ("fig4", "fig5")]
result = render_all(runs, sys.argv[2], specs=specs, strict=True, dpi=30)
assert sorted(r.spec.id for r in result.rendered) == ["fig4", "fig5"], result
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision"))
print(json.dumps(loaded))
"""


def saved_runs(root: Path) -> Path:
    """Two finished runs (config.json, summary.json, a saved probe report) written without torch."""
    from pe_probe import RunDir
    from pe_probe.analysis import save_report

    from .fakes import make_run

    for name, preset, changes in (("gap", "default", dict(global_pool="avg")),
                                  ("gap_pe", "default", dict(global_pool="avg", last_ln_pe=0)),
                                  ("pvg", "pvg", {})):
        run = make_run(name, preset, **changes)
        rd = RunDir(root / name)
        rd.path.mkdir(parents=True)
        rd.write_config(dict(run.config))
        rd.write_summary(dict(run.summary))
        save_report(run.report, rd.probe_dir)
    return root


def test_analysis_and_figures_run_without_torch(tmp_path):
    runs = saved_runs(tmp_path / "runs")
    proc = subprocess.run([sys.executable, "-c", RUNTIME, str(runs), str(tmp_path / "out")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "out" / "fig4.png").stat().st_size > 0
