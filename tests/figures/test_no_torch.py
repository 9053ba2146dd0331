"""The figures layer, RunResult and the paper numbers never import torch (docs/contracts.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "pe_probe" / "figures").glob("*.py")) + [
    ROOT / "pe_probe" / "analysis" / "runs.py",
    ROOT / "pe_probe" / "paper.py",
]
FORBIDDEN = ("torch", "timm", "torchvision", "captum", "safetensors")
FORBIDDEN_PE = ("models", "probe", "train", "data", "pipeline", "cli")


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by ``path`` (relative imports resolved against pe_probe)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(parts[:-node.level]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out += [(mod, node.lineno)] + [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return out


def test_no_torch_imports_in_source():
    bad = []
    for f in FILES:
        for mod, line in _imports(f):
            top = mod.split(".")
            if top[0] in FORBIDDEN or (top[0] == "pe_probe" and len(top) > 1 and top[1] in FORBIDDEN_PE):
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, bad


SCRIPT = r"""
import sys, types
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
pkg = types.ModuleType("pe_probe")  # skip pe_probe/__init__ (it registers the torch models)
pkg.__path__ = [sys.argv[1] + "/pe_probe"]
sys.modules["pe_probe"] = pkg
import pe_probe.paper, pe_probe.analysis.runs, pe_probe.figures
from pe_probe.figures import render_all, load_specs
from pe_probe.analysis.runs import RunResult
pe = dict(layerwise=False, input_add=True, layer0=False, hierarchical=True, last_ln_pe=None, global_pool="avg")
runs = [RunResult("gap", {"model": "m", "pe_config": pe}, {"top1": 70.0}),
        RunResult("gap_pe", {"model": "m", "pe_config": {**pe, "last_ln_pe": 0}}, {"top1": 71.0})]
specs = [s for s in load_specs() if s.id in ("fig5", "table1")]
result = render_all(runs, sys.argv[2], specs=specs, strict=True, dpi=30)
assert [r.spec.id for r in result.rendered] == ["fig5"], result
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
print("ok")
"""


def test_imports_and_renders_with_torch_blocked(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
