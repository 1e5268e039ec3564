"""Pure helpers over :mod:`ast` nodes of ``test_demo.py``.

Contract
--------
Functions of syntax trees only: nothing is imported, evaluated or executed. ``model_id_test``
gives the ids a condition tests (``model_id == N``, ``N == model_id``, ``model_id in (N, M)``,
with ``model_id`` a name or an attribute such as ``args.model_id``) and ``()`` for any other
condition; ``source`` is a node's source clipped to ``UNPARSE_MAX_CHARS`` for messages;
``dotted`` is the dotted name of a ``Name``/``Attribute`` chain or None.
"""

from __future__ import annotations

import ast

UNPARSE_MAX_CHARS = 60


def is_model_id_ref(node: ast.AST) -> bool:
    return ((isinstance(node, ast.Name) and node.id == "model_id")
            or (isinstance(node, ast.Attribute) and node.attr == "model_id"))


def int_constant(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def model_id_test(test: ast.AST) -> tuple[int, ...]:
    """Ids tested by ``model_id == N`` / ``N == model_id`` / ``model_id in (N, M)``; else ()."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return ()
    left, right, op = test.left, test.comparators[0], test.ops[0]
    if isinstance(op, ast.Eq):
        for ref, value in ((left, right), (right, left)):
            if is_model_id_ref(ref) and int_constant(value) is not None:
                return (int_constant(value),)
    if isinstance(op, ast.In) and is_model_id_ref(left) and isinstance(
            right, (ast.Tuple, ast.List, ast.Set)):
        ids = tuple(int_constant(e) for e in right.elts)
        if ids and None not in ids:
            return ids
    return ()


def source(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= UNPARSE_MAX_CHARS else text[:UNPARSE_MAX_CHARS - 1] + "…"


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None
