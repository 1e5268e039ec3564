"""Module boundaries and lint, in the test run: the import-linter contracts of pyproject.toml
(measurement never imports Ray, the driver or the CLI; ranking, report, the run store and the rules
import neither torch nor Ray, directly or through another module; team files import nothing from
esr_eval) and ruff over the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(TOOLS)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_import_contracts_are_kept() -> None:
    completed = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                               check=False)
    assert completed.returncode == 0 and "0 broken" in completed.stdout, completed.stdout[-4000:] + completed.stderr


def test_a_forbidden_import_breaks_a_contract(tmp_path: Path) -> None:
    """The contracts can fail: a copy of the ranking module that imports torch is caught."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "esr_eval", copy / "esr_eval", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "models", copy / "models")
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    ranking = copy / "esr_eval" / "ranking.py"
    ranking.write_text(ranking.read_text() + "\nimport torch  # noqa: E402,F401\n")
    completed = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=copy, capture_output=True, text=True,
                               check=False, env={"PYTHONPATH": str(copy), "PATH": str(TOOLS)})
    assert completed.returncode != 0
    assert "esr_eval.ranking is not allowed to import torch" in completed.stdout


def test_ruff_finds_nothing() -> None:
    completed = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                               check=False)
    assert completed.returncode == 0, completed.stdout[-4000:]
