"""Every case of ``cases.txt`` (the 54 faults and bad inputs of issue 24) is named by a test here: in a test's
name, its docstring or one of its ``pytest.param`` ids, so ``grep -w ID tests/reliability`` finds what checks it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def case_ids() -> list[str]:
    """The case ids of cases.txt, in order (comments and blank lines left out)."""
    lines = (line.strip() for line in (HERE / "cases.txt").read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def named_tests() -> dict[str, str]:
    """``{file::test: the text that names it}``: the test's name, its docstring and its ``pytest.param`` ids."""
    out = {}
    for path in sorted(HERE.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            ids = [kw.value.value for dec in node.decorator_list for call in ast.walk(dec)
                   if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "param"
                   for kw in call.keywords if kw.arg == "id" and isinstance(kw.value, ast.Constant)]
            out[f"{path.name}::{node.name}"] = " ".join([node.name.upper(), ast.get_docstring(node) or "", *ids])
    return out


def _named(case: str, text: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(case)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


def test_the_case_list_holds_54_distinct_ids():
    ids = case_ids()
    assert len(ids) == 54 and len(set(ids)) == 54, ids
    assert all(re.fullmatch(r"[A-Z]+[0-9]+[a-z]?", i) for i in ids), ids


def test_every_case_is_named_by_a_test():
    tests = named_tests()
    missing = [case for case in case_ids() if not any(_named(case, text) for text in tests.values())]
    assert missing == [], f"cases no test in tests/reliability names: {missing}"


def test_the_index_finds_a_missing_case():
    assert _named("RP08", "RP08 / RP08b") and not _named("RP08", "RP08b only") and not _named("D0", "D02")
    assert not _named("FS08", " ".join(named_tests().values()))
