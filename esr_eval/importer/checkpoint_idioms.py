"""How a branch loads its checkpoint: ``torch.load``, key selection and ``load_state_dict``.

Contract
--------
Recognised: ``torch.load(path)`` with a literal path inside the checkout (normalised to POSIX,
relative to the checkout root); subscripts ``sd['a']['b']``; the "first key present" idiom
written as an ``if 'k' in sd: sd = sd['k'] elif …: … else: sd = sd['j']`` statement, as
``sd['k'] if 'k' in sd else sd['j']`` or as ``sd.get('k', sd['j'])``; and
``model.load_state_dict(state, strict=…)`` with ``strict`` a literal bool (default True, as in
torch). A fallback to the root state dict, several loads of one model, or a key holding '.' or
'|' make the branch untranslatable. ``checkpoint_spec`` turns the recognised load into an
:class:`esr_eval.manifest.CheckpointSpec` (key syntax: None = root, ``a.b`` nested, ``x|y`` first
present); ``trusted_pickle`` is always false, so ``weights_only=False`` is noted, never copied.
"""

from __future__ import annotations

import ast
import posixpath
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from esr_eval.hashing import file_sha256
from esr_eval.importer.emit import validated
from esr_eval.importer.values import (
    CheckpointValue,
    LiteralValue,
    Load,
    ModelValue,
    Opaque,
    Untranslatable,
    unrecognised,
)
from esr_eval.manifest import CheckpointSpec

if TYPE_CHECKING:
    from esr_eval.importer.expressions import ExpressionFolder

TORCH_LOADS = frozenset({"torch.load"})


class CheckpointIdioms:
    """The checkpoint patterns of one branch; ``loads`` maps a model's uid to its loads."""

    def __init__(self, folder: ExpressionFolder, checkout: Path):
        self.folder = folder
        self.checkout = checkout
        self.loads: dict[int, list[Load]] = {}

    def torch_load(self, node: ast.Call) -> CheckpointValue:
        path_nodes = node.args[:1] or [k.value for k in node.keywords if k.arg == "f"]
        if not path_nodes:
            raise Untranslatable(f"`torch.load` at line {node.lineno} has no path argument")
        path = self.folder.value(path_nodes[0])
        if isinstance(path, Opaque):
            raise Untranslatable(f"checkpoint path {path.reason}")
        if not (isinstance(path, LiteralValue) and isinstance(path.value, (str, PurePosixPath))):
            raise Untranslatable(f"checkpoint path at line {node.lineno} is not a string")
        for keyword in node.keywords:
            if keyword.arg == "weights_only" and self.folder.value(
                    keyword.value) == LiteralValue(False):
                self.folder.notes.append(
                    f"test_demo.py loads the checkpoint with weights_only=False "
                    f"(line {node.lineno}); the manifest keeps safe loading")
        return CheckpointValue(self.checkpoint_path(str(path.value), node.lineno))

    def checkpoint_path(self, raw: str, line: int) -> str:
        """``raw`` as a normalised POSIX path relative to the checkout root."""
        path = PurePosixPath(raw)
        if path.is_absolute():
            try:
                path = PurePosixPath(Path(raw).resolve().relative_to(self.checkout.resolve()))
            except ValueError:
                raise Untranslatable(f"checkpoint path `{raw}` (line {line}) is absolute and "
                                     "outside the checkout") from None
        normal = posixpath.normpath(str(path))
        if normal == ".." or normal.startswith("../"):
            raise Untranslatable(f"checkpoint path `{raw}` (line {line}) leaves the checkout")
        return normal

    def key_choice_statement(self, node: ast.If) -> None:
        """``if 'params_ema' in sd: sd = sd['params_ema'] [elif …] else: sd = sd['params']``."""
        alternatives: list[str] = []
        target = base = None
        current: ast.If | None = node
        while current is not None:
            tested = self.tested_key(current.test)
            picked = self.picked_key(current.body)
            if tested is None or picked is None or picked[1:] != tested or (
                    target is not None and (picked[0], picked[2]) != (target, base)):
                raise Untranslatable(f"`if` statement at line {current.lineno} inside the "
                                     "branch: not a recognised pattern")
            target, key, base = picked
            alternatives.append(key)
            orelse = current.orelse
            current = orelse[0] if len(orelse) == 1 and isinstance(orelse[0], ast.If) else None
            if current is None:
                if not orelse:
                    raise Untranslatable(root_fallback_reason(node.lineno, alternatives))
                final = self.picked_key(orelse)
                if final is None or (final[0], final[2]) != (target, base):
                    raise Untranslatable(f"`else` of the `if` at line {node.lineno} inside the "
                                         "branch: not a recognised pattern")
                alternatives.append(final[1])
        self.folder.env[target] = base.then(*alternatives)

    def tested_key(self, test: ast.expr) -> tuple[str, CheckpointValue] | None:
        """``'k' in sd`` or ``'k' in sd.keys()`` with ``sd`` a loaded checkpoint."""
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1
                and isinstance(test.ops[0], ast.In) and isinstance(test.left, ast.Constant)
                and isinstance(test.left.value, str)):
            return None
        container = test.comparators[0]
        if (isinstance(container, ast.Call) and isinstance(container.func, ast.Attribute)
                and container.func.attr == "keys" and not container.args):
            container = container.func.value
        checkpoint = self.folder.value(container)
        return (test.left.value, checkpoint) if isinstance(checkpoint, CheckpointValue) else None

    def picked_key(self, body: list[ast.stmt]) -> tuple[str, str, CheckpointValue] | None:
        """(target, key, checkpoint) of a lone ``x = sd['k']``."""
        if not (len(body) == 1 and isinstance(body[0], ast.Assign)
                and len(body[0].targets) == 1 and isinstance(body[0].targets[0], ast.Name)):
            return None
        value = body[0].value
        if not (isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Constant)
                and isinstance(value.slice.value, str)):
            return None
        checkpoint = self.folder.value(value.value)
        if not isinstance(checkpoint, CheckpointValue):
            return None
        return body[0].targets[0].id, value.slice.value, checkpoint

    def if_expression(self, node: ast.IfExp, key: str, base: CheckpointValue) -> Any:
        """``sd['k'] if 'k' in sd else <fallback>``, the test already read by ``tested_key``."""
        if self.folder.value(node.body) != base.then(key):
            return unrecognised(node)
        return self.key_or_fallback(node, base, key, self.folder.value(node.orelse))

    def key_or_fallback(self, node: ast.expr, base: CheckpointValue, key: str,
                        fallback: Any) -> Any:
        """``base[key]`` if present, else ``fallback``, which must be ``base[other key…]``."""
        if fallback == base:
            raise Untranslatable(root_fallback_reason(node.lineno, [key]))
        if not (isinstance(fallback, CheckpointValue) and fallback.path == base.path
                and fallback.steps[:-1] == base.steps
                and len(fallback.steps) == len(base.steps) + 1):
            return unrecognised(node)
        return base.then(key, *fallback.steps[-1])

    def method(self, node: ast.Call, checkpoint: CheckpointValue) -> Any:
        """``sd.get('params_ema', sd['params'])``; other methods are not recognised."""
        if node.func.attr == "get" and 1 <= len(node.args) <= 2 and not node.keywords:
            key = self.folder.value(node.args[0])
            if isinstance(key, LiteralValue) and isinstance(key.value, str):
                if len(node.args) == 1:
                    return checkpoint.then(key.value)
                return self.key_or_fallback(node, checkpoint, key.value,
                                            self.folder.value(node.args[1]))
        return unrecognised(node)

    def load_state_dict(self, node: ast.Call, model: ModelValue) -> Opaque:
        """Records ``model.load_state_dict(state, strict)``; returns its (unused) result."""
        state_nodes = node.args[:1] or [k.value for k in node.keywords if k.arg == "state_dict"]
        if not state_nodes:
            raise Untranslatable(f"load_state_dict at line {node.lineno} has no state dict")
        state = self.folder.value(state_nodes[0])
        if isinstance(state, Opaque):
            raise Untranslatable(f"state dict given to load_state_dict (line {node.lineno}) "
                                 f"{state.reason}")
        if not isinstance(state, CheckpointValue):
            raise Untranslatable(f"state dict given to load_state_dict (line {node.lineno}) "
                                 "is not read by `torch.load`")
        strict_nodes = node.args[1:2] or [k.value for k in node.keywords if k.arg == "strict"]
        strict = self.folder.value(strict_nodes[0]) if strict_nodes else LiteralValue(True)
        if not (isinstance(strict, LiteralValue) and isinstance(strict.value, bool)):
            raise Untranslatable(f"`strict` of load_state_dict (line {node.lineno}) is not "
                                 "True or False")
        self.loads.setdefault(model.uid, []).append(Load(state, strict.value, node.lineno))
        return Opaque(f"is the result of load_state_dict (line {node.lineno})")


def root_fallback_reason(line: int, keys: list[str]) -> str:
    chosen = " or ".join(repr(k) for k in keys)
    return (f"line {line} uses checkpoint key {chosen} when present and otherwise the root state "
            "dict; a manifest key cannot express that fallback")


def manifest_key(checkpoint: CheckpointValue) -> str | None:
    """Manifest key syntax: None (root), "a", "a.b" (nested) or "x|y" (x if present else y)."""
    keys = [k for step in checkpoint.steps for k in step]
    if any("." in k or "|" in k for k in keys):
        raise Untranslatable(f"checkpoint key {keys} contains '.' or '|', which the manifest "
                             "key syntax reserves")
    if not checkpoint.steps:
        return None
    if len(checkpoint.steps) == 1:
        return "|".join(checkpoint.steps[0])
    if all(len(step) == 1 for step in checkpoint.steps):
        return ".".join(step[0] for step in checkpoint.steps)
    raise Untranslatable(f"checkpoint key path {list(checkpoint.steps)} mixes nesting and "
                         "alternatives, which a manifest key cannot express")


def checkpoint_spec(loads: list[Load], checkout: Path, checksum: bool,
                    notes: list[str]) -> CheckpointSpec | None:
    """The manifest checkpoint of a model's loads (None, with a note, when it has none)."""
    if not loads:
        notes.append("no load_state_dict call: the manifest has no checkpoint")
        return None
    if len(loads) > 1:
        raise Untranslatable("load_state_dict is called on the model at lines "
                             f"{', '.join(str(load.line) for load in loads)}; only one is "
                             "recognised")
    load = loads[0]
    fields: dict[str, Any] = {"path": load.checkpoint.path, "key": manifest_key(load.checkpoint)}
    path = checkout / load.checkpoint.path
    if not path.is_file():
        notes.append(f"checkpoint {load.checkpoint.path} is not in the checkout yet")
    elif checksum:
        fields["sha256"] = file_sha256(path)
    fields.update(strict=load.strict, trusted_pickle=False)
    return validated(CheckpointSpec, fields, checkout, "checkpoint.")
