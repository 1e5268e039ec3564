"""The manifest lines to write by hand for a branch that is not translated.

Contract
--------
``draft_lines(model_id, folder, checkout, statements)`` returns YAML lines ready to paste into the file its
first line names (``<submission id>.yaml``): every field that ``folder`` (the branch folded
leniently, skipping the statements it cannot read) settled, and a ``<…>`` placeholder with a
comment for every field it did not, so that the file does not validate until they are filled
in. ``display_name`` is the branch's ``name`` as a manifest writes it. Nothing is written to disk.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esr_eval.importer.checkpoint_idioms import manifest_key
from esr_eval.importer.emit import SCALE, flow_yaml, manifest_value
from esr_eval.importer.model_idioms import local_module_file
from esr_eval.importer.values import CheckpointValue, LiteralValue, MethodCall, ModelValue, Untranslatable
from esr_eval.manifest import VALID_DATA_RANGES

if TYPE_CHECKING:
    from esr_eval.importer.branch import BranchFolder

MAX_TEAM_ID = 999  # team ids have two digits, or three for a team's extra entry


def display_name(value: Any, model_id: int, file_stem: str) -> tuple[str, bool]:
    """(``name`` without its leading ``NN_`` team prefix, else the model file's ``Name`` part;
    whether the file name stood in for a ``name`` that is not a literal string)."""
    if isinstance(value, LiteralValue) and isinstance(value.value, str):
        stripped = re.sub(rf"^0*{model_id}[_-]", "", value.value)
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", stripped).strip("_")
        if name:
            return name, False
    return re.sub(r"^team\d+_", "", file_stem) or file_stem, value is not None


def after_load_entry(call: MethodCall) -> dict[str, Any]:
    """The manifest's ``after_load`` entry of a recorded call (only the fields it needs)."""
    entry: dict[str, Any] = {"method": call.method}
    if call.path is not None:
        entry["path"] = call.path
    if call.args:
        entry["args"] = list(call.args)
    if call.kwargs:
        entry["kwargs"] = dict(call.kwargs)
    if call.each_module:
        entry["each_module"] = True
    return entry


def draft_lines(model_id: int, folder: BranchFolder, checkout: Path,
                statements: list[ast.stmt]) -> tuple[str, ...]:
    """YAML lines for the manifest of ``model_id``, from what ``folder`` settled when it folded
    ``statements`` (the branch)."""
    model = folder.env.get("model")
    model = model if isinstance(model, ModelValue) else None
    model_lines, file_stem = _model_lines(model, model_id, checkout)
    name, _ = display_name(folder.env.get("name"), model_id, file_stem)
    team_id = f'"{model_id:02d}"' if 0 <= model_id <= MAX_TEAM_ID else '"<two or three digits>"'
    submission = f"team{model_id:02d}_{name}" if 0 <= model_id <= MAX_TEAM_ID else "teamNN_Name"
    lines = [f"# {submission}.yaml: fill in every <…>, then check it with `esr-eval check`",
             f"team_id: {team_id}", f"name: {flow_yaml(name)}", *model_lines,
             *_checkpoint_lines(folder, model, _calls_load_state_dict(statements))]
    calls = folder.models.calls.get(model.uid, []) if model is not None else []
    if calls:
        lines.append("after_load:")
        lines.extend(f"- {flow_yaml(after_load_entry(call))}" for call in calls)
    data_range = folder.env.get("data_range")
    if isinstance(data_range, LiteralValue) and type(data_range.value) in (int, float) and float(
            data_range.value) in VALID_DATA_RANGES:
        lines.append(f"data_range: {float(data_range.value)}")
    else:
        lines.append("data_range: <1.0 or 255.0>  # the input range the network was trained with")
    lines.append(f"scale: {SCALE}")
    return tuple(lines)


def _model_lines(model: ModelValue | None, model_id: int, checkout: Path) -> tuple[list[str], str]:
    """(the ``model:`` lines, the model file's stem)."""
    if model is None:
        stem = f"team{model_id:02d}_<Name>"
        return ["model:", f"  file: models/{stem}.py  # the team's model file, relative to the checkout",
                "  class: <ClassName>", "  args: []", "  kwargs: {}"], stem
    model_file = local_module_file(checkout, model.cls.module) or model.cls.module.replace(".", "/") + ".py"
    lines = ["model:", f"  file: {flow_yaml(model_file)}", f"  class: {model.cls.name}"]
    for field, value in (("args", list(model.args)), ("kwargs", dict(model.kwargs))):
        try:
            lines.append(f"  {field}: {flow_yaml(manifest_value(value, field)[0])}")
        except Untranslatable:
            lines.append(f"  {field}: <{field}>  # literal constructor arguments")
    stem = Path(model_file).parent.name if model_file.endswith("__init__.py") else Path(model_file).stem
    return lines, stem


def _calls_load_state_dict(statements: list[ast.stmt]) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "load_state_dict"
               for statement in statements for node in ast.walk(statement))


def _checkpoint_lines(folder: BranchFolder, model: ModelValue | None, loads_weights: bool) -> list[str]:
    loads = folder.checkpoints.loads.get(model.uid, []) if model is not None else []
    read = [v for v in folder.env.values() if isinstance(v, CheckpointValue)]
    if loads:
        checkpoint, strict = loads[0].checkpoint, loads[0].strict
    elif read:
        checkpoint, strict = CheckpointValue(read[0].path), True
    elif loads_weights:
        return ["checkpoint:", "  path: <model_zoo/file.pth>  # the weights file, relative to the checkout",
                "  key: <key>  # 'params_ema|params' = the first present; 'a.b' nested; "
                "delete the line for a root state dict", "  strict: true"]
    else:
        return ["# checkpoint: {path: model_zoo/<file>.pth, key: <key>}  # if the model loads weights"]
    lines = ["checkpoint:", f"  path: {flow_yaml(checkpoint.path)}"]
    try:
        key = manifest_key(checkpoint) if loads else "<key>"
    except Untranslatable:
        key = "<key>"
    if key == "<key>":
        lines.append("  key: <key>  # 'params_ema|params' = the first present; 'a.b' nested; "
                     "delete the line for a root state dict")
    elif key is not None:
        lines.append(f"  key: {flow_yaml(key)}")
    lines.append(f"  strict: {flow_yaml(strict)}")
    return lines
