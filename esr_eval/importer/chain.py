"""Reader of the ``if model_id == N: … elif …`` chain of ``select_model`` in ``test_demo.py``.

Contract
--------
``find_select_model`` returns the top-level ``def select_model`` of a parsed module or raises
:class:`NtireImportError`. ``split_chain`` returns the statements before the chain (the
prelude, run before every branch), each branch with the ids its condition tests, and the parts
of the chain that test no id (an ``elif`` on something else, a final ``else`` that does more than
raise) as :class:`UntranslatedBranch` entries. Nothing is evaluated.
"""

from __future__ import annotations

import ast
from pathlib import Path

from esr_eval.importer.report import NtireImportError, UntranslatedBranch
from esr_eval.importer.syntax import model_id_test, source

SELECT_MODEL_FUNCTION = "select_model"


def find_select_model(module: ast.Module, path: Path) -> ast.FunctionDef:
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == SELECT_MODEL_FUNCTION:
            return node
    raise NtireImportError(f"{path}: no top-level `def {SELECT_MODEL_FUNCTION}(args, device)`; "
                           "import-ntire reads only NTIRE-style test_demo.py files")


def split_chain(select_model: ast.FunctionDef, path: Path) -> tuple[
        list[ast.stmt], list[tuple[tuple[int, ...], ast.If]], list[UntranslatedBranch]]:
    """(prelude statements, [(model ids, branch If)], untranslated) of the if-chain."""
    for index, statement in enumerate(select_model.body):
        if isinstance(statement, ast.If) and model_id_test(statement.test):
            break
    else:
        raise NtireImportError(f"{path}:{select_model.lineno}: `{SELECT_MODEL_FUNCTION}` has no "
                               "`if model_id == N:` chain")
    branches: list[tuple[tuple[int, ...], ast.If]] = []
    untranslated: list[UntranslatedBranch] = []
    node: ast.stmt | None = statement
    while isinstance(node, ast.If):
        ids = model_id_test(node.test)
        if ids:
            branches.append((ids, node))
        else:
            untranslated.append(UntranslatedBranch(node.lineno, (), (
                f"branch condition `{source(node.test)}` is not `model_id == N`")))
        orelse = node.orelse
        node = orelse[0] if len(orelse) == 1 and isinstance(orelse[0], ast.If) else None
        if node is None and orelse and not all(isinstance(s, ast.Raise) for s in orelse):
            untranslated.append(UntranslatedBranch(orelse[0].lineno, (), (
                "the final `else` branch has no model_id, so it is not translated")))
    return select_model.body[:index], branches, untranslated
