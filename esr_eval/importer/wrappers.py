"""Forward wrappers outside ``select_model``, read as the manifest's ``adapter``.

Contract
--------
``model_specific_blocks`` finds every ``if model_id == N:`` block of ``test_demo.py`` outside
``select_model`` and reads each as a :class:`PadWrapper`: a reflect pad (``F.pad(..., 'reflect')``
inline, or in a module-level helper the block calls) whose ``% multiple`` is one integer,
literal or bound to a constant (assignment, default, or argument at the call site). A pad in
another mode, or an unknown multiple, is a ``problem`` that makes the branch untranslatable;
any other model-specific block gives a note to check by hand. ``pad_multiple`` folds a branch's
wrappers into ``adapter.pad_to_multiple`` (LR pixels) or None. Tiling is not recognised.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Mapping

from esr_eval.importer.syntax import dotted, int_constant, model_id_test, source
from esr_eval.importer.values import Untranslatable


@dataclass(frozen=True)
class PadWrapper:
    """An ``if model_id == N`` block outside select_model; ``multiple`` None when not a pad."""

    line: int
    multiple: int | None
    problem: str | None


def model_specific_blocks(module: ast.Module,
                          select_model: ast.FunctionDef) -> dict[int, tuple[PadWrapper, ...]]:
    """``if model_id == N`` blocks outside select_model, by id, read as pad wrappers."""
    helpers = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
    found: dict[int, list[PadWrapper]] = {}
    for top in module.body:
        if top is select_model:
            continue
        for node in ast.walk(top):
            if isinstance(node, ast.If) and (ids := model_id_test(node.test)):
                wrapper = _read_pad_wrapper(node, top, helpers)
                for model_id in ids:
                    found.setdefault(model_id, []).append(wrapper)
    return {model_id: tuple(wrappers) for model_id, wrappers in found.items()}


def pad_multiple(model_id: int, wrappers: tuple[PadWrapper, ...],
                 notes: list[str]) -> int | None:
    """The one multiple a branch is reflect-padded to, or None; notes blocks left unread."""
    multiples = set()
    for wrapper in wrappers:
        if wrapper.problem is not None:
            raise Untranslatable(wrapper.problem)
        if wrapper.multiple is None:
            notes.append(f"code specific to model_id {model_id} at line {wrapper.line} outside "
                         "select_model is not a recognised pad wrapper; check it by hand")
        else:
            multiples.add(wrapper.multiple)
    if len(multiples) > 1:
        raise Untranslatable(f"model_id {model_id} is padded to several multiples "
                             f"{sorted(multiples)} outside select_model")
    return multiples.pop() if multiples else None


def _is_pad_call(node: ast.AST) -> bool:
    name = dotted(node.func) if isinstance(node, ast.Call) else None
    return name is not None and name.split(".")[-1] == "pad"


def _pad_mode(call: ast.Call) -> Any:
    mode_nodes = call.args[2:3] or [k.value for k in call.keywords if k.arg == "mode"]
    if not mode_nodes:
        return "constant"
    return mode_nodes[0].value if isinstance(mode_nodes[0], ast.Constant) else None


def _read_pad_wrapper(block: ast.If, scope: ast.AST,
                      helpers: Mapping[str, ast.FunctionDef]) -> PadWrapper:
    """The pad multiple of ``block``: inline ``F.pad(..., 'reflect')`` or via a helper call."""
    body = ast.Module(body=block.body, type_ignores=[])
    inline = [n for n in ast.walk(body) if _is_pad_call(n)]
    if inline:
        return _pad_wrapper_from(block.lineno, inline, body, _int_bindings(scope))
    for call in (n for n in ast.walk(body) if isinstance(n, ast.Call)):
        helper = helpers.get(call.func.id) if isinstance(call.func, ast.Name) else None
        pads = [n for n in ast.walk(helper) if _is_pad_call(n)] if helper else []
        if pads:
            bindings = _int_bindings(helper)
            bindings.update(_call_site_ints(call, helper))
            return _pad_wrapper_from(block.lineno, pads, helper, bindings)
    return PadWrapper(block.lineno, None, None)


def _pad_wrapper_from(line: int, pads: list[ast.Call], scope: ast.AST,
                      bindings: Mapping[str, set[int]]) -> PadWrapper:
    modes = {_pad_mode(call) for call in pads}
    if modes != {"reflect"}:
        return PadWrapper(line, None, (
            f"the pad at line {pads[0].lineno} uses mode {sorted(map(str, modes))}; the manifest "
            "adapter only reflect-pads"))
    multiples: set[int] = set()
    for node in ast.walk(scope):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
                continue
            constant = int_constant(node.right)
            if constant is not None:
                multiples.add(constant)
            elif isinstance(node.right, ast.Name) and len(bindings.get(node.right.id, ())) == 1:
                multiples.update(bindings[node.right.id])
            else:
                return PadWrapper(line, None, (
                    f"the reflect pad near line {pads[0].lineno} takes a multiple "
                    f"`{source(node.right)}` that is not a literal"))
    if len(multiples) != 1:
        found = sorted(multiples) if multiples else "no `% multiple`"
        return PadWrapper(line, None, (
            f"the reflect pad near line {pads[0].lineno} has {found}; expected one multiple"))
    return PadWrapper(line, multiples.pop(), None)


def _int_bindings(scope: ast.AST) -> dict[str, set[int]]:
    """Every integer constant bound to each name in ``scope`` (assignments and defaults)."""
    bindings: dict[str, set[int]] = {}
    for node in ast.walk(scope):
        pairs: list[tuple[ast.AST, ast.AST]] = []
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs.extend(zip(target.elts, node.value.elts))
                else:
                    pairs.append((target, node.value))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = node.args.posonlyargs + node.args.args
            pairs.extend(zip(positional[len(positional) - len(node.args.defaults):],
                             node.args.defaults))
            pairs.extend((a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d)
        for target, value in pairs:
            name = target.id if isinstance(target, ast.Name) else getattr(target, "arg", None)
            constant = int_constant(value)
            if name is not None and constant is not None:
                bindings.setdefault(name, set()).add(constant)
    return bindings


def _call_site_ints(call: ast.Call, helper: ast.FunctionDef) -> dict[str, set[int]]:
    """Integer constants passed by ``call`` to the parameters of ``helper``."""
    parameters = [a.arg for a in helper.args.posonlyargs + helper.args.args]
    passed = dict(zip(parameters, call.args))
    passed.update({k.arg: k.value for k in call.keywords if k.arg is not None})
    return {name: {int_constant(value)} for name, value in passed.items()
            if int_constant(value) is not None}
