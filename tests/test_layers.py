"""The library's layers never import upward (docs/contracts.md), checked on the source with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pe_probe"

# layer of each subpackage/module: a module may import pe_probe modules of its own layer or below
LAYER = {
    "errors": 0, "io": 0, "paper": 0, "_version": 0,
    "models": 1, "probe": 1, "train": 1, "data": 1,
    "analysis": 2,
    "figures": 3,
    "pipeline": 4, "cli": 4, "api": 4, "__init__": 4, "__main__": 4,
}
#: third-party imports each layer must not make
FORBIDDEN = {2: ("torch", "timm", "torchvision", "matplotlib", "seaborn"), 3: ("torch", "timm", "torchvision")}


def _part(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    pkg_parts = ["pe_probe", *path.relative_to(PKG).parts[:-1]]
    for node in ast.walk(tree):
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
    layer = LAYER[_part(path)]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "pe_probe":
            target = parts[1] if len(parts) > 1 else "__init__"
            target_layer = LAYER.get(target, 4)
            assert target_layer <= layer, f"{path.relative_to(PKG)} (layer {layer}) imports {name} (layer {target_layer})"
        else:
            assert parts[0] not in FORBIDDEN.get(layer, ()), f"{path.relative_to(PKG)} imports {name}"
