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
  ``name`` printable and at most ``MAX_NAME_CHARS``; the file stem (the submission id) printable,
  at most ``MAX_ID_CHARS`` characters / ``MAX_ID_BYTES`` UTF-8 bytes, not starting with '.' or
  '_' (an invalid stem gets an escaped stand-in id for its error row); ``scale`` in
  ``ALLOWED_SCALES``; distinct submission ids and distinct ``team_id`` s across the folder.
  Values quoted in messages are escaped and clipped, so every message is short and printable.

The format is documented in the README ("Submission manifests").
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

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
SHOWN_CHARS = 60                # a value quoted in an error message, escaped, at most this long

_TOP_KEYS = {
    "team_id", "name", "model", "checkpoint", "data_range", "scale", "adapter",
    "requirements", "weights",
}
_MODEL_KEYS = {"file", "class", "args", "kwargs"}
_CHECKPOINT_KEYS = {"path", "key", "sha256", "strict", "trusted_pickle"}
_ADAPTER_KEYS = {"pad_to_multiple", "tile"}
_TILE_KEYS = {"size", "overlap"}


class SubmissionError(ValueError):
    """A submission cannot be used as declared; says which one, which field, and the fix."""

    def __init__(self, submission_id: str, field_name: str, problem: str, fix: str,
                 stage: str = "manifest"):
        self.submission_id = submission_id
        self.field_name = field_name
        self.problem = problem
        self.fix = fix
        self.stage = stage
        super().__init__(f"[{submission_id}] {field_name}: {problem}. Fix: {fix}")


def printable(text: str, limit: int | None = SHOWN_CHARS) -> str:
    """``text`` with unprintable characters (controls, surrogates, line separators, …) escaped as
    ``\\xNN``/``\\uNNNN`` and clipped to ``limit`` characters with '…' (``None``: not clipped):
    safe to print and to store."""
    head = text if limit is None else text[: limit + 1]
    escaped = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in head)
    return escaped if limit is None or len(escaped) <= limit else escaped[: limit - 1] + "…"


def _show(value: Any) -> str:
    """A value as quoted in a message: its repr, escaped and clipped."""
    return printable(repr(value))


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



@dataclass(frozen=True)
class ModelSpec:
    """Where the architecture lives and how to construct it."""

    file: str
    class_name: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointSpec:
    """Where the weights live and how to read them.

    ``key`` is a path into the loaded object: ``None`` = the root is the state dict,
    ``"a.b"`` = nested, ``"params_ema|params"`` = the first alternative present.
    """

    path: str
    key: str | None = None
    sha256: str | None = None
    strict: bool = True
    trusted_pickle: bool = False

    def key_alternatives(self) -> tuple[tuple[str, ...], ...]:
        """The key as alternatives, each a tuple of nested names (empty tuple = root)."""
        if not self.key:
            return ((),)
        return tuple(tuple(part for part in alt.split(".") if part)
                     for alt in self.key.split("|"))


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


def _did_you_mean(word: str, choices: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(sorted(choices))}"


def _check_keys(sid: str, where: str, data: Mapping, allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise SubmissionError(sid, f"{where}{printable(str(key), 40)}", "unknown key",
                                  f"remove it or rename it ({_did_you_mean(str(key), allowed)})")


def _require(sid: str, data: Mapping, key: str, where: str = "") -> Any:
    if key not in data or data[key] is None:
        raise SubmissionError(sid, f"{where}{key}", "missing",
                              f"add `{key}:` to the manifest (see README, 'Submission manifests')")
    return data[key]


def _as_bool(sid: str, name: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SubmissionError(sid, name, f"must be true or false, got {_show(value)}",
                              f"write `{name.rsplit('.', 1)[-1]}: true` or `false`")
    return value


def _positive_int(sid: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SubmissionError(sid, name, f"must be a positive integer, got {_show(value)}",
                              "give a whole number such as 16")
    return value


def _string(sid: str, name: str, value: Any, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SubmissionError(sid, name, f"must be a non-empty string, got {_show(value)}", f"write {example}")
    return value


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
                              f"holds {kind} ({ascii(bad)[1:-1]}) in {_show(value)}; such text cannot be "
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


def _inside_root(sid: str, field_name: str, relative: str) -> str:
    """Manifest paths stay under the submissions root: no absolute paths, no '..' out of it."""
    normal = os.path.normpath(relative)
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep):
        raise SubmissionError(sid, field_name, f"{printable(relative)} points outside the submissions root",
                              "give a path relative to --root without '..' (manifests are untrusted input)")
    return relative


def _parse_model(sid: str, root: Path, raw: Any, check_files: bool) -> ModelSpec:
    if not isinstance(raw, dict):
        raise SubmissionError(sid, "model", "must be a mapping with `file` and `class`",
                              "write `model: {file: models/teamNN_Name.py, class: ClassName}`")
    _check_keys(sid, "model.", raw, _MODEL_KEYS)
    file = _string(sid, "model.file", _require(sid, raw, "file", "model."), "`file: models/teamNN_Name.py`")
    file = _inside_root(sid, "model.file", file)
    class_name = _require(sid, raw, "class", "model.")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise SubmissionError(sid, "model.class", f"must be a Python class name, got {_show(class_name)}",
                              "write the name of the network class defined in model.file, e.g. `class: RLFN_Prune`")
    args = raw.get("args") or []
    kwargs = raw.get("kwargs") or {}
    if not isinstance(args, list):
        raise SubmissionError(sid, "model.args", f"must be a list, got {type(args).__name__}",
                              "write `args: [48, 4]`")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise SubmissionError(sid, "model.kwargs", f"must be a mapping with names as keys, got {_show(kwargs)}",
                              "write `kwargs: {upscale: 4}`")
    if check_files and not (root / file).is_file():
        raise SubmissionError(sid, "model.file", f"{printable(file)} not found under {root}",
                              "point `model.file` at the team's .py file relative to the submissions root (--root)")
    return ModelSpec(file=file, class_name=class_name, args=tuple(args), kwargs=dict(kwargs))


def _parse_checkpoint(sid: str, root: Path, raw: Any, check_files: bool) -> CheckpointSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SubmissionError(sid, "checkpoint", "must be a mapping with at least `path`",
                              "write `checkpoint: {path: model_zoo/teamNN_name.pth}` or omit it for a parameter-free model")
    _check_keys(sid, "checkpoint.", raw, _CHECKPOINT_KEYS)
    path = _string(sid, "checkpoint.path", _require(sid, raw, "path", "checkpoint."),
                   "`path: model_zoo/teamNN_Name.pth`")
    path = _inside_root(sid, "checkpoint.path", path)
    if check_files and not (root / path).is_file():
        raise SubmissionError(sid, "checkpoint.path", f"{printable(path)} not found under {root}",
                              "put the checkpoint there or correct the path (relative to --root)")
    key = raw.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip("|.")):
        raise SubmissionError(sid, "checkpoint.key", f"must be a string such as 'params', got {_show(key)}",
                              "use 'params', 'params_ema', 'params_ema|params', a nested 'a.b', or omit it for a root state dict")
    sha = raw.get("sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(sha)):
        raise SubmissionError(sid, "checkpoint.sha256", "must be 64 hexadecimal characters",
                              "write the output of `sha256sum <checkpoint>` or omit the field")
    return CheckpointSpec(
        path=path,
        key=key or None,
        sha256=None if sha is None else str(sha).lower(),
        strict=_as_bool(sid, "checkpoint.strict", raw.get("strict"), True),
        trusted_pickle=_as_bool(sid, "checkpoint.trusted_pickle", raw.get("trusted_pickle"), False),
    )


def _parse_adapter(sid: str, raw: Any) -> AdapterSpec:
    if raw is None:
        return AdapterSpec()
    if not isinstance(raw, dict):
        raise SubmissionError(sid, "adapter", "must be a mapping",
                              "write `adapter: {pad_to_multiple: 16}` or omit it")
    _check_keys(sid, "adapter.", raw, _ADAPTER_KEYS)
    pad = raw.get("pad_to_multiple")
    pad = None if pad is None else _positive_int(sid, "adapter.pad_to_multiple", pad)
    tile = raw.get("tile")
    if tile is None:
        return AdapterSpec(pad_to_multiple=pad)
    if not isinstance(tile, dict):
        raise SubmissionError(sid, "adapter.tile", "must be a mapping",
                              "write `tile: {size: 256, overlap: 16}`")
    _check_keys(sid, "adapter.tile.", tile, _TILE_KEYS)
    size = _positive_int(sid, "adapter.tile.size", _require(sid, tile, "size", "adapter.tile."))
    overlap = tile.get("overlap", 0)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise SubmissionError(sid, "adapter.tile.overlap", f"must be an integer in [0, size), got {_show(overlap)}",
                              "choose an overlap smaller than the tile size")
    return AdapterSpec(pad_to_multiple=pad, tile_size=size, tile_overlap=overlap)


def _display_name(sid: str, value: Any) -> str:
    """``name``: a printable single line of at most MAX_NAME_CHARS (refused otherwise); absent = the id."""
    if value is None or value == "":
        return sid
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SubmissionError(sid, "name", f"must be a short text, got {_show(value)}",
                              "write the method's name, e.g. `name: RLFN`")
    name = str(value).strip()
    if not name.isprintable():
        bad = next(c for c in name if not c.isprintable())
        raise SubmissionError(sid, "name", f"holds the unprintable character {ascii(bad)[1:-1]} in {_show(name)}",
                              "use plain printable text on one line (no control, format or surrogate characters)")
    if len(name) > MAX_NAME_CHARS:
        raise SubmissionError(sid, "name", f"is {len(name)} characters long, over the {MAX_NAME_CHARS}-character limit "
                                           "for a display name", "shorten it to the method's name")
    return name or sid


def parse_manifest(path: Path, root: Path, check_files: bool = True) -> Submission:
    """Read and validate one manifest; raises :class:`SubmissionError`."""
    path = Path(path)
    root = Path(root).resolve()
    sid, problem = submission_id_for(path)
    if problem:
        raise SubmissionError(sid, "(file)", problem,
                              "rename the file to a short printable id such as team07_Name.yaml")
    raw, data = _read_mapping(path, sid)
    _check_strings(sid, raw)
    _check_keys(sid, "", raw, _TOP_KEYS)

    team_id = _require(sid, raw, "team_id")
    if not isinstance(team_id, str) or not re.fullmatch(r"[0-9]{2}", team_id):
        raise SubmissionError(sid, "team_id", f"must be a quoted two-digit string, got {_show(team_id)}",
                              'write it quoted, e.g. team_id: "07" (unquoted, YAML reads 010 as 8)')
    name = _display_name(sid, raw.get("name"))

    data_range = raw.get("data_range", 1.0)
    if isinstance(data_range, bool) or data_range not in VALID_DATA_RANGES:
        raise SubmissionError(sid, "data_range", f"must be 1.0 or 255.0, got {_show(data_range)}",
                              "declare the input range the network was trained with: 1.0 or 255.0")
    scale = _positive_int(sid, "scale", raw.get("scale", 4))
    if scale not in ALLOWED_SCALES:
        raise SubmissionError(sid, "scale", f"must be one of {', '.join(map(str, ALLOWED_SCALES))}, got {scale}",
                              "declare the factor the network upscales by (NTIRE ESR is x4)")
    requirements = raw.get("requirements") or []
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise SubmissionError(sid, "requirements", "must be a list of pip requirement strings",
                              "write `requirements: [einops, timm==0.9.2]`")
    weights = raw.get("weights") or ""
    if not isinstance(weights, (str, int, float)):
        raise SubmissionError(sid, "weights", f"must be a text, got {_show(weights)}",
                              'write one line such as `weights: "trained on DIV2K, 1000k iterations"`')

    return Submission(
        submission_id=sid,
        team_id=team_id,
        name=name,
        root=root,
        manifest_path=path.resolve(),
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        model=_parse_model(sid, root, _require(sid, raw, "model"), check_files),
        checkpoint=_parse_checkpoint(sid, root, raw.get("checkpoint"), check_files),
        data_range=float(data_range),
        scale=scale,
        adapter=_parse_adapter(sid, raw.get("adapter")),
        requirements=tuple(requirements),
        weights=str(weights),
    )


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
            names = {s.submission_id for s in submissions}
            raise SubmissionError(token, "(selection)", "no such submission",
                                  f"{_did_you_mean(token, names)}; `esr-eval ls` lists them")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen
