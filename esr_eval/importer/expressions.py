"""Folds the expressions of one branch to symbolic values, without running them.

Contract
--------
``ExpressionFolder.value(node)`` returns a value of :mod:`esr_eval.importer.values` for any
expression. It folds literals itself: constants, containers (with ``*``/``**`` unpacking),
f-strings, arithmetic, subscripts and conditional expressions on literals, ``os.path.join``,
``dict(...)`` and the other pure calls of ``_PURE_CALLS``, string methods, and names bound in
``env`` (``model_id`` folds to the branch's id); ``sd[keyname]`` with ``keyname`` a
:class:`KeyChoice` on ``sd`` is that checkpoint's first key present. A method call on a part of a
model (``model.body.fuse()``) is untranslatable. Model patterns go to ``self.models``
(:class:`ModelIdioms`), checkpoint patterns to ``self.checkpoints`` (:class:`CheckpointIdioms`).
A name of ``runtime_names`` (the parameters of ``select_model``) is opaque, as is an unknown
function's result; models and checkpoints handed to an unknown function become opaque too,
since it may change them. Harmless calls (``print``, logging) change nothing.
"""

from __future__ import annotations

import ast
import operator
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from esr_eval.importer.checkpoint_idioms import TORCH_LOADS, CheckpointIdioms
from esr_eval.importer.model_idioms import IMPORT_MODULE, ModelIdioms
from esr_eval.importer.syntax import dotted, is_model_id_ref, source
from esr_eval.importer.values import (
    CheckpointValue,
    ClassRef,
    KeyChoice,
    LiteralValue,
    ModelValue,
    ModuleRef,
    NotLiteral,
    Opaque,
    Untranslatable,
    unrecognised,
)

_HARMLESS_CALLS = frozenset({"print", "pprint", "len", "isinstance", "hasattr", "type", "repr"})
_LOGGER_METHODS = frozenset({"debug", "info", "warning", "error"})
_LITERAL_STR_METHODS = frozenset({"format", "lower", "upper", "replace", "strip"})
_PURE_CALLS = {
    "os.path.join": posixpath.join,
    "osp.join": posixpath.join,
    "path.join": posixpath.join,
    "join": posixpath.join,
    "Path": PurePosixPath,
    "pathlib.Path": PurePosixPath,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "dict": dict,
    "list": list,
    "tuple": tuple,
}
_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_CONVERSIONS = {ord("s"): str, ord("r"): repr, ord("a"): ascii}  # f-string !s, !r, !a


class ExpressionFolder:
    """Folds expressions in the name bindings ``env`` of one branch; ``notes`` collects remarks."""

    def __init__(self, model_id: int, env: Mapping[str, Any], runtime_names: frozenset[str],
                 checkout: Path):
        self.model_id = model_id
        self.env: dict[str, Any] = dict(env)
        self.runtime_names = runtime_names
        self.notes: list[str] = []
        self.models = ModelIdioms(self, checkout)
        self.checkpoints = CheckpointIdioms(self, checkout)

    def value(self, node: ast.expr) -> Any:
        if is_model_id_ref(node):
            return LiteralValue(self.model_id)
        if isinstance(node, ast.Constant):
            return LiteralValue(node.value)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return self.sequence(node)
        if isinstance(node, ast.Dict):
            return self.dictionary(node)
        if isinstance(node, ast.JoinedStr):
            return self.joined_str(node)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
            return self.fold(node, _BINARY_OPERATORS[type(node.op)], node.left, node.right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPERATORS:
            return self.fold(node, _UNARY_OPERATORS[type(node.op)], node.operand)
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        if isinstance(node, ast.IfExp):
            return self.if_expression(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        return unrecognised(node)

    def literal(self, node: ast.expr) -> Any:
        """The folded Python value of ``node``; raises ``NotLiteral`` with the reason if none."""
        value = self.value(node)
        if not isinstance(value, LiteralValue):
            raise NotLiteral(value.reason if isinstance(value, Opaque) else (
                f"is `{source(node)}` (line {node.lineno}), not a literal"))
        return value.value

    def name(self, node: ast.Name) -> Any:
        if node.id in self.env:
            return self.env[node.id]
        if node.id in self.runtime_names:
            return Opaque(f"is computed at run time from `{node.id}` (line {node.lineno})")
        return Opaque(f"refers to `{node.id}`, which is not bound to a literal in this branch "
                      f"(line {node.lineno})")

    def attribute(self, node: ast.Attribute) -> Any:
        name = dotted(node)
        if name is not None and name.split(".")[0] in self.runtime_names \
                and name.split(".")[0] not in self.env:
            return Opaque(f"is computed at run time from `{name}` (line {node.lineno})")
        owner = self.value(node.value)
        if isinstance(owner, ModuleRef):
            return self.models.attribute(owner, node.attr)
        if isinstance(owner, Opaque):
            return owner
        return unrecognised(node)

    def sequence(self, node: ast.List | ast.Tuple | ast.Set) -> Any:
        try:
            items: list[Any] = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    items.extend(self.literal(element.value))
                else:
                    items.append(self.literal(element))
        except NotLiteral as missing:
            return Opaque(missing.reason)
        kind = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
        return LiteralValue(kind(items))

    def dictionary(self, node: ast.Dict) -> Any:
        try:
            result: dict[Any, Any] = {}
            for key, value in zip(node.keys, node.values):
                if key is None:
                    result.update(self.literal(value))
                else:
                    result[self.literal(key)] = self.literal(value)
        except NotLiteral as missing:
            return Opaque(missing.reason)
        return LiteralValue(result)

    def joined_str(self, node: ast.JoinedStr) -> Any:
        try:
            parts = []
            for part in node.values:
                if isinstance(part, ast.FormattedValue):
                    item = self.literal(part.value)
                    if part.conversion != -1:
                        item = _CONVERSIONS[part.conversion](item)
                    spec = self.literal(part.format_spec) if part.format_spec else ""
                    parts.append(format(item, spec))
                else:
                    parts.append(self.literal(part))
        except NotLiteral as missing:
            return Opaque(missing.reason)
        return LiteralValue("".join(parts))

    def fold(self, node: ast.expr, function: Callable[..., Any], *operands: ast.expr) -> Any:
        try:
            values = [self.literal(operand) for operand in operands]
            return LiteralValue(function(*values))
        except NotLiteral as missing:
            return Opaque(missing.reason)
        except (TypeError, ValueError, ArithmeticError) as error:
            return Opaque(f"is `{source(node)}` (line {node.lineno}), which fails: {error}")

    def subscript(self, node: ast.Subscript) -> Any:
        owner = self.value(node.value)
        index = self.value(node.slice)
        if isinstance(owner, CheckpointValue) and isinstance(index, LiteralValue) and isinstance(
                index.value, str):
            return owner.then(index.value)
        if isinstance(owner, CheckpointValue) and isinstance(index, KeyChoice):
            if index.checkpoint == owner:
                return owner.then(*index.keys)
            return Opaque(f"is `{source(node)}` (line {node.lineno}), whose key is chosen by testing "
                          "another checkpoint: not a recognised pattern")
        if isinstance(owner, LiteralValue) and isinstance(index, LiteralValue):
            return self.fold(node, operator.getitem, node.value, node.slice)
        if isinstance(owner, Opaque):
            return owner
        return unrecognised(node)

    def if_expression(self, node: ast.IfExp) -> Any:
        """A literal condition picks its side; a checkpoint key test is a checkpoint idiom."""
        tested = self.checkpoints.tested_key(node.test)
        if tested is not None:
            return self.checkpoints.if_expression(node, *tested)
        condition = self.value(node.test)
        if isinstance(condition, LiteralValue):
            return self.value(node.body if condition.value else node.orelse)
        return Opaque(f"is chosen by `{source(node.test)}` (line {node.lineno}): "
                      "not a recognised pattern")

    def call(self, node: ast.Call) -> Any:
        name = dotted(node.func)
        unbound = name is not None and name.split(".")[0] not in self.env
        if unbound and name in TORCH_LOADS:
            return self.checkpoints.torch_load(node)
        if unbound and name in IMPORT_MODULE:
            return self.models.import_module(node)
        if unbound and name == "getattr":
            return self.models.getattr_(node)
        if unbound and name in _PURE_CALLS:
            return self.pure_call(node, _PURE_CALLS[name])
        if isinstance(node.func, ast.Attribute):
            owner = self.value(node.func.value)
            if isinstance(owner, ModelValue):
                if node.func.attr == "load_state_dict":
                    return self.checkpoints.load_state_dict(node, owner)
                return self.models.method(node, owner)
            if isinstance(owner, CheckpointValue):
                return self.checkpoints.method(node, owner)
            root = node.func.value
            while isinstance(root, (ast.Attribute, ast.Subscript)):
                root = root.value
            if isinstance(root, ast.Name) and isinstance(self.env.get(root.id), ModelValue):
                raise Untranslatable(f"`{source(node)}` at line {node.lineno} calls a method of a part "
                                     "of the model: not a recognised pattern; `after_load` calls a "
                                     "method of the model itself, or with `each_module: true` of every "
                                     "module that has it")
            if isinstance(owner, LiteralValue) and isinstance(owner.value, str) \
                    and node.func.attr in _LITERAL_STR_METHODS:
                return self.pure_call(node, getattr(owner.value, node.func.attr))
        callee = self.value(node.func)
        if isinstance(callee, ClassRef):
            return self.models.construct(node, callee)
        if isinstance(callee, Opaque) and unbound:
            harmless = name in _HARMLESS_CALLS or name.split(".")[-1] in _LOGGER_METHODS
            if not harmless:
                self.poison_arguments(node, name)
            return Opaque(f"is built by a helper function `{name}()` (line {node.lineno}): "
                          "not a recognised pattern")
        if isinstance(callee, Opaque):
            return callee
        return unrecognised(node)

    def poison_arguments(self, node: ast.Call, function: str) -> None:
        """Models and checkpoints handed to an unknown function may be changed by it."""
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(argument, ast.Name) and isinstance(
                    self.env.get(argument.id), (ModelValue, CheckpointValue)):
                self.env[argument.id] = Opaque(
                    f"is passed to `{function}()` at line {node.lineno}, which may change it: "
                    "not a recognised pattern")

    def pure_call(self, node: ast.Call, function: Callable[..., Any]) -> Any:
        try:
            args = [self.literal(a) for a in node.args]
            kwargs = {k.arg: self.literal(k.value) for k in node.keywords if k.arg is not None}
            if any(k.arg is None for k in node.keywords) or any(
                    isinstance(a, ast.Starred) for a in node.args):
                return unrecognised(node)
            return LiteralValue(function(*args, **kwargs))
        except NotLiteral as missing:
            return Opaque(missing.reason)
        except (TypeError, ValueError, KeyError, IndexError) as error:
            return Opaque(f"is `{source(node)}` (line {node.lineno}), which fails: {error}")
