"""Translate an NTIRE-style ``test_demo.py`` into submission manifests, without running it.

Contract
--------
``import_ntire(checkout, out_dir)`` reads ``checkout/test_demo.py`` with :mod:`ast` only; neither
that file nor any model file is imported or executed. It finds ``def select_model(args, device)``
and its ``if model_id == N: … elif …`` chain, and folds each branch statically:

* the model class (``from models.teamNN_X import Cls``, ``import models.teamNN_X``, or
  ``importlib.import_module('models.teamNN_X')`` + ``getattr``) and its constructor arguments,
  which must fold to literals: constants, containers, f-strings, arithmetic on constants,
  ``os.path.join``, ``dict(...)``, and names bound to such values in the branch;
* ``torch.load(path)`` + ``model.load_state_dict(state, strict=...)``: the checkpoint key comes
  from subscripts (``state['params']``) and the "``params_ema`` if present, else ``params``" idiom
  (``if`` statement, conditional expression or ``.get``); ``strict`` defaults to ``True`` as in
  torch;
* ``name`` and ``data_range`` (1.0 or 255.0);
* a reflect-pad forward wrapper outside ``select_model``: an ``if args.model_id == N:`` block that
  calls ``F.pad(..., 'reflect')`` directly or through a module-level helper; its ``% multiple``
  becomes ``adapter.pad_to_multiple``.

Each translated branch becomes ``out_dir/teamNN_Name.yaml`` (file stem = submission id) in the
manifest format that ``esr_eval.manifest`` reads, with paths relative to the checkout root (the
submissions root). A branch that cannot be folded is reported with its line number and reason,
never guessed. Units: ``data_range`` is the pixel value of white (1.0 or 255.0), ``scale`` is
always 4, ``pad_to_multiple`` is in LR pixels.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import operator
import posixpath
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import yaml

SCALE = 4
DATA_RANGES = (1.0, 255.0)
TEST_DEMO_FILE = "test_demo.py"
SELECT_MODEL_FUNCTION = "select_model"

_MODEL_METHODS_RETURNING_SELF = frozenset({"to", "cuda", "cpu", "eval", "float", "requires_grad_"})
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
_TORCH_LOADS = frozenset({"torch.load"})
_IMPORT_MODULE = frozenset({"importlib.import_module", "import_module"})
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
_YAML_SCALARS = (str, int, float, bool, type(None))
_UNPARSE_MAX_CHARS = 60


class NtireImportError(ValueError):
    """The file cannot be read as an NTIRE-style ``select_model`` chain at all."""


@dataclass(frozen=True)
class CheckpointSpec:
    """Checkpoint of a translated branch; ``path`` is POSIX, relative to the checkout root."""

    path: str
    key: str | None
    strict: bool
    sha256: str | None = None


@dataclass(frozen=True)
class TranslatedBranch:
    """One ``model_id`` branch folded into the fields of a submission manifest."""

    model_id: int
    line: int
    submission_id: str
    name: str
    model_file: str
    class_name: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    checkpoint: CheckpointSpec | None
    data_range: float
    pad_to_multiple: int | None
    notes: tuple[str, ...]

    @property
    def team_id(self) -> str:
        return f"{self.model_id:02d}"

    def manifest(self, source: str) -> dict[str, Any]:
        """The manifest mapping; ``source`` names the file the branch came from."""
        model = {"file": self.model_file, "class": self.class_name,
                 "args": list(self.args), "kwargs": dict(self.kwargs)}
        manifest: dict[str, Any] = {"team_id": self.team_id, "name": self.name, "model": model}
        if self.checkpoint is not None:
            checkpoint: dict[str, Any] = {"path": self.checkpoint.path,
                                          "key": self.checkpoint.key}
            if self.checkpoint.sha256 is not None:
                checkpoint["sha256"] = self.checkpoint.sha256
            checkpoint["strict"] = self.checkpoint.strict
            checkpoint["trusted_pickle"] = False
            manifest["checkpoint"] = checkpoint
        manifest["data_range"] = self.data_range
        manifest["scale"] = SCALE
        if self.pad_to_multiple is not None:
            manifest["adapter"] = {"pad_to_multiple": self.pad_to_multiple}
        manifest["requirements"] = []
        origin = f"{source}, model_id {self.model_id} (line {self.line})"
        manifest["weights"] = (
            f"checkpoint as loaded by {origin}; imported by esr-eval import-ntire"
            if self.checkpoint is not None
            else f"no checkpoint is loaded by {origin}; imported by esr-eval import-ntire")
        return manifest


@dataclass(frozen=True)
class UntranslatedBranch:
    """A branch left out, with the line of its ``if``/``elif`` and the reason."""

    line: int
    model_ids: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class ImportReport:
    """What ``import_ntire`` translated, wrote and left out."""

    test_demo: Path
    out_dir: Path
    translated: tuple[TranslatedBranch, ...]
    untranslated: tuple[UntranslatedBranch, ...]
    written: tuple[Path, ...]

    def summary_text(self) -> str:
        total = len(self.translated) + len(self.untranslated)
        lines = [f"Translated {len(self.translated)} of {total} branches of {self.test_demo} "
                 f"into {self.out_dir}:"]
        for branch, path in zip(self.translated, self.written):
            lines.append(f"  {path.name}  model_id {branch.model_id} (line {branch.line})")
            lines.extend(f"      note: {note}" for note in branch.notes)
        if self.untranslated:
            lines.append(f"Not translated ({len(self.untranslated)}); "
                         "write these manifests by hand:")
            for branch in self.untranslated:
                ids = ", ".join(str(i) for i in branch.model_ids) or "none"
                lines.append(f"  line {branch.line} (model_id {ids}): {branch.reason}")
        return "\n".join(lines)


def import_ntire(checkout: Path, out_dir: Path, *, checksum: bool = False,
                 test_demo: str = TEST_DEMO_FILE) -> ImportReport:
    """Write one manifest per translatable branch of ``checkout/test_demo`` into ``out_dir``."""
    checkout = Path(checkout)
    out_dir = Path(out_dir)
    translated, untranslated = translate_test_demo(checkout, checksum=checksum, test_demo=test_demo)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for branch in translated:
        path = out_dir / f"{branch.submission_id}.yaml"
        header = (f"# generated by esr-eval import-ntire from {test_demo} line {branch.line} "
                  f"(model_id {branch.model_id}); review before use\n")
        body = yaml.dump(branch.manifest(test_demo), Dumper=_ManifestDumper, sort_keys=False,
                         allow_unicode=True, width=100)
        path.write_text(header + body, encoding="utf-8")
        written.append(path)
    return ImportReport(checkout / test_demo, out_dir, translated, untranslated, tuple(written))


def translate_test_demo(checkout: Path, *, checksum: bool = False,
                        test_demo: str = TEST_DEMO_FILE,
                        ) -> tuple[tuple[TranslatedBranch, ...], tuple[UntranslatedBranch, ...]]:
    """Fold every branch of the ``select_model`` chain; writes nothing."""
    checkout = Path(checkout)
    path = checkout / test_demo
    if not path.is_file():
        raise NtireImportError(f"{path}: not found; pass the root of the NTIRE repository "
                               f"(the folder holding {test_demo}, models/ and model_zoo/)")
    try:
        module = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise NtireImportError(f"{path}:{error.lineno}: not valid Python ({error.msg}); "
                               "fix the file so that `python -m py_compile` accepts it") from error
    select_model = _find_select_model(module, path)
    prelude, branches, untranslated = _split_chain(select_model, path)
    wrappers = _model_specific_blocks(module, select_model)
    base_env = _module_level_imports(module, checkout)
    runtime_names = frozenset(a.arg for a in select_model.args.args) - {"model_id"}
    translated = []
    seen: dict[int, int] = {}
    for ids, branch in branches:
        for model_id in ids:
            if model_id in seen:
                untranslated.append(UntranslatedBranch(branch.lineno, (model_id,), (
                    f"model_id {model_id} is already handled by the branch at line "
                    f"{seen[model_id]}, so this branch never runs")))
                continue
            seen[model_id] = branch.lineno
            try:
                translated.append(_translate_branch(
                    model_id, branch, prelude, base_env, runtime_names, checkout,
                    wrappers.get(model_id, ()), checksum))
            except _Untranslatable as error:
                untranslated.append(UntranslatedBranch(branch.lineno, (model_id,), error.reason))
    untranslated.sort(key=lambda b: b.line)
    return tuple(translated), tuple(untranslated)


class _ManifestDumper(yaml.SafeDumper):
    """Quotes digit-only strings, so team_id "08" never reads back as a number."""


_ManifestDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="'" if text.isdigit() else None))


class _Untranslatable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Opaque:
    """A value the folder cannot know; ``reason`` reads after a subject ("model …")."""

    reason: str


@dataclass(frozen=True)
class _ModuleRef:
    name: str


@dataclass(frozen=True)
class _ClassRef:
    module: str
    name: str


@dataclass(frozen=True)
class _ModelValue:
    uid: int
    cls: _ClassRef
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class _CheckpointValue:
    """``torch.load(path)`` then subscripts; each step holds its alternatives in order."""

    path: str
    steps: tuple[tuple[str, ...], ...] = ()

    def then(self, *alternatives: str) -> _CheckpointValue:
        return replace(self, steps=self.steps + (tuple(alternatives),))


@dataclass(frozen=True)
class _Load:
    checkpoint: _CheckpointValue
    strict: bool
    line: int


@dataclass(frozen=True)
class _PadWrapper:
    """An ``if model_id == N`` block outside select_model; ``multiple`` None when not a pad."""

    line: int
    multiple: int | None
    problem: str | None


def _find_select_model(module: ast.Module, path: Path) -> ast.FunctionDef:
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == SELECT_MODEL_FUNCTION:
            return node
    raise NtireImportError(f"{path}: no top-level `def {SELECT_MODEL_FUNCTION}(args, device)`; "
                           "import-ntire reads only NTIRE-style test_demo.py files")


def _split_chain(select_model: ast.FunctionDef, path: Path):
    """(prelude statements, [(model ids, branch If)], untranslated) of the if-chain."""
    for index, statement in enumerate(select_model.body):
        if isinstance(statement, ast.If) and _model_id_test(statement.test):
            break
    else:
        raise NtireImportError(f"{path}:{select_model.lineno}: `{SELECT_MODEL_FUNCTION}` has no "
                               "`if model_id == N:` chain")
    branches: list[tuple[tuple[int, ...], ast.If]] = []
    untranslated: list[UntranslatedBranch] = []
    node: ast.stmt | None = statement
    while isinstance(node, ast.If):
        ids = _model_id_test(node.test)
        if ids:
            branches.append((ids, node))
        else:
            untranslated.append(UntranslatedBranch(node.lineno, (), (
                f"branch condition `{_source(node.test)}` is not `model_id == N`")))
        orelse = node.orelse
        node = orelse[0] if len(orelse) == 1 and isinstance(orelse[0], ast.If) else None
        if node is None and orelse and not all(isinstance(s, ast.Raise) for s in orelse):
            untranslated.append(UntranslatedBranch(orelse[0].lineno, (), (
                "the final `else` branch has no model_id, so it is not translated")))
    return select_model.body[:index], branches, untranslated


def _is_model_id_ref(node: ast.AST) -> bool:
    return ((isinstance(node, ast.Name) and node.id == "model_id")
            or (isinstance(node, ast.Attribute) and node.attr == "model_id"))


def _int_constant(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _model_id_test(test: ast.AST) -> tuple[int, ...]:
    """Ids tested by ``model_id == N`` / ``N == model_id`` / ``model_id in (N, M)``; else ()."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return ()
    left, right, op = test.left, test.comparators[0], test.ops[0]
    if isinstance(op, ast.Eq):
        for ref, value in ((left, right), (right, left)):
            if _is_model_id_ref(ref) and _int_constant(value) is not None:
                return (_int_constant(value),)
    if isinstance(op, ast.In) and _is_model_id_ref(left) and isinstance(
            right, (ast.Tuple, ast.List, ast.Set)):
        ids = tuple(_int_constant(e) for e in right.elts)
        if ids and None not in ids:
            return ids
    return ()


def _source(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= _UNPARSE_MAX_CHARS else text[:_UNPARSE_MAX_CHARS - 1] + "…"


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _local_module_file(checkout: Path, module: str) -> str | None:
    """POSIX path of ``module`` inside the checkout, or None when it is not a local file."""
    relative = module.replace(".", "/")
    for candidate in (f"{relative}.py", f"{relative}/__init__.py"):
        if (checkout / candidate).is_file():
            return candidate
    return None


def _module_level_imports(module: ast.Module, checkout: Path) -> dict[str, Any]:
    """Classes imported at the top of test_demo.py from ``models.*`` or files of the checkout."""
    env: dict[str, Any] = {}
    for node in module.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "models" or _local_module_file(
                    checkout, node.module) is not None:
                for alias in node.names:
                    env[alias.asname or alias.name] = _ClassRef(node.module, alias.name)
    return env


class _BranchFolder:
    """Folds the statements of one branch into symbolic values, in order."""

    _uids = itertools.count()

    def __init__(self, model_id: int, env: Mapping[str, Any], runtime_names: frozenset[str],
                 checkout: Path):
        self.model_id = model_id
        self.env: dict[str, Any] = dict(env)
        self.runtime_names = runtime_names
        self.checkout = checkout
        self.imported_modules: set[str] = set()
        self.loads: dict[int, list[_Load]] = {}
        self.notes: list[str] = []

    def run_prelude(self, statements: list[ast.stmt]) -> None:
        """Statements before the chain; a failing one leaves its names unknown, not fatal."""
        for statement in statements:
            try:
                self.statement(statement)
            except _Untranslatable as error:
                for node in ast.walk(statement):
                    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                        self.env[node.id] = _Opaque(f"is set by line {statement.lineno} of "
                                                    f"select_model, which {error.reason}")

    def run(self, statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, ast.Return):
                return
            self.statement(statement)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, (ast.Pass, ast.Global, ast.Nonlocal, ast.Assert)):
            return
        if isinstance(node, ast.Expr):
            if not isinstance(node.value, ast.Constant):
                self.value(node.value)
        elif isinstance(node, ast.Import):
            self.import_(node)
        elif isinstance(node, ast.ImportFrom):
            self.import_from(node)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                self.assign(target, node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self.assign(node.target, node.value)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            load = ast.Name(node.target.id, ast.Load(), lineno=node.lineno)
            self.bind(node.target, self.value(ast.BinOp(load, node.op, node.value,
                                                        lineno=node.lineno)))
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                self.refuse_mutation(target)
                if isinstance(target, ast.Name):
                    self.env.pop(target.id, None)
        elif isinstance(node, ast.If):
            self.key_choice_statement(node)
        else:
            raise _Untranslatable(f"`{type(node).__name__.lower()}` statement at line "
                                  f"{node.lineno} inside the branch: not a recognised pattern")

    def import_(self, node: ast.Import) -> None:
        for alias in node.names:
            if _local_module_file(self.checkout, alias.name) is None:
                continue
            self.imported_modules.add(alias.name)
            if alias.asname:
                self.env[alias.asname] = _ModuleRef(alias.name)
            else:
                root = alias.name.split(".")[0]
                self.env[root] = _ModuleRef(root)

    def import_from(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            raise _Untranslatable(f"relative import at line {node.lineno}: not a recognised "
                                  "pattern; import from `models.teamNN_Name`")
        for alias in node.names:
            submodule = f"{node.module}.{alias.name}"
            is_module = _local_module_file(self.checkout, submodule) is not None
            self.env[alias.asname or alias.name] = (
                _ModuleRef(submodule) if is_module else _ClassRef(node.module, alias.name))

    def assign(self, target: ast.expr, value_node: ast.expr) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value_node, (ast.Tuple, ast.List)) and len(value_node.elts) == len(
                    target.elts) and not any(isinstance(e, ast.Starred) for e in value_node.elts):
                values = [self.value(e) for e in value_node.elts]
                for element, value in zip(target.elts, values):
                    self.bind(element, value)
                return
            value = self.value(value_node)
            if isinstance(value, _Literal) and isinstance(value.value, (tuple, list)) and len(
                    value.value) == len(target.elts):
                for element, item in zip(target.elts, value.value):
                    self.bind(element, _Literal(item))
                return
            for element in target.elts:
                self.bind(element, _Opaque(f"is unpacked from `{_source(value_node)}` "
                                           f"(line {value_node.lineno})"))
            return
        self.bind(target, self.value(value_node))

    def bind(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.bind(element, _Opaque(f"is unpacked at line {target.lineno}"))
        else:
            self.refuse_mutation(target)

    def refuse_mutation(self, target: ast.expr) -> None:
        root = target
        while isinstance(root, (ast.Attribute, ast.Subscript)):
            root = root.value
        if isinstance(root, ast.Name) and isinstance(
                self.env.get(root.id), (_ModelValue, _CheckpointValue)):
            raise _Untranslatable(f"`{_source(target)}` is modified at line {target.lineno}: "
                                  "not a recognised pattern")

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
                raise _Untranslatable(f"`if` statement at line {current.lineno} inside the "
                                      "branch: not a recognised pattern")
            target, key, base = picked
            alternatives.append(key)
            orelse = current.orelse
            current = orelse[0] if len(orelse) == 1 and isinstance(orelse[0], ast.If) else None
            if current is None:
                if not orelse:
                    raise _Untranslatable(_root_fallback_reason(node.lineno, alternatives))
                final = self.picked_key(orelse)
                if final is None or (final[0], final[2]) != (target, base):
                    raise _Untranslatable(f"`else` of the `if` at line {node.lineno} inside the "
                                          "branch: not a recognised pattern")
                alternatives.append(final[1])
        self.env[target] = base.then(*alternatives)

    def tested_key(self, test: ast.expr) -> tuple[str, _CheckpointValue] | None:
        """``'k' in sd`` or ``'k' in sd.keys()`` with ``sd`` a loaded checkpoint."""
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1
                and isinstance(test.ops[0], ast.In) and isinstance(test.left, ast.Constant)
                and isinstance(test.left.value, str)):
            return None
        container = test.comparators[0]
        if (isinstance(container, ast.Call) and isinstance(container.func, ast.Attribute)
                and container.func.attr == "keys" and not container.args):
            container = container.func.value
        checkpoint = self.value(container)
        return (test.left.value, checkpoint) if isinstance(checkpoint, _CheckpointValue) else None

    def picked_key(self, body: list[ast.stmt]) -> tuple[str, str, _CheckpointValue] | None:
        """(target, key, checkpoint) of a lone ``x = sd['k']``."""
        if not (len(body) == 1 and isinstance(body[0], ast.Assign)
                and len(body[0].targets) == 1 and isinstance(body[0].targets[0], ast.Name)):
            return None
        value = body[0].value
        if not (isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Constant)
                and isinstance(value.slice.value, str)):
            return None
        checkpoint = self.value(value.value)
        if not isinstance(checkpoint, _CheckpointValue):
            return None
        return body[0].targets[0].id, value.slice.value, checkpoint

    def value(self, node: ast.expr) -> Any:
        if _is_model_id_ref(node):
            return _Literal(self.model_id)
        if isinstance(node, ast.Constant):
            return _Literal(node.value)
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
        return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")

    def name(self, node: ast.Name) -> Any:
        if node.id in self.env:
            return self.env[node.id]
        if node.id in self.runtime_names:
            return _Opaque(f"is computed at run time from `{node.id}` (line {node.lineno})")
        return _Opaque(f"refers to `{node.id}`, which is not bound to a literal in this branch "
                       f"(line {node.lineno})")

    def attribute(self, node: ast.Attribute) -> Any:
        dotted = _dotted(node)
        if dotted is not None and dotted.split(".")[0] in self.runtime_names \
                and dotted.split(".")[0] not in self.env:
            return _Opaque(f"is computed at run time from `{dotted}` (line {node.lineno})")
        owner = self.value(node.value)
        if isinstance(owner, _ModuleRef):
            name = f"{owner.name}.{node.attr}"
            return _ModuleRef(name) if name in self.imported_modules else _ClassRef(
                owner.name, node.attr)
        if isinstance(owner, _Opaque):
            return owner
        return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")

    def literal(self, node: ast.expr) -> Any:
        """The folded Python value of ``node``; raises ``_NotLiteral`` with the reason if none."""
        value = self.value(node)
        if not isinstance(value, _Literal):
            raise _NotLiteral(value.reason if isinstance(value, _Opaque) else (
                f"is `{_source(node)}` (line {node.lineno}), not a literal"))
        return value.value

    def sequence(self, node: ast.List | ast.Tuple | ast.Set) -> Any:
        try:
            items: list[Any] = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    items.extend(self.literal(element.value))
                else:
                    items.append(self.literal(element))
        except _NotLiteral as missing:
            return _Opaque(missing.reason)
        kind = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
        return _Literal(kind(items))

    def dictionary(self, node: ast.Dict) -> Any:
        try:
            result: dict[Any, Any] = {}
            for key, value in zip(node.keys, node.values):
                if key is None:
                    result.update(self.literal(value))
                else:
                    result[self.literal(key)] = self.literal(value)
        except _NotLiteral as missing:
            return _Opaque(missing.reason)
        return _Literal(result)

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
        except _NotLiteral as missing:
            return _Opaque(missing.reason)
        return _Literal("".join(parts))

    def fold(self, node: ast.expr, function, *operands: ast.expr) -> Any:
        try:
            values = [self.literal(operand) for operand in operands]
            return _Literal(function(*values))
        except _NotLiteral as missing:
            return _Opaque(missing.reason)
        except (TypeError, ValueError, ArithmeticError) as error:
            return _Opaque(f"is `{_source(node)}` (line {node.lineno}), which fails: {error}")

    def subscript(self, node: ast.Subscript) -> Any:
        owner = self.value(node.value)
        index = self.value(node.slice)
        if isinstance(owner, _CheckpointValue) and isinstance(index, _Literal) and isinstance(
                index.value, str):
            return owner.then(index.value)
        if isinstance(owner, _Literal) and isinstance(index, _Literal):
            return self.fold(node, operator.getitem, node.value, node.slice)
        if isinstance(owner, _Opaque):
            return owner
        return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")

    def if_expression(self, node: ast.IfExp) -> Any:
        """``sd['params_ema'] if 'params_ema' in sd else sd['params']`` (nestable)."""
        tested = self.tested_key(node.test)
        if tested is None:
            condition = self.value(node.test)
            if isinstance(condition, _Literal):
                return self.value(node.body if condition.value else node.orelse)
            return _Opaque(f"is chosen by `{_source(node.test)}` (line {node.lineno}): "
                           "not a recognised pattern")
        key, base = tested
        if self.value(node.body) != base.then(key):
            return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")
        return self.key_or_fallback(node, base, key, self.value(node.orelse))

    def key_or_fallback(self, node: ast.expr, base: _CheckpointValue, key: str,
                        fallback: Any) -> Any:
        """``base[key]`` if present, else ``fallback``, which must be ``base[other key…]``."""
        if fallback == base:
            raise _Untranslatable(_root_fallback_reason(node.lineno, [key]))
        if not (isinstance(fallback, _CheckpointValue) and fallback.path == base.path
                and fallback.steps[:-1] == base.steps
                and len(fallback.steps) == len(base.steps) + 1):
            return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")
        return base.then(key, *fallback.steps[-1])

    def call(self, node: ast.Call) -> Any:
        dotted = _dotted(node.func)
        unbound = dotted is not None and dotted.split(".")[0] not in self.env
        if unbound and dotted in _TORCH_LOADS:
            return self.torch_load(node)
        if unbound and dotted in _IMPORT_MODULE:
            return self.import_module(node)
        if unbound and dotted == "getattr":
            return self.getattr_(node)
        if unbound and dotted in _PURE_CALLS:
            return self.pure_call(node, _PURE_CALLS[dotted])
        if isinstance(node.func, ast.Attribute):
            owner = self.value(node.func.value)
            if isinstance(owner, _ModelValue):
                return self.model_method(node, owner)
            if isinstance(owner, _CheckpointValue):
                return self.checkpoint_method(node, owner)
            if isinstance(owner, _Literal) and isinstance(owner.value, str) \
                    and node.func.attr in _LITERAL_STR_METHODS:
                return self.pure_call(node, getattr(owner.value, node.func.attr))
        callee = self.value(node.func)
        if isinstance(callee, _ClassRef):
            return self.construct(node, callee)
        if isinstance(callee, _Opaque) and unbound:
            harmless = dotted in _HARMLESS_CALLS or dotted.split(".")[-1] in _LOGGER_METHODS
            if not harmless:
                self.poison_arguments(node, dotted)
            return _Opaque(f"is built by a helper function `{dotted}()` (line {node.lineno}): "
                           "not a recognised pattern")
        if isinstance(callee, _Opaque):
            return callee
        return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")

    def poison_arguments(self, node: ast.Call, function: str) -> None:
        """Models and checkpoints handed to an unknown function may be changed by it."""
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(argument, ast.Name) and isinstance(
                    self.env.get(argument.id), (_ModelValue, _CheckpointValue)):
                self.env[argument.id] = _Opaque(
                    f"is passed to `{function}()` at line {node.lineno}, which may change it: "
                    "not a recognised pattern")

    def pure_call(self, node: ast.Call, function) -> Any:
        try:
            args = [self.literal(a) for a in node.args]
            kwargs = {k.arg: self.literal(k.value) for k in node.keywords if k.arg is not None}
            if any(k.arg is None for k in node.keywords) or any(
                    isinstance(a, ast.Starred) for a in node.args):
                return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised "
                               "pattern")
            return _Literal(function(*args, **kwargs))
        except _NotLiteral as missing:
            return _Opaque(missing.reason)
        except (TypeError, ValueError, KeyError, IndexError) as error:
            return _Opaque(f"is `{_source(node)}` (line {node.lineno}), which fails: {error}")

    def torch_load(self, node: ast.Call) -> _CheckpointValue:
        path_nodes = node.args[:1] or [k.value for k in node.keywords if k.arg == "f"]
        if not path_nodes:
            raise _Untranslatable(f"`torch.load` at line {node.lineno} has no path argument")
        path = self.value(path_nodes[0])
        if isinstance(path, _Opaque):
            raise _Untranslatable(f"checkpoint path {path.reason}")
        if not (isinstance(path, _Literal) and isinstance(path.value, (str, PurePosixPath))):
            raise _Untranslatable(f"checkpoint path at line {node.lineno} is not a string")
        for keyword in node.keywords:
            if keyword.arg == "weights_only" and self.value(keyword.value) == _Literal(False):
                self.notes.append(f"test_demo.py loads the checkpoint with weights_only=False "
                                  f"(line {node.lineno}); the manifest keeps safe loading")
        return _CheckpointValue(self.checkpoint_path(str(path.value), node.lineno))

    def checkpoint_path(self, raw: str, line: int) -> str:
        """``raw`` as a normalised POSIX path relative to the checkout root."""
        path = PurePosixPath(raw)
        if path.is_absolute():
            try:
                path = PurePosixPath(Path(raw).resolve().relative_to(self.checkout.resolve()))
            except ValueError:
                raise _Untranslatable(f"checkpoint path `{raw}` (line {line}) is absolute and "
                                      "outside the checkout") from None
        normal = posixpath.normpath(str(path))
        if normal == ".." or normal.startswith("../"):
            raise _Untranslatable(f"checkpoint path `{raw}` (line {line}) leaves the checkout")
        return normal

    def import_module(self, node: ast.Call) -> Any:
        if len(node.args) != 1 or node.keywords:
            return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")
        name = self.value(node.args[0])
        if not (isinstance(name, _Literal) and isinstance(name.value, str)):
            return _Opaque(f"is imported from a module name that is not a literal "
                           f"(line {node.lineno})")
        self.imported_modules.add(name.value)
        return _ModuleRef(name.value)

    def getattr_(self, node: ast.Call) -> Any:
        if len(node.args) == 2:
            owner, attribute = self.value(node.args[0]), self.value(node.args[1])
            if isinstance(owner, _ModuleRef) and isinstance(attribute, _Literal) and isinstance(
                    attribute.value, str):
                return _ClassRef(owner.name, attribute.value)
        return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")

    def construct(self, node: ast.Call, cls: _ClassRef) -> _ModelValue:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        try:
            for position, argument in enumerate(node.args, start=1):
                subject = f"constructor argument {position}"
                if isinstance(argument, ast.Starred):
                    subject = f"constructor arguments `*{_source(argument.value)}`"
                    args.extend(self.literal(argument.value))
                else:
                    args.append(self.literal(argument))
            for keyword in node.keywords:
                if keyword.arg is None:
                    subject = f"constructor keyword arguments `**{_source(keyword.value)}`"
                    kwargs.update(self.literal(keyword.value))
                else:
                    subject = f"constructor argument `{keyword.arg}`"
                    kwargs[keyword.arg] = self.literal(keyword.value)
        except _NotLiteral as missing:
            raise _Untranslatable(f"{subject} of `{cls.name}` (line {node.lineno}) "
                                  f"{missing.reason}") from None
        return _ModelValue(next(self._uids), cls, tuple(args), tuple(kwargs.items()))

    def model_method(self, node: ast.Call, model: _ModelValue) -> Any:
        method = node.func.attr
        if method == "load_state_dict":
            self.load_state_dict(node, model)
            return _Opaque(f"is the result of load_state_dict (line {node.lineno})")
        if method in _MODEL_METHODS_RETURNING_SELF:
            return model
        changed = _Opaque(f"is changed by `.{method}()` (line {node.lineno}): "
                          "not a recognised pattern")
        if isinstance(node.func.value, ast.Name):
            self.env[node.func.value.id] = changed
        return changed

    def load_state_dict(self, node: ast.Call, model: _ModelValue) -> None:
        state_nodes = node.args[:1] or [k.value for k in node.keywords if k.arg == "state_dict"]
        if not state_nodes:
            raise _Untranslatable(f"load_state_dict at line {node.lineno} has no state dict")
        state = self.value(state_nodes[0])
        if isinstance(state, _Opaque):
            raise _Untranslatable(f"state dict given to load_state_dict (line {node.lineno}) "
                                  f"{state.reason}")
        if not isinstance(state, _CheckpointValue):
            raise _Untranslatable(f"state dict given to load_state_dict (line {node.lineno}) "
                                  "is not read by `torch.load`")
        strict_nodes = node.args[1:2] or [k.value for k in node.keywords if k.arg == "strict"]
        strict = self.value(strict_nodes[0]) if strict_nodes else _Literal(True)
        if not (isinstance(strict, _Literal) and isinstance(strict.value, bool)):
            raise _Untranslatable(f"`strict` of load_state_dict (line {node.lineno}) is not "
                                  "True or False")
        self.loads.setdefault(model.uid, []).append(_Load(state, strict.value, node.lineno))

    def checkpoint_method(self, node: ast.Call, checkpoint: _CheckpointValue) -> Any:
        """``sd.get('params_ema', sd['params'])``; other methods are not recognised."""
        if node.func.attr == "get" and 1 <= len(node.args) <= 2 and not node.keywords:
            key = self.value(node.args[0])
            if isinstance(key, _Literal) and isinstance(key.value, str):
                if len(node.args) == 1:
                    return checkpoint.then(key.value)
                return self.key_or_fallback(node, checkpoint, key.value, self.value(node.args[1]))
        return _Opaque(f"is `{_source(node)}` (line {node.lineno}): not a recognised pattern")


class _NotLiteral(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _root_fallback_reason(line: int, keys: list[str]) -> str:
    chosen = " or ".join(repr(k) for k in keys)
    return (f"line {line} uses checkpoint key {chosen} when present and otherwise the root state "
            "dict; a manifest key cannot express that fallback")


def _manifest_key(checkpoint: _CheckpointValue) -> str | None:
    """Manifest key syntax: None (root), "a", "a.b" (nested) or "x|y" (x if present else y)."""
    keys = [k for step in checkpoint.steps for k in step]
    if any("." in k or "|" in k for k in keys):
        raise _Untranslatable(f"checkpoint key {keys} contains '.' or '|', which the manifest "
                              "key syntax reserves")
    if not checkpoint.steps:
        return None
    if len(checkpoint.steps) == 1:
        return "|".join(checkpoint.steps[0])
    if all(len(step) == 1 for step in checkpoint.steps):
        return ".".join(step[0] for step in checkpoint.steps)
    raise _Untranslatable(f"checkpoint key path {list(checkpoint.steps)} mixes nesting and "
                          "alternatives, which a manifest key cannot express")


def _yaml_value(value: Any, subject: str) -> tuple[Any, bool]:
    """(value with tuples as lists, whether a tuple was converted); raises for non-YAML types."""
    if isinstance(value, _YAML_SCALARS):
        return value, False
    if isinstance(value, (list, tuple)):
        items = [_yaml_value(v, subject) for v in value]
        return [v for v, _ in items], isinstance(value, tuple) or any(t for _, t in items)
    if isinstance(value, dict):
        converted, had_tuple = {}, False
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise _Untranslatable(f"{subject} has a dict key {key!r} that is neither a "
                                      "string nor an integer")
            converted[key], inner = _yaml_value(item, subject)
            had_tuple = had_tuple or inner
        return converted, had_tuple
    raise _Untranslatable(f"{subject} holds a {type(value).__name__} ({value!r}), which a YAML "
                          "manifest cannot hold")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _translate_branch(model_id: int, branch: ast.If, prelude: list[ast.stmt],
                      base_env: Mapping[str, Any], runtime_names: frozenset[str],
                      checkout: Path, wrappers: tuple[_PadWrapper, ...],
                      checksum: bool) -> TranslatedBranch:
    if not 0 <= model_id <= 99:
        raise _Untranslatable(f"model_id {model_id} does not fit a two-digit team id")
    folder = _BranchFolder(model_id, base_env, runtime_names, checkout)
    folder.run_prelude(prelude)
    folder.run(branch.body)
    model = folder.env.get("model")
    if model is None:
        raise _Untranslatable("the branch does not assign `model`")
    if isinstance(model, _Opaque):
        raise _Untranslatable(f"model {model.reason}")
    if not isinstance(model, _ModelValue):
        raise _Untranslatable("`model` is not built by calling a class from a model file")
    notes = list(folder.notes)

    model_file = _local_module_file(checkout, model.cls.module)
    if model_file is None:
        if model.cls.module.split(".")[0] != "models":
            raise _Untranslatable(f"model class `{model.cls.name}` comes from "
                                  f"`{model.cls.module}`, which is not a file of the checkout")
        model_file = model.cls.module.replace(".", "/") + ".py"
        notes.append(f"model file {model_file} is not in the checkout yet")
    model_path = PurePosixPath(model_file)
    file_stem = model_path.parent.name if model_path.name == "__init__.py" else model_path.stem
    file_team = re.match(r"team(\d+)_", file_stem)
    if file_team and int(file_team.group(1)) != model_id:
        notes.append(f"model file {model_file} is numbered {file_team.group(1)}, "
                     f"not model_id {model_id}")

    args, args_tuple = _yaml_value(list(model.args), "constructor arguments")
    kwargs, kwargs_tuple = _yaml_value(dict(model.kwargs), "constructor keyword arguments")
    if args_tuple or kwargs_tuple:
        notes.append("tuple constructor values are written as YAML lists")

    checkpoint = _checkpoint_spec(folder.loads.get(model.uid, []), checkout, checksum, notes)
    data_range = _data_range(folder.env.get("data_range"))
    name = _display_name(folder.env.get("name"), model_id, file_stem, notes)
    pad_to_multiple = _pad_multiple(model_id, wrappers, notes)
    return TranslatedBranch(
        model_id=model_id, line=branch.lineno, submission_id=f"team{model_id:02d}_{name}",
        name=name, model_file=model_file, class_name=model.cls.name, args=tuple(args),
        kwargs=kwargs, checkpoint=checkpoint, data_range=data_range,
        pad_to_multiple=pad_to_multiple, notes=tuple(notes))


def _checkpoint_spec(loads: list[_Load], checkout: Path, checksum: bool,
                     notes: list[str]) -> CheckpointSpec | None:
    if not loads:
        notes.append("no load_state_dict call: the manifest has no checkpoint")
        return None
    if len(loads) > 1:
        raise _Untranslatable("load_state_dict is called on the model at lines "
                              f"{', '.join(str(load.line) for load in loads)}; only one is "
                              "recognised")
    load = loads[0]
    path = checkout / load.checkpoint.path
    sha256 = None
    if not path.is_file():
        notes.append(f"checkpoint {load.checkpoint.path} is not in the checkout yet")
    elif checksum:
        sha256 = _sha256(path)
    return CheckpointSpec(load.checkpoint.path, _manifest_key(load.checkpoint), load.strict,
                          sha256)


def _data_range(value: Any) -> float:
    if value is None:
        raise _Untranslatable("the branch does not set `data_range`")
    if isinstance(value, _Opaque):
        raise _Untranslatable(f"`data_range` {value.reason}")
    if not (isinstance(value, _Literal) and type(value.value) in (int, float)
            and float(value.value) in DATA_RANGES):
        shown = value.value if isinstance(value, _Literal) else value
        raise _Untranslatable(f"`data_range` is {shown!r}; manifests accept 1.0 or 255.0")
    return float(value.value)


def _display_name(value: Any, model_id: int, file_stem: str, notes: list[str]) -> str:
    """``name`` without its leading ``NN_`` team prefix, else the model file's ``Name`` part."""
    if isinstance(value, _Literal) and isinstance(value.value, str):
        stripped = re.sub(rf"^0*{model_id}[_-]", "", value.value)
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", stripped).strip("_")
        if name:
            return name
    if value is not None:
        notes.append("`name` is not a literal string; the model file name is used instead")
    return re.sub(r"^team\d+_", "", file_stem) or file_stem


def _pad_multiple(model_id: int, wrappers: tuple[_PadWrapper, ...],
                  notes: list[str]) -> int | None:
    multiples = set()
    for wrapper in wrappers:
        if wrapper.problem is not None:
            raise _Untranslatable(wrapper.problem)
        if wrapper.multiple is None:
            notes.append(f"code specific to model_id {model_id} at line {wrapper.line} outside "
                         "select_model is not a recognised pad wrapper; check it by hand")
        else:
            multiples.add(wrapper.multiple)
    if len(multiples) > 1:
        raise _Untranslatable(f"model_id {model_id} is padded to several multiples "
                              f"{sorted(multiples)} outside select_model")
    return multiples.pop() if multiples else None


def _model_specific_blocks(module: ast.Module,
                           select_model: ast.FunctionDef) -> dict[int, tuple[_PadWrapper, ...]]:
    """``if model_id == N`` blocks outside select_model, by id, read as pad wrappers."""
    helpers = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
    found: dict[int, list[_PadWrapper]] = {}
    for top in module.body:
        if top is select_model:
            continue
        for node in ast.walk(top):
            if isinstance(node, ast.If) and (ids := _model_id_test(node.test)):
                wrapper = _read_pad_wrapper(node, top, helpers)
                for model_id in ids:
                    found.setdefault(model_id, []).append(wrapper)
    return {model_id: tuple(wrappers) for model_id, wrappers in found.items()}


def _is_pad_call(node: ast.AST) -> bool:
    dotted = _dotted(node.func) if isinstance(node, ast.Call) else None
    return dotted is not None and dotted.split(".")[-1] == "pad"


def _pad_mode(call: ast.Call) -> Any:
    mode_nodes = call.args[2:3] or [k.value for k in call.keywords if k.arg == "mode"]
    if not mode_nodes:
        return "constant"
    return mode_nodes[0].value if isinstance(mode_nodes[0], ast.Constant) else None


def _read_pad_wrapper(block: ast.If, scope: ast.AST,
                      helpers: Mapping[str, ast.FunctionDef]) -> _PadWrapper:
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
    return _PadWrapper(block.lineno, None, None)


def _pad_wrapper_from(line: int, pads: list[ast.Call], scope: ast.AST,
                      bindings: Mapping[str, set[int]]) -> _PadWrapper:
    modes = {_pad_mode(call) for call in pads}
    if modes != {"reflect"}:
        return _PadWrapper(line, None, (
            f"the pad at line {pads[0].lineno} uses mode {sorted(map(str, modes))}; the manifest "
            "adapter only reflect-pads"))
    multiples: set[int] = set()
    for node in ast.walk(scope):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
                continue
            constant = _int_constant(node.right)
            if constant is not None:
                multiples.add(constant)
            elif isinstance(node.right, ast.Name) and len(bindings.get(node.right.id, ())) == 1:
                multiples.update(bindings[node.right.id])
            else:
                return _PadWrapper(line, None, (
                    f"the reflect pad near line {pads[0].lineno} takes a multiple "
                    f"`{_source(node.right)}` that is not a literal"))
    if len(multiples) != 1:
        found = sorted(multiples) if multiples else "no `% multiple`"
        return _PadWrapper(line, None, (
            f"the reflect pad near line {pads[0].lineno} has {found}; expected one multiple"))
    return _PadWrapper(line, multiples.pop(), None)


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
            constant = _int_constant(value)
            if name is not None and constant is not None:
                bindings.setdefault(name, set()).add(constant)
    return bindings


def _call_site_ints(call: ast.Call, helper: ast.FunctionDef) -> dict[str, set[int]]:
    """Integer constants passed by ``call`` to the parameters of ``helper``."""
    parameters = [a.arg for a in helper.args.posonlyargs + helper.args.args]
    passed = dict(zip(parameters, call.args))
    passed.update({k.arg: k.value for k in call.keywords if k.arg is not None})
    return {name: {_int_constant(value)} for name, value in passed.items()
            if _int_constant(value) is not None}
