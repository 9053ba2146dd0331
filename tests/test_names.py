"""One name per thing (issue 23, item 11): no two modules of pe_probe define a public function or class of the
same name (the CLI's per-command ``register``/``run`` protocol aside), and every ``pe_probe.X`` the README and
docs call exists at the top level. Static (ast and text), so it costs milliseconds."""

from __future__ import annotations

import ast
import collections
import importlib
import inspect
import re
from pathlib import Path

import pe_probe

ROOT = Path(__file__).resolve().parents[1]
#: Each subcommand module of pe_probe.cli defines the same two entry points by design.
CLI_PROTOCOL = {"register", "run"}


def test_no_two_modules_define_the_same_public_name():
    where = collections.defaultdict(list)
    for path in sorted((ROOT / "pe_probe").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(ROOT)))
    shared = {name: files for name, files in where.items() if len(files) > 1 and name not in CLI_PROTOCOL}
    assert shared == {}, shared


def _documented_names() -> set[str]:
    """Every dotted ``pe_probe.NAME[.NAME...]`` the README and docs/*.md write."""
    names = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        names |= {m.rstrip(".") for m in re.findall(r"(?<![\w./])pe_probe\.[A-Za-z_][\w.]*", doc.read_text())}
    return names


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of pe_probe or an attribute reached from one (a file path
    ``pe_probe/x.py`` is not matched above; ``pe_probe.cli`` is a module, ``pe_probe.ProbeReport.load`` an
    attribute)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return False
        return True
    return False


def test_every_documented_pe_probe_name_exists():
    names = _documented_names()
    top = {n.split(".")[1] for n in names}
    assert {"probe", "mpvg_constant_offset_check", "attribute", "train"} <= top  # the scan finds the README's calls
    missing = sorted(n for n in names if not _resolves(n))
    assert missing == [], missing
    # every public function of the probing package that a top-level sibling has is top level too
    for name in ("probe", "probe_at_sizes", "patch_shuffle", "attention_stats", "check_sizes", "capture"):
        assert name in pe_probe.__all__ and callable(getattr(pe_probe, name)), name


def test_nothing_the_user_reads_cites_files_outside_the_repository():
    # the science the code relies on lives in docs/science.md; a user has no ../shared folder
    roots = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "docs", ROOT / "pe_probe", ROOT / "analyses",
             ROOT / "figures" / "index.md"]
    files = [f for r in roots for f in ([r] if r.is_file() else sorted(r.rglob("*"))) if f.is_file()
             and f.suffix in {".md", ".py", ".toml", ".ipynb", ".txt"}]
    assert len(files) > 50
    cited = [str(f.relative_to(ROOT)) for f in files if re.search(r"paper-notes|\.\./shared", f.read_text())]
    assert cited == [], cited
    assert (ROOT / "docs" / "science.md").is_file() and (ROOT / "analyses").is_dir() and (ROOT / "figures").is_dir()


def _instance_attribute(dotted: str) -> bool:
    """Whether ``dotted`` is ``Class.attr`` with ``attr`` set on ``self`` in the class's ``__init__``."""
    owner, _, attr = dotted.rpartition(".")
    if not _resolves(owner):
        return False
    module, _, cls = owner.rpartition(".")
    klass = getattr(importlib.import_module(module), cls, None)
    return isinstance(klass, type) and f"self.{attr}" in inspect.getsource(klass.__init__)


def test_every_qualified_cross_reference_in_the_code_resolves():
    # :func:`pe_probe.x.y` / :class:`~pe_probe.x.Y` in docstrings and comments name what exists (a renamed or
    # moved function leaves none behind)
    refs = set()
    for path in sorted((ROOT / "pe_probe").rglob("*.py")):
        refs |= {(str(path.relative_to(ROOT)), role, name) for role, name in
                 re.findall(r":(func|class|meth|data|mod|attr|exc):`~?(pe_probe(?:\.\w+)+)(?:\(\))?`", path.read_text())}
    assert len(refs) > 100
    missing = sorted((f, name) for f, role, name in refs
                     if not _resolves(name) and not (role == "attr" and _instance_attribute(name)))
    assert missing == [], missing


def test_every_repository_path_the_docs_and_code_cite_exists():
    cited = set()
    for f in [ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "pe_probe").rglob("*.py")]:
        cited |= set(re.findall(r"\b(?:pe_probe|tests|docs|benchmarks|analyses|figures)/[\w./-]+\.(?:py|md|toml|ipynb)\b",
                                f.read_text()))
    assert len(cited) > 30
    assert sorted(p for p in cited if not (ROOT / p).exists()) == []
