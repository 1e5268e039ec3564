"""How a branch names and builds its model: imports of the team's file, then ``Cls(...)``.

Contract
--------
Recognised: ``from models.teamNN_X import Cls`` (also at the top of ``test_demo.py``, read by
``module_level_imports``), ``import models.teamNN_X [as m]``,
``importlib.import_module('models.teamNN_X')`` with ``getattr(module, 'Cls')``, and a call of the
class whose arguments all fold to literals (``*args`` / ``**kwargs`` included). Methods that
return the model itself (``.to``, ``.eval``, …) keep it; any other method makes it opaque. A module
counts as local when ``checkout/<dotted path>.py`` or ``…/__init__.py`` exists
(``local_module_file``); no file is read or imported.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esr_eval.importer.syntax import source
from esr_eval.importer.values import (
    ClassRef,
    LiteralValue,
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
        """``model.<method>(…)`` other than ``load_state_dict``."""
        method = node.func.attr
        if method in _MODEL_METHODS_RETURNING_SELF:
            return model
        changed = Opaque(f"is changed by `.{method}()` (line {node.lineno}): "
                         "not a recognised pattern")
        if isinstance(node.func.value, ast.Name):
            self.folder.env[node.func.value.id] = changed
        return changed
