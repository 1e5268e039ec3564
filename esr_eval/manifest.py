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

The format is documented in the README ("Submission manifests").
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".toml")
VALID_DATA_RANGES = (1.0, 255.0)

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
            raise SubmissionError(sid, f"{where}{key}", "unknown key",
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
        raise SubmissionError(sid, name, f"must be true or false, got {value!r}",
                              f"write `{name.rsplit('.', 1)[-1]}: true` or `false`")
    return value


def _positive_int(sid: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SubmissionError(sid, name, f"must be a positive integer, got {value!r}",
                              "give a whole number such as 16")
    return value


def _read_mapping(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SubmissionError(path.stem, "(file)", f"not valid {path.suffix[1:].upper()}: {exc}",
                              f"fix the syntax of {path}") from exc
    if not isinstance(data, dict):
        raise SubmissionError(path.stem, "(file)", "the manifest is not a mapping of keys",
                              "start from a shipped manifest in model_zoo/")
    return data


def _inside_root(sid: str, field_name: str, relative: str) -> str:
    """Manifest paths stay under the submissions root: no absolute paths, no '..' out of it."""
    normal = os.path.normpath(relative)
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep):
        raise SubmissionError(sid, field_name, f"{relative} points outside the submissions root",
                              "give a path relative to --root without '..' (manifests are untrusted input)")
    return relative


def _parse_model(sid: str, root: Path, raw: Any, check_files: bool) -> ModelSpec:
    if not isinstance(raw, dict):
        raise SubmissionError(sid, "model", "must be a mapping with `file` and `class`",
                              "write `model: {file: models/teamNN_Name.py, class: ClassName}`")
    _check_keys(sid, "model.", raw, _MODEL_KEYS)
    file = _inside_root(sid, "model.file", str(_require(sid, raw, "file", "model.")))
    class_name = str(_require(sid, raw, "class", "model."))
    args = raw.get("args") or []
    kwargs = raw.get("kwargs") or {}
    if not isinstance(args, list):
        raise SubmissionError(sid, "model.args", f"must be a list, got {type(args).__name__}",
                              "write `args: [48, 4]`")
    if not isinstance(kwargs, dict):
        raise SubmissionError(sid, "model.kwargs", f"must be a mapping, got {type(kwargs).__name__}",
                              "write `kwargs: {upscale: 4}`")
    if check_files and not (root / file).is_file():
        raise SubmissionError(sid, "model.file", f"{file} not found under {root}",
                              "point `model.file` at the team's .py file relative to the submissions root (--root)")
    return ModelSpec(file=file, class_name=class_name, args=tuple(args), kwargs=dict(kwargs))


def _parse_checkpoint(sid: str, root: Path, raw: Any, check_files: bool) -> CheckpointSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SubmissionError(sid, "checkpoint", "must be a mapping with at least `path`",
                              "write `checkpoint: {path: model_zoo/teamNN_name.pth}` or omit it for a parameter-free model")
    _check_keys(sid, "checkpoint.", raw, _CHECKPOINT_KEYS)
    path = _inside_root(sid, "checkpoint.path", str(_require(sid, raw, "path", "checkpoint.")))
    if check_files and not (root / path).is_file():
        raise SubmissionError(sid, "checkpoint.path", f"{path} not found under {root}",
                              "put the checkpoint there or correct the path (relative to --root)")
    key = raw.get("key")
    if key is not None and (not isinstance(key, str) or not key.strip("|.")):
        raise SubmissionError(sid, "checkpoint.key", f"must be a string such as 'params', got {key!r}",
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
        raise SubmissionError(sid, "adapter.tile.overlap", f"must be an integer in [0, size), got {overlap!r}",
                              "choose an overlap smaller than the tile size")
    return AdapterSpec(pad_to_multiple=pad, tile_size=size, tile_overlap=overlap)


def parse_manifest(path: Path, root: Path, check_files: bool = True) -> Submission:
    """Read and validate one manifest; raises :class:`SubmissionError`."""
    path = Path(path)
    root = Path(root).resolve()
    sid = path.stem
    raw = _read_mapping(path)
    _check_keys(sid, "", raw, _TOP_KEYS)

    team_id = _require(sid, raw, "team_id")
    if not isinstance(team_id, str) or not re.fullmatch(r"\d{2}", team_id):
        raise SubmissionError(sid, "team_id", f"must be a quoted two-digit string, got {team_id!r}",
                              'write it quoted, e.g. team_id: "07" (unquoted, YAML reads 010 as 8)')
    name = str(raw.get("name") or sid)

    data_range = raw.get("data_range", 1.0)
    if isinstance(data_range, bool) or data_range not in VALID_DATA_RANGES:
        raise SubmissionError(sid, "data_range", f"must be 1.0 or 255.0, got {data_range!r}",
                              "declare the input range the network was trained with: 1.0 or 255.0")
    scale = _positive_int(sid, "scale", raw.get("scale", 4))
    requirements = raw.get("requirements") or []
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise SubmissionError(sid, "requirements", "must be a list of pip requirement strings",
                              "write `requirements: [einops, timm==0.9.2]`")

    return Submission(
        submission_id=sid,
        team_id=team_id,
        name=name,
        root=root,
        manifest_path=path.resolve(),
        manifest_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        model=_parse_model(sid, root, _require(sid, raw, "model"), check_files),
        checkpoint=_parse_checkpoint(sid, root, raw.get("checkpoint"), check_files),
        data_range=float(data_range),
        scale=scale,
        adapter=_parse_adapter(sid, raw.get("adapter")),
        requirements=tuple(requirements),
        weights=str(raw.get("weights") or ""),
    )


def manifest_paths(manifests_dir: Path) -> list[Path]:
    """All manifest files under a folder, recursively, in a stable order."""
    manifests_dir = Path(manifests_dir)
    if not manifests_dir.is_dir():
        raise FileNotFoundError(f"manifest folder {manifests_dir} does not exist; "
                                "pass --manifests DIR (default: <root>/model_zoo)")
    return sorted(p for p in manifests_dir.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file())


def discover_all(manifests_dir: Path, root: Path, check_files: bool = True
                 ) -> tuple[list[Submission], list[SubmissionError]]:
    """Parse every manifest; invalid ones come back as errors instead of stopping the others."""
    submissions, errors = [], []
    for path in manifest_paths(manifests_dir):
        try:
            submissions.append(parse_manifest(path, root, check_files))
        except SubmissionError as exc:
            errors.append(exc)
    return _unique(submissions), errors


def discover(manifests_dir: Path, root: Path, check_files: bool = True) -> list[Submission]:
    """Parse every manifest under ``manifests_dir``; the first invalid one raises."""
    return _unique([parse_manifest(p, root, check_files) for p in manifest_paths(manifests_dir)])


def _unique(submissions: list[Submission]) -> list[Submission]:
    """Submission ids must be unique across the manifests folder."""
    seen: dict[str, Path] = {}
    for sub in submissions:
        if sub.submission_id in seen:
            raise SubmissionError(sub.submission_id, "(file)",
                                  f"two manifests share this id: {seen[sub.submission_id]} and {sub.manifest_path}",
                                  "rename one of the files; the file stem is the submission id")
        seen[sub.submission_id] = sub.manifest_path
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
