"""The layout rules of docs/extending.md, checked: layers (import-linter), no private
name imported across modules, module and function sizes."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "webhook"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_import_contracts_hold_and_catch_a_violation(tmp_path: Path) -> None:
    kept = lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "0 broken" in kept.stdout
    # The same tree with one forbidden import (the lowest layer reaching the highest).
    shutil.copytree(PACKAGE, tmp_path / "webhook", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    values = tmp_path / "webhook" / "core" / "values.py"
    values.write_text(values.read_text() + "\nimport webhook.http.routes  # noqa\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "Feature packages are layered BROKEN" in broken.stdout
    assert "webhook.core.values -> webhook.http.routes" in broken.stdout


def test_no_private_name_is_imported_from_another_module() -> None:
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("webhook"):
                found += [f"{path.relative_to(ROOT)}: {node.module}.{alias.name}"
                          for alias in node.names if alias.name.startswith("_")]  # fmt: skip
    assert found == []


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules()}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_long_functions_say_why() -> None:
    """A function over MAX_FUNCTION_LINES lines has a docstring line starting "Long:"."""
    unexplained = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if lines > MAX_FUNCTION_LINES and not any(
                line.strip().startswith("Long:") for line in doc.splitlines()
            ):
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert unexplained == []
