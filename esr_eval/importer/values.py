"""The symbolic values a branch of ``select_model`` folds to, and how folding stops.

Contract
--------
Every expression of a branch folds to one of these frozen values, compared by value:
``LiteralValue`` (a Python value known without running anything), ``Opaque`` (unknown; its
``reason`` reads after a subject, as in "model <reason>"), ``ModuleRef`` / ``ClassRef`` (a module
or class of the checkout), ``ModelValue`` (an instance of a ``ClassRef`` built with literal
arguments; ``uid`` tells instances apart), ``CheckpointValue`` (``torch.load(path)`` followed by
key steps) or ``KeyChoice`` (a key name chosen as the first of some keys present in a checkpoint,
as ``keyname`` in ``if 'params_ema' in sd: keyname = 'params_ema' else: keyname = 'params'``).
``Load`` records one ``load_state_dict`` call, ``MethodCall`` one call of a model's method (an
``after_load`` entry). ``Untranslatable`` ends the translation of a branch with a reason for the
report (and, once known, the manifest lines to write by hand); ``NotLiteral`` is raised inside
folding when an operand is not a literal, and caught there.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Any

from esr_eval.importer.syntax import source


class Untranslatable(Exception):
    def __init__(self, reason: str, manifest_lines: tuple[str, ...] = ()):
        super().__init__(reason)
        self.reason = reason
        self.manifest_lines = manifest_lines


class NotLiteral(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LiteralValue:
    value: Any


@dataclass(frozen=True)
class Opaque:
    """A value the folder cannot know; ``reason`` reads after a subject ("model …")."""

    reason: str


def unrecognised(node: ast.expr) -> Opaque:
    """The value of an expression no recogniser knows."""
    return Opaque(f"is `{source(node)}` (line {node.lineno}): not a recognised pattern")


@dataclass(frozen=True)
class ModuleRef:
    name: str


@dataclass(frozen=True)
class ClassRef:
    module: str
    name: str


@dataclass(frozen=True)
class ModelValue:
    uid: int
    cls: ClassRef
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class CheckpointValue:
    """``torch.load(path)`` then subscripts; each step holds its alternatives in order."""

    path: str
    steps: tuple[tuple[str, ...], ...] = ()

    def then(self, *alternatives: str) -> CheckpointValue:
        return replace(self, steps=self.steps + (tuple(alternatives),))


@dataclass(frozen=True)
class KeyChoice:
    """A key name: the first of ``keys`` present in ``checkpoint``."""

    checkpoint: CheckpointValue
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Load:
    checkpoint: CheckpointValue
    strict: bool
    line: int


@dataclass(frozen=True)
class MethodCall:
    """``model.<method>(…)`` with literal arguments (``path``: a checkout file passed first), or with
    ``each_module`` the same call on every module of ``model.modules()`` that has the method."""

    line: int
    method: str
    path: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    each_module: bool = False
