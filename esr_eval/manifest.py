"""Submission manifests → frozen :class:`Submission` records.

Contract
--------
* One manifest (YAML, or TOML with the same keys) describes one submission; its file stem is the
  ``submission_id``. Manifests are discovered recursively under a manifests folder
  (:func:`discover`), so an existing NTIRE-style checkout plus a folder of manifests works
  without moving any file.
* Paths inside a manifest are relative to the *submissions root* (the folder holding
  ``models/`` and ``model_zoo/``), given to :func:`parse_manifest` / :func:`discover`.
* Every problem raises :class:`SubmissionError` naming the submission, the field and the fix;
  a misspelt key gets a "did you mean". Nothing here imports torch.
* Manifests are untrusted input (:func:`discover_all` turns every problem of one file, whatever
  it is, into a :class:`SubmissionError` for that submission and never raises for one bad file):
  at most ``MAX_MANIFEST_BYTES``; UTF-8; YAML without aliases (no "billion laughs") and nested at
  most ``MAX_NESTING`` deep; every string free of control characters and surrogates and at most
  ``MAX_TEXT_CHARS`` long (refused, never rewritten, so the row shows what the team declared);
  ``name`` printable and at most ``MAX_NAME_CHARS``; ``team_id`` two digits, or three for a team's
  extra entry (NTIRE's ``model_id == 361``); the file stem (the submission id) printable,
  at most ``MAX_ID_CHARS`` characters / ``MAX_ID_BYTES`` UTF-8 bytes, not starting with '.' or
  '_' (an invalid stem gets an escaped stand-in id for its error row); ``scale`` in
  ``ALLOWED_SCALES``; distinct submission ids and distinct ``team_id`` s across the folder.
  Values quoted in messages are escaped and clipped, so every message is short and printable.

* ``after_load`` lists method calls on the model, run in order after its weights load (the
  official code's ``model.repa()``, ``model.load_weights(path)``, or one method on every module
  that has it); only literal arguments, and a file argument only as ``path``, a path under the
  submissions root checked like ``checkpoint.path`` and passed first.

The format is documented in the README ("Submission manifests").
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import AfterValidator, BeforeValidator, ValidationError, ValidationInfo, field_validator

from esr_eval.validation import Problem, Strict, about, invalid, printable, problems, show

MANIFEST_SUFFIXES = (".yaml", ".yml", ".toml")
VALID_DATA_RANGES = (1.0, 255.0)
# Upscaling factors a manifest may declare: the DIV2K/LSDIR bicubic tracks (NTIRE ESR is x4).
# `esr-eval check` and every evaluation parse manifests here, so both accept the same.
ALLOWED_SCALES = (2, 3, 4)
MAX_MANIFEST_BYTES = 64 * 1024  # a real manifest is well under 1 KiB
MAX_NESTING = 16                # YAML/TOML nesting depth (kwargs may nest a little)
MAX_ID_CHARS = 80               # submission id = file stem; also a part-file name in the run folder
MAX_ID_BYTES = 160              # ... which must fit a 255-byte file name with its temporary suffix
MAX_NAME_CHARS = 80             # display name (tables, plots)
MAX_TEXT_CHARS = 500            # any other string in a manifest (paths, keys, weights, requirements)


class SubmissionError(ValueError):
    """A submission cannot be used as declared; says which one, which field, and the fix."""

    def __init__(self, submission_id: str, field_name: str, problem: str, fix: str,
                 stage: str = "manifest"):
        self.submission_id = submission_id
        self.field_name = field_name
        self.problem = problem
        self.fix = fix
        self.stage = stage
        self.problems = (Problem(field_name, problem, fix),)
        super().__init__(f"[{submission_id}] {field_name}: {problem}. Fix: {fix}")

    @classmethod
    def listing(cls, submission_id: str, found: list[Problem]) -> SubmissionError:
        """One error for every problem of a manifest: the first names the field; the message lists all."""
        first = found[0]
        error = cls(submission_id, first.field, first.problem, first.fix)
        error.problems = tuple(found)
        error.args = ("; ".join([str(error)] + [f"{p.field}: {p.problem}. Fix: {p.fix}" for p in found[1:]]),)
        return error


def submission_id_for(path: Path) -> tuple[str, str | None]:
    """(submission id, problem): the file stem, or an escaped stand-in and what is wrong with the stem."""
    stem = Path(path).stem
    if not stem.isprintable():
        problem = ("the file name (whose stem is the submission id) holds unprintable characters "
                   "(control characters, bytes that are not UTF-8, or the like)")
    elif len(stem) > MAX_ID_CHARS or len(stem.encode("utf-8")) > MAX_ID_BYTES:
        problem = (f"the file stem (the submission id) is {len(stem)} characters; the limit is {MAX_ID_CHARS} "
                   f"characters and {MAX_ID_BYTES} UTF-8 bytes")
    elif not stem or stem[0] in "._":
        problem = "the file stem (the submission id) starts with '.' or '_', which Parquet readers skip"
    else:
        return stem, None
    stand_in = printable(stem, MAX_ID_CHARS - len("invalid-"))
    return ("invalid-" + stand_in if stand_in[:1] in ("", ".", "_") else stand_in), problem


class _Refused(yaml.YAMLError):
    """A YAML construct manifests may not use (an alias, too deep a nesting)."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(problem)


class ManifestLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``, including ``<<: *name`` merges), which
    let a few hundred bytes expand to billions of values, and nesting deeper than ``MAX_NESTING``."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"uses the YAML alias *{printable(str(event.anchor), 30)} at line "
                           f"{event.start_mark.line + 1}; aliases are refused in manifests (a few hundred "
                           "bytes of them can expand to billions of values)",
                           "write each value out in full, without anchors (&name) and aliases (*name)")
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                raise _Refused(f"nests deeper than {MAX_NESTING} levels (line {mark.line + 1})",
                               "flatten the structure; a manifest needs only a few levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1



_README = "see README, 'Submission manifests'"


def _none_as(default: Any) -> BeforeValidator:
    """An explicit null in the file means the default."""
    return BeforeValidator(lambda value: default if value is None else value)


def _under_root(missing_fix: str) -> AfterValidator:
    """A non-empty path that stays under the submissions root and, when the validation context asks
    (``check_files``), exists there; ``missing_fix`` is the fix when it does not."""

    def check(value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise invalid(f"must be a non-empty path, got {show(value)}", "give a path relative to --root")
        normal = os.path.normpath(value)
        if os.path.isabs(value) or normal == ".." or normal.startswith(".." + os.sep):
            raise invalid(f"{printable(value)} points outside the submissions root",
                          "give a path relative to --root without '..' (manifests are untrusted input)")
        context = info.context or {}
        if context.get("check_files") and not (context["root"] / value).is_file():
            raise invalid(f"{printable(value)} not found under {context['root']}", missing_fix)
        return value

    return AfterValidator(check)


_MODEL_FILE_FIX = "point `model.file` at the team's .py file relative to the submissions root (--root)"
_CHECKPOINT_FIX = "put the checkpoint there or correct the path (relative to --root)"
ModelFile = Annotated[str, _under_root(_MODEL_FILE_FIX)]
CheckpointFile = Annotated[str, _under_root(_CHECKPOINT_FIX)]


class ModelSpec(Strict):
    """Where the architecture lives and how to construct it."""

    file: ModelFile = about("the team's model file, relative to the submissions root", _MODEL_FILE_FIX)
    class_name: str = about(
        "the network class defined in `file`",
        "write the name of the network class defined in model.file, e.g. `class: RLFN_Prune`", alias="class")
    args: Annotated[tuple[Any, ...], _none_as(())] = about(
        "positional arguments of the class", "write `args: [48, 4]`", default=(), strict=False)
    kwargs: Annotated[dict[str, Any], _none_as({})] = about(
        "keyword arguments of the class", "write `kwargs: {upscale: 4}`", default_factory=dict)

    @field_validator("class_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value.isidentifier():
            raise invalid(f"must be a Python class name, got {show(value)}",
                          "write the name of the network class defined in model.file, e.g. `class: RLFN_Prune`")
        return value


class CheckpointSpec(Strict):
    """Where the weights live and how to read them.

    ``key`` is a path into the loaded object: ``None`` = the root is the state dict,
    ``"a.b"`` = nested, ``"params_ema|params"`` = the first alternative present.
    """

    path: CheckpointFile = about("the weights file, relative to the submissions root", _CHECKPOINT_FIX)
    key: str | None = about(
        "where the state dict sits in the loaded object",
        "use 'params', 'params_ema', 'params_ema|params', a nested 'a.b', or omit it for a root state dict",
        default=None, pattern=r"[^|.]")
    sha256: str | None = about(
        "expected SHA-256 of the file", "write the output of `sha256sum <checkpoint>` or omit the field",
        default=None, pattern=r"^[0-9a-fA-F]{64}$")
    strict: Annotated[bool, _none_as(True)] = about(
        "load with the official strict key check", "write `strict: true` or `false`", default=True)
    trusted_pickle: Annotated[bool, _none_as(False)] = about(
        "allow unpickling code (recorded opt-in)", "write `trusted_pickle: true` or `false`", default=False)

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()

    def key_alternatives(self) -> tuple[tuple[str, ...], ...]:
        """The key as alternatives, each a tuple of nested names (empty tuple = root)."""
        if not self.key:
            return ((),)
        return tuple(tuple(part for part in alt.split(".") if part)
                     for alt in self.key.split("|"))


_AFTER_LOAD_FIX = "write a method of the model, e.g. `after_load: [repa]` or `{method: load_weights, path: model_zoo/x.pth}`"
_AFTER_LOAD_PATH_FIX = "put the file there or correct the path (relative to --root)"


def _method_entry(value: Any) -> Any:
    """A bare method name in ``after_load`` means a call without arguments."""
    return {"method": value} if isinstance(value, str) else value


class AfterLoadCall(Strict):
    """One method call on the loaded model (``after_load:``): ``model.<method>(path, *args, **kwargs)``,
    or, with ``each_module``, the same call on every module of ``model.modules()`` that has the method."""

    method: str = about("the model's method to call after its weights load", _AFTER_LOAD_FIX)
    path: Annotated[str, _under_root(_AFTER_LOAD_PATH_FIX)] | None = about(
        "a file passed as the first argument, relative to the submissions root (resolved and checked)",
        "give the file's path relative to --root, e.g. model_zoo/team40_weights.pth", default=None)
    args: Annotated[tuple[Any, ...], _none_as(())] = about(
        "further positional arguments (literals)", "write `args: [true]`", default=(), strict=False)
    kwargs: Annotated[dict[str, Any], _none_as({})] = about(
        "keyword arguments (literals)", "write `kwargs: {deploy: true}`", default_factory=dict)
    each_module: Annotated[bool, _none_as(False)] = about(
        "call it on every module of the model that has the method (the `for m in model.modules()` idiom)",
        "write `each_module: true` or `false`", default=False)

    @field_validator("method")
    @classmethod
    def _method_name(cls, value: str) -> str:
        if not value.isidentifier() or value.startswith("__"):
            raise invalid(f"must be the name of a method of the model, got {show(value)}", _AFTER_LOAD_FIX)
        return value

    def describe(self) -> str:
        """The call as Python source, ``path`` as written in the manifest."""
        args = ([repr(self.path)] if self.path is not None else []) + [repr(a) for a in self.args]
        args += [f"{name}={value!r}" for name, value in self.kwargs.items()]
        call = f"{self.method}({', '.join(args)})"
        return f"{call} on every module that has it" if self.each_module else call


AfterLoadEntry = Annotated[AfterLoadCall, BeforeValidator(_method_entry, json_schema_input_type=str | AfterLoadCall)]


class TileEntry(Strict):
    size: int = about("tile edge in LR pixels", "give a whole number such as 256", gt=0)
    overlap: int = about("overlap in LR pixels", "choose an overlap smaller than the tile size", default=0, ge=0)

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info: ValidationInfo) -> int:
        size = info.data.get("size")
        if size is not None and value >= size:
            raise invalid(f"must be an integer in [0, size), got {value}",
                          "choose an overlap smaller than the tile size")
        return value


class AdapterEntry(Strict):
    pad_to_multiple: int | None = about("reflect-pad the LR input to a multiple", "give a whole number such as 16",
                                        default=None, gt=0)
    tile: TileEntry | None = about("tiled inference", "write `tile: {size: 256, overlap: 16}`", default=None)


@dataclass(frozen=True)
class AdapterSpec:
    """Optional forward adapter: reflect-pad to a multiple and/or tiled inference."""

    pad_to_multiple: int | None = None
    tile_size: int | None = None
    tile_overlap: int = 0

    def describe(self) -> str:
        parts = []
        if self.pad_to_multiple:
            parts.append(f"pad_to_multiple={self.pad_to_multiple}")
        if self.tile_size:
            parts.append(f"tile={self.tile_size}/overlap={self.tile_overlap}")
        return ",".join(parts) or "none"


def _specifier(value: str | None) -> str | None:
    if value is not None:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise invalid(f"is not a version range, got {show(value)}", "write a range such as \">=3.10,<3.13\"") from None
    return value


class NeedsEntry(Strict):
    """What a submission needs to run; a run that cannot provide it records the submission as
    ``skipped`` ("not measured on this hardware"), never as an error."""

    cuda: bool = about("needs a CUDA GPU (a CUDA-only extension, custom kernels)", "write `cuda: true` or `false`",
                       default=False)
    min_gpu_memory_gb: float | None = about("GPU memory it needs, GiB", "write a number such as 24", default=None,
                                            gt=0)
    python: Annotated[str | None, AfterValidator(_specifier)] = about(
        "Python versions it runs on (a PEP 440 range)", 'write a range such as ">=3.10,<3.13"', default=None)


class ManifestDocument(Strict):
    """One manifest file, as written (README, "Submission manifests"); its JSON Schema is
    ``docs/manifest.schema.json``."""

    team_id: str = about("the team's id: two digits, or three for a team's extra entry (e.g. 361), quoted",
                         'write it quoted, e.g. team_id: "07" (unquoted, YAML reads 010 as 8)')
    name: str | int | float | None = about("display name (default: the submission id)",
                                           "write the method's name, e.g. `name: RLFN`", default=None)
    model: ModelSpec = about("the network", "write `model: {file: models/teamNN_Name.py, class: ClassName}`")
    checkpoint: CheckpointSpec | None = about(
        "the weights (omit for a parameter-free model)",
        "write `checkpoint: {path: model_zoo/teamNN_name.pth}` or omit it for a parameter-free model", default=None)
    after_load: Annotated[tuple[AfterLoadEntry, ...], _none_as(())] = about(
        "method calls on the model after its weights load, in order (e.g. re-parameterisation)",
        "write e.g. `after_load: [repa]` or `after_load: [{method: load_weights, path: model_zoo/x.pth}]`",
        default=(), strict=False)
    data_range: float = about("input range the network expects: 1.0 or 255.0",
                              "declare the input range the network was trained with: 1.0 or 255.0", default=1.0)
    scale: int = about("upscaling factor",
                       "declare the factor the network upscales by, a whole number (NTIRE ESR is x4)", default=4)
    adapter: AdapterEntry | None = about("forward adapter: padding and/or tiling",
                                         "write `adapter: {pad_to_multiple: 16}` or omit it", default=None)
    requirements: Annotated[tuple[str, ...], _none_as(())] = about(
        "pip requirement strings", "write `requirements: [einops, timm==0.9.2]`", default=(), strict=False)
    needs: Annotated[NeedsEntry, _none_as({})] = about(
        "what it needs to run (CUDA, GPU memory, Python)", "write e.g. `needs: {cuda: true, min_gpu_memory_gb: 24}`",
        default_factory=NeedsEntry)
    weights: str | int | float | None = about(
        "free text on how the weights were made",
        'write one line such as `weights: "trained on DIV2K, 1000k iterations"`', default="")

    @field_validator("team_id")
    @classmethod
    def _two_or_three_digits(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9]{2,3}", value):
            raise invalid(f"must be a quoted string of two digits (three for a team's extra entry), got {show(value)}",
                          'write it quoted, e.g. team_id: "07" (unquoted, YAML reads 010 as 8)')
        return value

    @field_validator("name")
    @classmethod
    def _display_name(cls, value: Any) -> Any:
        name = "" if value is None else str(value).strip()
        if not name.isprintable():
            bad = next(c for c in name if not c.isprintable())
            raise invalid(f"holds the unprintable character {ascii(bad)[1:-1]} in {show(name)}",
                          "use plain printable text on one line (no control, format or surrogate characters)")
        if len(name) > MAX_NAME_CHARS:
            raise invalid(f"is {len(name)} characters long, over the {MAX_NAME_CHARS}-character limit for a "
                          "display name", "shorten it to the method's name")
        return name

    @field_validator("data_range")
    @classmethod
    def _known_range(cls, value: float) -> float:
        if value not in VALID_DATA_RANGES:
            raise invalid(f"must be 1.0 or 255.0, got {show(value)}",
                          "declare the input range the network was trained with: 1.0 or 255.0")
        return value

    @field_validator("scale")
    @classmethod
    def _allowed_scale(cls, value: int) -> int:
        if value not in ALLOWED_SCALES:
            raise invalid(f"must be one of {', '.join(map(str, ALLOWED_SCALES))}, got {value}",
                          "declare the factor the network upscales by, a whole number (NTIRE ESR is x4)")
        return value

    def adapter_spec(self) -> AdapterSpec:
        entry = self.adapter or AdapterEntry()
        tile = entry.tile
        return AdapterSpec(entry.pad_to_multiple, tile.size if tile else None, tile.overlap if tile else 0)


@dataclass(frozen=True)
class Submission:
    """One validated submission. Paths are resolved against ``root``."""

    submission_id: str
    team_id: str
    name: str
    root: Path
    manifest_path: Path
    manifest_sha256: str
    model: ModelSpec
    checkpoint: CheckpointSpec | None
    data_range: float
    scale: int
    adapter: AdapterSpec
    requirements: tuple[str, ...] = ()
    weights: str = ""
    needs: NeedsEntry = NeedsEntry()
    after_load: tuple[AfterLoadCall, ...] = ()

    @property
    def model_path(self) -> Path:
        return (self.root / self.model.file).resolve()

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint is None else (self.root / self.checkpoint.path).resolve()

    @property
    def strict(self) -> bool:
        return True if self.checkpoint is None else self.checkpoint.strict

    @property
    def trusted_pickle(self) -> bool:
        return False if self.checkpoint is None else self.checkpoint.trusted_pickle


def _check_strings(sid: str, value: Any, where: str = "") -> None:
    """Every string of the document, keys included: no surrogate, no control character (tab and
    newline allowed in the free-text ``weights`` only), at most MAX_TEXT_CHARS. Refused, not rewritten."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _check_strings(sid, key, where.rstrip(".") or "(key)")
            _check_strings(sid, inner, f"{where}{printable(str(key), 40)}.")
        return
    if isinstance(value, list):
        for index, inner in enumerate(value):
            _check_strings(sid, inner, f"{where.rstrip('.')}[{index}].")
        return
    if not isinstance(value, str):
        return
    field_name = where.rstrip(".") or "(key)"
    allowed = "\t\n\r" if field_name == "weights" else ""
    bad = next((c for c in value if c not in allowed
                and (unicodedata.category(c) in ("Cc", "Cs") or c in "\u2028\u2029")), None)
    if bad is not None:
        kind = "a surrogate" if unicodedata.category(bad) == "Cs" else "a control character"
        raise SubmissionError(sid, field_name,
                              f"holds {kind} ({ascii(bad)[1:-1]}) in {show(value)}; such text cannot be "
                              "stored in the result tables or shown safely",
                              "remove the character (write plain UTF-8 text, no \\u escapes of surrogates "
                              "or control characters)")
    if len(value) > MAX_TEXT_CHARS:
        raise SubmissionError(sid, field_name, f"is {len(value)} characters long, over the {MAX_TEXT_CHARS}-character "
                                               "limit for a manifest string", "shorten it")


def _read_mapping(path: Path, sid: str) -> tuple[dict, bytes]:
    """(the manifest's mapping, its bytes), read within the limits of the module docstring."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise SubmissionError(sid, "(file)", f"cannot be read: {printable(exc.strerror or str(exc))}",
                              "make the manifest a readable regular file") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        try:
            size = f"{path.stat().st_size} bytes"
        except OSError:
            size = "more than that"
        raise SubmissionError(sid, "(file)", f"the manifest is {size}, over the {MAX_MANIFEST_BYTES // 1024} KiB "
                                             f"({MAX_MANIFEST_BYTES}-byte) limit for a manifest",
                              "a manifest holds a few keys (well under 1 KiB); remove whatever inflates it")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise SubmissionError(sid, "(file)", f"not UTF-8 at byte {exc.start} (0x{data[exc.start]:02x})",
                              "save the file as UTF-8") from exc
    kind = path.suffix[1:].upper()
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.load(text, Loader=ManifestLoader)
    except _Refused as exc:
        raise SubmissionError(sid, "(file)", exc.problem, exc.fix) from exc
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SubmissionError(sid, "(file)", f"not valid {kind}: {printable(str(exc), 300)}",
                              f"fix the syntax of {printable(str(path), 200)}") from exc
    except RecursionError as exc:
        raise SubmissionError(sid, "(file)", f"not valid {kind}: nested too deeply to parse",
                              "flatten the structure; a manifest needs only a few levels") from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise SubmissionError(sid, "(file)", f"not valid {kind}: {printable(str(exc), 200)}",
                              "write ordinary values (numbers of a few digits)") from exc
    if not isinstance(raw, dict):
        raise SubmissionError(sid, "(file)", "the manifest is not a mapping of keys",
                              "start from a shipped manifest in model_zoo/")
    if path.suffix == ".toml" and _depth(raw) > MAX_NESTING:
        raise SubmissionError(sid, "(file)", f"nests deeper than {MAX_NESTING} levels",
                              "flatten the structure; a manifest needs only a few levels")
    return raw, data


def _depth(value: Any) -> int:
    """Nesting depth of dicts and lists (iterative: the value may be nested hundreds deep)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            stack.extend((inner, level + 1) for inner in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_manifest(path: Path, root: Path, check_files: bool = True) -> Submission:
    """Read and validate one manifest; raises :class:`SubmissionError` listing every problem."""
    path = Path(path)
    root = Path(root).resolve()
    sid, problem = submission_id_for(path)
    if problem:
        raise SubmissionError(sid, "(file)", problem,
                              "rename the file to a short printable id such as team07_Name.yaml")
    raw, data = _read_mapping(path, sid)
    _check_strings(sid, raw)
    try:
        document = ManifestDocument.model_validate(raw, context={"root": root, "check_files": check_files})
    except ValidationError as exc:
        raise SubmissionError.listing(sid, problems(exc, ManifestDocument, _README)) from None
    return Submission(
        submission_id=sid,
        team_id=document.team_id,
        name=document.name or sid,
        root=root,
        manifest_path=path.resolve(),
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        model=document.model,
        checkpoint=document.checkpoint,
        data_range=float(document.data_range),
        scale=document.scale,
        adapter=document.adapter_spec(),
        requirements=document.requirements,
        weights=str(document.weights or ""),
        needs=document.needs,
        after_load=document.after_load,
    )


def json_schema_text() -> str:
    """The JSON Schema of a manifest (``docs/manifest.schema.json``), for editors' completion and checks."""
    schema = ManifestDocument.model_json_schema(by_alias=True)
    schema["title"] = "esr-eval submission manifest"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def manifest_paths(manifests_dir: Path) -> list[Path]:
    """All manifest files under a folder, recursively, in a stable order."""
    manifests_dir = Path(manifests_dir)
    if not manifests_dir.is_dir():
        raise FileNotFoundError(f"manifest folder {manifests_dir} does not exist; "
                                "pass --manifests DIR (default: <root>/model_zoo)")
    return sorted(p for p in manifests_dir.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file())


def _listing(paths: list, limit: int = 4) -> str:
    shown = ", ".join(printable(str(p), 120) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _shared_id_error(sid: str, paths: list[Path], manifests_dir: Path) -> SubmissionError:
    relative = [p.relative_to(manifests_dir) if p.is_relative_to(manifests_dir) else p for p in paths]
    count = "two" if len(paths) == 2 else str(len(paths))
    return SubmissionError(sid, "(file)", f"{count} manifests share this id: {_listing(relative)}; none of them is run",
                           "rename all but one of the files; the file stem is the submission id")


def _shared_team_errors(submissions: list[Submission]) -> tuple[list[Submission], list[SubmissionError]]:
    """Submissions whose team_id no other submission declares, and an error for each one that shares it."""
    by_team: dict[str, list[Submission]] = {}
    for sub in submissions:
        by_team.setdefault(sub.team_id, []).append(sub)
    kept, errors = [], []
    for sub in submissions:
        others = [o.submission_id for o in by_team[sub.team_id] if o is not sub]
        if not others:
            kept.append(sub)
            continue
        errors.append(SubmissionError(
            sub.submission_id, "team_id",
            f'"{sub.team_id}" is also the team_id of {_listing(others)}; none of them is run',
            "give each submission its own team_id (in NTIRE each team has one id and one entry)"))
    return kept, errors


def discover_all(manifests_dir: Path, root: Path, check_files: bool = True, *,
                 allow_shared_team_ids: bool = False) -> tuple[list[Submission], list[SubmissionError]]:
    """Parse every manifest; every problem of a file (invalid, unreadable, hostile, an id or a
    team_id shared with another file) comes back as a :class:`SubmissionError` for that
    submission instead of stopping the others. Raises only when the folder itself is missing.

    ``allow_shared_team_ids`` accepts several submissions per team_id (synthetic benchmarks)."""
    manifests_dir = Path(manifests_dir)
    by_id: dict[str, list[Path]] = {}
    for path in manifest_paths(manifests_dir):
        by_id.setdefault(submission_id_for(path)[0], []).append(path)
    submissions, errors = [], []
    for sid, paths in by_id.items():
        if len(paths) > 1:
            errors.append(_shared_id_error(sid, paths, manifests_dir))
            continue
        try:
            submissions.append(parse_manifest(paths[0], root, check_files))
        except SubmissionError as exc:
            errors.append(exc)
        except Exception as exc:  # noqa: BLE001 - one file never stops the others, whatever it holds
            errors.append(SubmissionError(sid, "(file)", f"could not be parsed: {type(exc).__name__}: "
                                                         f"{printable(str(exc), 200)}",
                                          "start from a shipped manifest in model_zoo/ (see README, "
                                          "'Submission manifests')"))
    if not allow_shared_team_ids:
        submissions, team_errors = _shared_team_errors(submissions)
        errors += team_errors
    return submissions, errors


def discover(manifests_dir: Path, root: Path, check_files: bool = True) -> list[Submission]:
    """Parse every manifest under ``manifests_dir``; the first problem (as :func:`discover_all`) raises."""
    submissions, errors = discover_all(manifests_dir, root, check_files)
    if errors:
        raise errors[0]
    return submissions


def select(submissions: list[Submission], wanted: list[str] | tuple[str, ...]) -> list[Submission]:
    """Pick submissions by id, team id or (case-insensitive) name; keep the order asked for."""
    if not wanted:
        return list(submissions)
    chosen = []
    for token in wanted:
        matches = [s for s in submissions
                   if token in (s.submission_id, s.team_id) or token.lower() == s.name.lower()]
        if not matches:
            nearest = _nearest(token, submissions)
            hint = "" if nearest is None else f"did you mean {nearest.submission_id} ({nearest.name})? "
            raise SubmissionError(token, "(selection)", f"no submission matches {printable(token, 80)!r}",
                                  f"{hint}Give a submission id, team id or name (`esr-eval ls` lists them)")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


NEAREST_MIN_LIKENESS = 0.6  # difflib ratio from which a selection that matches nothing names the nearest submission


def _nearest(token: str, submissions: list[Submission]) -> Submission | None:
    """The submission whose id, team id or name is most like ``token`` (case-insensitive), if any is alike."""
    def likeness(sub: Submission) -> float:
        return max(difflib.SequenceMatcher(None, token.lower(), key.lower()).ratio()
                   for key in (sub.submission_id, sub.team_id, sub.name))

    best = max(submissions, key=likeness, default=None)
    return best if best is not None and likeness(best) >= NEAREST_MIN_LIKENESS else None
