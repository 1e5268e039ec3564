"""One branch of ``select_model`` → a :class:`TranslatedBranch`, or :class:`Untranslatable`.

Contract
--------
``BranchFolder`` runs the statements of the prelude and of one branch symbolically, in order:
assignments (with unpacking), imports, ``del``, expression statements (a model's method call
becomes an ``after_load`` entry), the checkpoint-key ``if`` statement and the ``for`` loops of
:mod:`~esr_eval.importer.model_idioms`; a ``return`` ends the branch; any other statement, or a
change to a model or checkpoint it cannot follow, is untranslatable. A prelude statement that
fails only leaves its names opaque. ``translate_branch`` refuses an empty branch (only ``pass``)
as such, then requires ``model`` to be built from a class of a ``models.*`` module or a file of
the checkout, at most one ``load_state_dict`` on it, ``data_range`` of 1.0 or 255.0 and an id of
at most three digits (a three-digit id is written as a three-digit ``team_id``, noted with the
submission id it became), and assembles the validated manifest, whose submission id
``teamNN_Name`` must be a valid file stem; ``name`` loses its ``NN_`` team prefix (the model
file's ``Name`` part stands in when it is not a literal string). Every refusal carries the
manifest lines to write by hand, drafted from the branch folded leniently.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from esr_eval.importer.checkpoint_idioms import checkpoint_spec
from esr_eval.importer.draft import MAX_TEAM_ID, after_load_entry, display_name, draft_lines
from esr_eval.importer.emit import manifest_document, manifest_value
from esr_eval.importer.expressions import ExpressionFolder
from esr_eval.importer.model_idioms import local_module_file
from esr_eval.importer.report import TranslatedBranch
from esr_eval.importer.syntax import source
from esr_eval.importer.values import CheckpointValue, LiteralValue, ModelValue, Opaque, Untranslatable
from esr_eval.importer.wrappers import PadWrapper, pad_multiple
from esr_eval.manifest import VALID_DATA_RANGES, submission_id_for


class BranchFolder(ExpressionFolder):
    """Folds the statements of one branch into name bindings, in order."""

    def run_prelude(self, statements: list[ast.stmt]) -> None:
        """Statements before the chain; a failing one leaves its names unknown, not fatal."""
        for statement in statements:
            try:
                self.statement(statement)
            except Untranslatable as error:
                for node in ast.walk(statement):
                    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                        self.env[node.id] = Opaque(f"is set by line {statement.lineno} of "
                                                   f"select_model, which {error.reason}")

    def run(self, statements: list[ast.stmt], lenient: bool = False) -> None:
        """The branch's statements up to a ``return``; ``lenient`` skips the ones it cannot read
        (leaving their names unknown) instead of stopping, to draft a manifest by hand."""
        for statement in statements:
            if isinstance(statement, ast.Return):
                return
            if lenient:
                self.run_prelude([statement])
            else:
                self.statement(statement)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, (ast.Pass, ast.Global, ast.Nonlocal, ast.Assert)):
            return
        if isinstance(node, ast.Expr):
            if not isinstance(node.value, ast.Constant):
                self.value(node.value)
        elif isinstance(node, ast.Import):
            self.models.import_(node)
        elif isinstance(node, ast.ImportFrom):
            self.models.import_from(node)
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
            self.checkpoints.key_choice_statement(node)
        elif isinstance(node, ast.For):
            self.models.for_loop(node)
        else:
            raise Untranslatable(f"`{type(node).__name__.lower()}` statement at line "
                                 f"{node.lineno} inside the branch: not a recognised pattern")

    def assign(self, target: ast.expr, value_node: ast.expr) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value_node, (ast.Tuple, ast.List)) and len(value_node.elts) == len(
                    target.elts) and not any(isinstance(e, ast.Starred) for e in value_node.elts):
                values = [self.value(e) for e in value_node.elts]
                for element, value in zip(target.elts, values):
                    self.bind(element, value)
                return
            value = self.value(value_node)
            if isinstance(value, LiteralValue) and isinstance(value.value, (tuple, list)) and len(
                    value.value) == len(target.elts):
                for element, item in zip(target.elts, value.value):
                    self.bind(element, LiteralValue(item))
                return
            for element in target.elts:
                self.bind(element, Opaque(f"is unpacked from `{source(value_node)}` "
                                          f"(line {value_node.lineno})"))
            return
        self.bind(target, self.value(value_node))

    def bind(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.bind(element, Opaque(f"is unpacked at line {target.lineno}"))
        else:
            self.refuse_mutation(target)

    def refuse_mutation(self, target: ast.expr) -> None:
        root = target
        while isinstance(root, (ast.Attribute, ast.Subscript)):
            root = root.value
        if isinstance(root, ast.Name) and isinstance(
                self.env.get(root.id), (ModelValue, CheckpointValue)):
            raise Untranslatable(f"`{source(target)}` is modified at line {target.lineno}: "
                                 "not a recognised pattern")


def translate_branch(model_id: int, branch: ast.If, prelude: list[ast.stmt],
                     base_env: Mapping[str, Any], runtime_names: frozenset[str],
                     checkout: Path, wrappers: tuple[PadWrapper, ...], checksum: bool,
                     test_demo: str) -> TranslatedBranch:
    """Fold ``branch`` for ``model_id``; ``test_demo`` names its file in the manifest. A refusal
    carries the manifest lines to write by hand (:func:`draft_lines`)."""
    def folded(lenient: bool) -> BranchFolder:
        folder = BranchFolder(model_id, base_env, runtime_names, checkout)
        folder.run_prelude(prelude)
        folder.run(branch.body, lenient=lenient)
        return folder

    try:
        if not 0 <= model_id <= MAX_TEAM_ID:
            raise Untranslatable(f"model_id {model_id} does not fit a team id of two or three digits")
        if all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
               for s in branch.body):
            raise Untranslatable(f"branch for model id {model_id} is empty (`pass`): there is nothing "
                                 "to translate; if the team has a submission, write its manifest by hand")
        return _translated(model_id, branch, folded(lenient=False), checkout, wrappers, checksum, test_demo)
    except Untranslatable as error:
        if not error.manifest_lines:
            error.manifest_lines = draft_lines(model_id, folded(lenient=True), checkout, branch.body)
        raise


def _translated(model_id: int, branch: ast.If, folder: BranchFolder, checkout: Path,
                wrappers: tuple[PadWrapper, ...], checksum: bool, test_demo: str) -> TranslatedBranch:
    """The validated manifest of a folded branch."""
    model = folder.env.get("model")
    if model is None:
        raise Untranslatable("the branch does not assign `model`")
    if isinstance(model, Opaque):
        raise Untranslatable(f"model {model.reason}")
    if not isinstance(model, ModelValue):
        raise Untranslatable("`model` is not built by calling a class from a model file")
    notes = list(folder.notes)
    model_file, file_stem = _model_file(model, model_id, checkout, notes)
    args, args_tuple = manifest_value(list(model.args), "constructor arguments")
    kwargs, kwargs_tuple = manifest_value(dict(model.kwargs), "constructor keyword arguments")
    if args_tuple or kwargs_tuple:
        notes.append("tuple constructor values are written as YAML lists")
    checkpoint = checkpoint_spec(folder.checkpoints.loads.get(model.uid, []), checkout,
                                 checksum, notes)
    after_load = []
    for call in folder.models.calls.get(model.uid, []):
        entry, had_tuple = manifest_value(after_load_entry(call), f"arguments of `.{call.method}()`")
        after_load.append(entry)
        if had_tuple:
            notes.append(f"tuple arguments of `.{call.method}()` are written as YAML lists")
    data_range = _data_range(folder.env.get("data_range"))
    name, stood_in = display_name(folder.env.get("name"), model_id, file_stem)
    if stood_in:
        notes.append("`name` is not a literal string; the model file name is used instead")
    document = manifest_document(
        model_id=model_id, line=branch.lineno, source=test_demo, name=name,
        model_file=model_file, class_name=model.cls.name, args=args, kwargs=kwargs,
        checkpoint=checkpoint, after_load=after_load, data_range=data_range,
        pad_to_multiple=pad_multiple(model_id, wrappers, notes), checkout=checkout)
    submission_id, problem = submission_id_for(Path(f"team{model_id:02d}_{name}.yaml"))
    if problem is not None:
        raise Untranslatable(f"the manifest would not validate: {problem}")
    if model_id > 99:
        notes.append(f"model_id {model_id} has three digits: written as team_id \"{model_id}\", "
                     f"submission id {submission_id}")
    return TranslatedBranch(model_id=model_id, line=branch.lineno, submission_id=submission_id,
                            document=document, notes=tuple(notes))


def _model_file(model: ModelValue, model_id: int, checkout: Path,
                notes: list[str]) -> tuple[str, str]:
    """(POSIX path of the model's file in the checkout, its stem naming the team)."""
    model_file = local_module_file(checkout, model.cls.module)
    if model_file is None:
        if model.cls.module.split(".")[0] != "models":
            raise Untranslatable(f"model class `{model.cls.name}` comes from "
                                 f"`{model.cls.module}`, which is not a file of the checkout")
        model_file = model.cls.module.replace(".", "/") + ".py"
        notes.append(f"model file {model_file} is not in the checkout yet")
    model_path = PurePosixPath(model_file)
    file_stem = model_path.parent.name if model_path.name == "__init__.py" else model_path.stem
    file_team = re.match(r"team(\d+)_", file_stem)
    if file_team and int(file_team.group(1)) != model_id:
        notes.append(f"model file {model_file} is numbered {file_team.group(1)}, "
                     f"not model_id {model_id}")
    return model_file, file_stem


def _data_range(value: Any) -> float:
    if value is None:
        raise Untranslatable("the branch does not set `data_range`")
    if isinstance(value, Opaque):
        raise Untranslatable(f"`data_range` {value.reason}")
    if not (isinstance(value, LiteralValue) and type(value.value) in (int, float)
            and float(value.value) in VALID_DATA_RANGES):
        shown = value.value if isinstance(value, LiteralValue) else value
        raise Untranslatable(f"`data_range` is {shown!r}; manifests accept 1.0 or 255.0")
    return float(value.value)
