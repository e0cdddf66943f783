"""The test suite's own layout: test modules share helpers only through tests/support."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_test_modules_import_no_other_test_module() -> None:
    offenders = []
    for path in TESTS.rglob("*.py"):
        if "support" in path.relative_to(TESTS).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [
                f"{path.relative_to(TESTS)} imports {n}"
                for n in names
                if n.startswith("tests.") and not n.startswith("tests.support")
            ]
    assert not offenders, offenders
