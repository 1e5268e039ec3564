"""How a branch loads its checkpoint: ``torch.load``, key selection and ``load_state_dict``.

Contract
--------
Recognised: ``torch.load(path)`` with a literal path inside the checkout (normalised to POSIX,
relative to the checkout root); subscripts ``sd['a']['b']``; the "first key present" idiom
written as an ``if 'k' in sd: sd = sd['k'] elif …: … else: sd = sd['j']`` statement, as
``sd['k'] if 'k' in sd else sd['j']``, as ``sd.get('k', sd['j'])``, or through a key name
(``if 'k' in sd: keyname = 'k' else: keyname = 'j'``, ``keyname = 'k' if 'k' in sd else 'j'``,
or ``keyname = 'j'`` then ``if 'k' in sd: keyname = 'k'``) read as ``sd[keyname]``; and
``model.load_state_dict(state, strict=…)`` with ``strict`` a literal bool (default True, as in
torch). A fallback to the root state dict, several loads of one model, a method of the model
called before its load, or a key holding '.' or '|' make the branch untranslatable; a refused
key choice names the forms that are read. ``checkpoint_spec`` turns the recognised load into an
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
    KeyChoice,
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
        """The "first key present" idiom as a statement. Each arm tests ``'k' in sd`` and binds one
        name, to the state dict (``x = sd['k']``) or to the key's name (``keyname = 'k'``, later
        read as ``sd[keyname]``); the last alternative is the final ``else``, or, without one, what
        the name held before (``keyname = 'params'`` then ``if 'params_ema' in sd: …``)."""
        alternatives: list[str] = []
        arm: tuple[str, CheckpointValue, bool] | None = None
        current: ast.If | None = node
        while current is not None:
            tested = self.tested_key(current.test)
            if tested is None:  # not about a key: its body is never folded (folding may change names)
                raise Untranslatable(key_choice_reason(current.lineno, False))
            picked = self.assignment(current.body)
            if picked is None:
                raise Untranslatable(key_choice_reason(current.lineno, True))
            key, base = tested
            target, value = picked
            by_name = value == LiteralValue(key)
            if not (by_name or value == base.then(key)) or arm not in (None, (target, base, by_name)):
                raise Untranslatable(key_choice_reason(current.lineno, True))
            arm = (target, base, by_name)
            alternatives.append(key)
            orelse = current.orelse
            current = orelse[0] if len(orelse) == 1 and isinstance(orelse[0], ast.If) else None
        target, base, by_name = arm
        if orelse:
            picked = self.assignment(orelse)
            if picked is None or picked[0] != target:
                raise Untranslatable(f"`else` of the `if` at line {node.lineno} inside the branch: not a "
                                     "recognised pattern; " + KEY_IDIOMS)
            fallback = picked[1]
        else:
            fallback = self.folder.env.get(target)
        if by_name:
            choice = self.key_name_choice(node, base, alternatives, fallback)
            if isinstance(choice, Opaque):
                raise Untranslatable(f"the `if` at line {node.lineno} leaves `{target}` without a key "
                                     f"name when {' and '.join(map(repr, alternatives))} "
                                     f"{'is' if len(alternatives) == 1 else 'are'} absent: not "
                                     "a recognised pattern; " + KEY_IDIOMS)
            self.folder.env[target] = choice
            return
        if fallback is None:
            raise Untranslatable(root_fallback_reason(node.lineno, alternatives))
        choice = self.key_or_fallback(node, base, alternatives[0], fallback, alternatives[1:])
        if isinstance(choice, Opaque):
            raise Untranslatable(f"`else` of the `if` at line {node.lineno} inside the branch: not a "
                                 "recognised pattern; " + KEY_IDIOMS)
        self.folder.env[target] = choice

    def assignment(self, body: list[ast.stmt]) -> tuple[str, Any] | None:
        """(name, folded value) of a body that is one ``name = value``."""
        if not (len(body) == 1 and isinstance(body[0], ast.Assign)
                and len(body[0].targets) == 1 and isinstance(body[0].targets[0], ast.Name)):
            return None
        return body[0].targets[0].id, self.folder.value(body[0].value)

    def key_name_choice(self, node: ast.AST, base: CheckpointValue, keys: list[str],
                        fallback: Any) -> KeyChoice | Opaque:
        """The key name ``keys[0]`` if present in ``base``, … else ``fallback`` (a name or a choice)."""
        if isinstance(fallback, LiteralValue) and isinstance(fallback.value, str):
            return KeyChoice(base, (*keys, fallback.value))
        if isinstance(fallback, KeyChoice) and fallback.checkpoint == base:
            return KeyChoice(base, (*keys, *fallback.keys))
        return unrecognised(node)

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

    def if_expression(self, node: ast.IfExp, key: str, base: CheckpointValue) -> Any:
        """``sd['k'] if 'k' in sd else <fallback>`` or ``'k' if 'k' in sd else 'j'`` (a key name),
        the test already read by ``tested_key``."""
        body = self.folder.value(node.body)
        if body == LiteralValue(key):
            return self.key_name_choice(node, base, [key], self.folder.value(node.orelse))
        if body != base.then(key):
            return unrecognised(node)
        return self.key_or_fallback(node, base, key, self.folder.value(node.orelse))

    def key_or_fallback(self, node: ast.expr | ast.stmt, base: CheckpointValue, key: str,
                        fallback: Any, more: list[str] | None = None) -> Any:
        """``base[key]`` if present (then ``base[more…]``), else ``fallback``, which must be
        ``base[other key…]``."""
        keys = [key, *(more or [])]
        if fallback == base:
            raise Untranslatable(root_fallback_reason(node.lineno, keys))
        if not (isinstance(fallback, CheckpointValue) and fallback.path == base.path
                and fallback.steps[:-1] == base.steps
                and len(fallback.steps) == len(base.steps) + 1):
            return unrecognised(node)
        return base.then(*keys, *fallback.steps[-1])

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
        earlier = self.folder.models.calls.get(model.uid)
        if earlier:
            raise Untranslatable(f"`.{earlier[0].method}()` at line {earlier[0].line} is called before "
                                 f"load_state_dict (line {node.lineno}); a manifest's `after_load` calls "
                                 "run after the weights load, so that order cannot be kept")
        self.loads.setdefault(model.uid, []).append(Load(state, strict.value, node.lineno))
        return Opaque(f"is the result of load_state_dict (line {node.lineno})")


KEY_IDIOMS = ("import-ntire reads `if 'k' in sd: sd = sd['k'] else: sd = sd['j']`, "
              "`keyname = 'k' if 'k' in sd else 'j'` then `sd[keyname]`, and `sd.get('k', sd['j'])` as "
              "`checkpoint.key: k|j` (the first key present)")


def key_choice_reason(line: int, tests_a_key: bool) -> str:
    """Why an ``if`` is refused; one that tests a checkpoint key names the key forms read."""
    reason = f"`if` statement at line {line} inside the branch: not a recognised pattern"
    return f"{reason}; {KEY_IDIOMS}" if tests_a_key else reason


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
