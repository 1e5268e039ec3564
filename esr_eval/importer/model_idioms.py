"""How a branch names and builds its model: imports of the team's file, then ``Cls(...)``.

Contract
--------
Recognised: ``from models.teamNN_X import Cls`` (also at the top of ``test_demo.py``, read by
``module_level_imports``), ``import models.teamNN_X [as m]``,
``importlib.import_module('models.teamNN_X')`` with ``getattr(module, 'Cls')``, and a call of the
class whose arguments all fold to literals (``*args`` / ``**kwargs`` included). Methods that
return the model itself (``.to``, ``.eval``, …) keep it; any other is recorded in ``calls`` as an
``after_load`` call (literal arguments; a string naming a weights-like file or a file of the
checkout, allowed only as the first argument, becomes its checked ``path``), and so is the loop
``for m in model.modules(): if hasattr(m, 'name'): m.name(…)`` (``each_module``); a loop that
only freezes the parameters is dropped (the evaluator freezes them); any other ``for`` is refused.
A module counts as local when ``checkout/<dotted path>.py`` or ``…/__init__.py`` exists
(``local_module_file``); no file is read or imported.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from esr_eval.importer.syntax import source
from esr_eval.importer.values import (
    ClassRef,
    LiteralValue,
    MethodCall,
    ModelValue,
    ModuleRef,
    NotLiteral,
    Opaque,
    Untranslatable,
    unrecognised,
)

if TYPE_CHECKING:
    from esr_eval.importer.expressions import ExpressionFolder

IMPORT_MODULE = frozenset({"importlib.import_module", "import_module"})
_MODEL_METHODS_RETURNING_SELF = frozenset({"to", "cuda", "cpu", "eval", "float", "requires_grad_"})
# a string argument with one of these suffixes names a file (checked, then passed as `path`)
_FILE_SUFFIXES = frozenset({".pth", ".pt", ".pkl", ".ckpt", ".safetensors", ".bin", ".npz", ".npy"})


def local_module_file(checkout: Path, module: str) -> str | None:
    """POSIX path of ``module`` inside the checkout, or None when it is not a local file."""
    relative = module.replace(".", "/")
    for candidate in (f"{relative}.py", f"{relative}/__init__.py"):
        if (checkout / candidate).is_file():
            return candidate
    return None


def module_level_imports(module: ast.Module, checkout: Path) -> dict[str, Any]:
    """Classes imported at the top of test_demo.py from ``models.*`` or files of the checkout."""
    env: dict[str, Any] = {}
    for node in module.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "models" or local_module_file(
                    checkout, node.module) is not None:
                for alias in node.names:
                    env[alias.asname or alias.name] = ClassRef(node.module, alias.name)
    return env


class ModelIdioms:
    """The model-building patterns of one branch; binds names in ``folder.env``."""

    _uids = itertools.count()

    def __init__(self, folder: ExpressionFolder, checkout: Path):
        self.folder = folder
        self.checkout = checkout
        self.imported_modules: set[str] = set()
        self.calls: dict[int, list[MethodCall]] = {}

    def import_(self, node: ast.Import) -> None:
        for alias in node.names:
            if local_module_file(self.checkout, alias.name) is None:
                continue
            self.imported_modules.add(alias.name)
            if alias.asname:
                self.folder.env[alias.asname] = ModuleRef(alias.name)
            else:
                root = alias.name.split(".")[0]
                self.folder.env[root] = ModuleRef(root)

    def import_from(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            raise Untranslatable(f"relative import at line {node.lineno}: not a recognised "
                                 "pattern; import from `models.teamNN_Name`")
        for alias in node.names:
            submodule = f"{node.module}.{alias.name}"
            is_module = local_module_file(self.checkout, submodule) is not None
            self.folder.env[alias.asname or alias.name] = (
                ModuleRef(submodule) if is_module else ClassRef(node.module, alias.name))

    def attribute(self, owner: ModuleRef, attr: str) -> ModuleRef | ClassRef:
        """``module.attr``: a submodule imported before, else a class of ``module``."""
        name = f"{owner.name}.{attr}"
        return ModuleRef(name) if name in self.imported_modules else ClassRef(owner.name, attr)

    def import_module(self, node: ast.Call) -> Any:
        if len(node.args) != 1 or node.keywords:
            return unrecognised(node)
        name = self.folder.value(node.args[0])
        if not (isinstance(name, LiteralValue) and isinstance(name.value, str)):
            return Opaque(f"is imported from a module name that is not a literal "
                          f"(line {node.lineno})")
        self.imported_modules.add(name.value)
        return ModuleRef(name.value)

    def getattr_(self, node: ast.Call) -> Any:
        if len(node.args) == 2:
            owner = self.folder.value(node.args[0])
            attribute = self.folder.value(node.args[1])
            if isinstance(owner, ModuleRef) and isinstance(attribute, LiteralValue) and isinstance(
                    attribute.value, str):
                return ClassRef(owner.name, attribute.value)
        return unrecognised(node)

    def construct(self, node: ast.Call, cls: ClassRef) -> ModelValue:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        literal = self.folder.literal
        try:
            for position, argument in enumerate(node.args, start=1):
                subject = f"constructor argument {position}"
                if isinstance(argument, ast.Starred):
                    subject = f"constructor arguments `*{source(argument.value)}`"
                    args.extend(literal(argument.value))
                else:
                    args.append(literal(argument))
            for keyword in node.keywords:
                if keyword.arg is None:
                    subject = f"constructor keyword arguments `**{source(keyword.value)}`"
                    kwargs.update(literal(keyword.value))
                else:
                    subject = f"constructor argument `{keyword.arg}`"
                    kwargs[keyword.arg] = literal(keyword.value)
        except NotLiteral as missing:
            raise Untranslatable(f"{subject} of `{cls.name}` (line {node.lineno}) "
                                 f"{missing.reason}") from None
        return ModelValue(next(self._uids), cls, tuple(args), tuple(kwargs.items()))

    def method(self, node: ast.Call, model: ModelValue) -> Any:
        """``model.<method>(…)`` other than ``load_state_dict``: one returning the model keeps it;
        any other is recorded as an ``after_load`` call, and its result is not the model."""
        method = node.func.attr
        if method in _MODEL_METHODS_RETURNING_SELF:
            return model
        self.record_call(node, model, method, each_module=False)
        return Opaque(f"is the result of `.{method}()` (line {node.lineno}), which need not be the "
                      "model: not a recognised pattern; call the method without assigning its result")

    def record_call(self, node: ast.Call, model: ModelValue, method: str, each_module: bool) -> None:
        """A call with literal arguments; a file of the checkout, as the first argument, is its path."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        try:
            for argument in node.args:
                if isinstance(argument, ast.Starred):
                    raise NotLiteral(f"is unpacked from `{source(argument.value)}`")
                args.append(self.folder.literal(argument))
            for keyword in node.keywords:
                if keyword.arg is None:
                    raise NotLiteral(f"is unpacked from `**{source(keyword.value)}`")
                kwargs[keyword.arg] = self.folder.literal(keyword.value)
        except NotLiteral as missing:
            raise Untranslatable(f"an argument of `.{method}()` (line {node.lineno}) "
                                 f"{missing.reason}") from None
        path = None
        positions = [index for index, value in enumerate(args) if self.is_file_argument(value)]
        if positions and positions != [0]:
            raise Untranslatable(f"`.{method}()` (line {node.lineno}) takes a file as argument "
                                 f"{positions[-1] + 1}; `after_load` passes a checked path only as the "
                                 "first argument")
        if positions:
            path = self.folder.checkpoints.checkpoint_path(str(args.pop(0)), node.lineno)
            if not (self.checkout / path).is_file():
                self.folder.notes.append(f"file {path} of `.{method}()` is not in the checkout yet")
        self.calls.setdefault(model.uid, []).append(MethodCall(
            node.lineno, method, path, tuple(args), tuple(kwargs.items()), each_module))

    def is_file_argument(self, value: Any) -> bool:
        """A string naming a weights-like file, or any file of the checkout."""
        if not isinstance(value, (str, PurePosixPath)) or not str(value):
            return False
        try:
            return (PurePosixPath(str(value)).suffix.lower() in _FILE_SUFFIXES
                    or (self.checkout / str(value)).is_file())
        except (OSError, ValueError):
            return False

    def for_loop(self, node: ast.For) -> None:
        """``for m in model.modules(): if hasattr(m, 'name'): m.name(…)`` → an ``each_module`` call;
        a loop over the parameters that only freezes them → nothing (the evaluator freezes them)."""
        iterated = node.iter
        if not node.orelse and isinstance(iterated, ast.Call) and isinstance(
                iterated.func, ast.Attribute) and not iterated.args and not iterated.keywords:
            owner = self.folder.value(iterated.func.value)
            kind = iterated.func.attr
            variable = _loop_variable(node.target, named=kind.startswith("named_"))
            if isinstance(owner, ModelValue) and variable is not None:
                call = _guarded_call(node.body, variable)
                if kind in ("modules", "named_modules") and call is not None:
                    self.record_call(call, owner, call.func.attr, each_module=True)
                    return
                if kind in ("parameters", "named_parameters") and _freezes(node.body, variable):
                    self.folder.notes.append(f"the loop at line {node.lineno} freezes the parameters, "
                                             "which the evaluator does itself")
                    return
        raise Untranslatable(f"`for` loop at line {node.lineno} inside the branch: not a recognised "
                             "pattern; import-ntire reads `for m in model.modules(): if hasattr(m, "
                             "'name'): m.name()` as `after_load: [{method: name, each_module: true}]`")


def _loop_variable(target: ast.expr, named: bool) -> str | None:
    """The loop's module/parameter name: ``m`` in ``for m in …`` or ``for _, m in …named_*()``."""
    if named:
        if isinstance(target, ast.Tuple) and len(target.elts) == 2 and isinstance(
                target.elts[1], ast.Name):
            return target.elts[1].id
        return None
    return target.id if isinstance(target, ast.Name) else None


def _guarded_call(body: list[ast.stmt], variable: str) -> ast.Call | None:
    """The call ``m.name(…)`` of a body that is exactly ``if hasattr(m, 'name'): m.name(…)``."""
    if not (len(body) == 1 and isinstance(body[0], ast.If) and not body[0].orelse
            and len(body[0].body) == 1 and isinstance(body[0].body[0], ast.Expr)):
        return None
    test, call = body[0].test, body[0].body[0].value
    if not (isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "hasattr"
            and len(test.args) == 2 and not test.keywords and isinstance(test.args[0], ast.Name)
            and test.args[0].id == variable and isinstance(test.args[1], ast.Constant)):
        return None
    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name) and call.func.value.id == variable
            and call.func.attr == test.args[1].value):
        return call
    return None


def _freezes(body: list[ast.stmt], variable: str) -> bool:
    """Every statement is ``p.requires_grad = False`` or ``p.requires_grad_(False)``."""
    def freezing(statement: ast.stmt) -> bool:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            return (isinstance(target, ast.Attribute) and target.attr == "requires_grad"
                    and isinstance(target.value, ast.Name) and target.value.id == variable
                    and isinstance(statement.value, ast.Constant) and statement.value.value is False)
        call = statement.value if isinstance(statement, ast.Expr) else None
        return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "requires_grad_" and isinstance(call.func.value, ast.Name)
                and call.func.value.id == variable and len(call.args) == 1 and not call.keywords
                and isinstance(call.args[0], ast.Constant) and call.args[0].value is False)
    return bool(body) and all(freezing(statement) for statement in body)
