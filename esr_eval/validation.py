"""One formatter for the validation errors of esr-eval's data files (manifests, ranking rules).

Contract
--------
* The files are pydantic v2 models built on :class:`Strict` (unknown keys forbidden, frozen, no
  type coercion). A field states its meaning and fix once, with :func:`about`;
  the same metadata (with ``description``) lands in the generated JSON Schemas for editors.
* A validator that needs its own wording raises :func:`invalid` (problem text plus fix).
* :func:`problems` turns a ``ValidationError`` into every :class:`Problem` of the document at
  once: the field as a dotted path (``model.file``, ``requirements[0]``), the problem in words
  (an unknown key gets "did you mean" over the keys allowed at that place) and the fix.
* Values quoted in messages go through :func:`show`: escaped and clipped, so messages stay short
  and printable whatever a hostile file holds. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

SHOWN_CHARS = 60  # a value quoted in an error message, escaped, at most this long
# pydantic's error types in the words of our messages ("must be ..., got <value>")
_WORDING = {
    "bool_type": "must be true or false", "string_type": "must be a text", "int_type": "must be a whole number",
    "float_type": "must be a number", "list_type": "must be a list", "tuple_type": "must be a list",
    "dict_type": "must be a mapping", "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
    "string_pattern_mismatch": "is not of the accepted form",
}


class Strict(BaseModel):
    """Base of every data-file model: unknown keys forbidden, frozen, no coercion between types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (dotted field path), what, and how to fix it."""

    field: str
    problem: str
    fix: str


def about(description: str, fix: str, **kwargs: Any) -> Any:
    """A model field stating its meaning (for the JSON Schema) and its fix (for error messages)."""
    return Field(description=description, json_schema_extra={"fix": fix}, **kwargs)


def printable(text: str, limit: int | None = SHOWN_CHARS) -> str:
    """``text`` with unprintable characters (controls, surrogates, line separators, …) escaped as
    ``\\xNN``/``\\uNNNN`` and clipped to ``limit`` characters with '…' (``None``: not clipped):
    safe to print and to store."""
    head = text if limit is None else text[: limit + 1]
    escaped = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in head)
    return escaped if limit is None or len(escaped) <= limit else escaped[: limit - 1] + "…"


def show(value: Any) -> str:
    """A value as quoted in a message: its repr, escaped and clipped."""
    return printable(repr(value))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'did you mean 'x'?' for the closest choice, else the list of choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(choices)}"


def invalid(problem: str, fix: str) -> PydanticCustomError:
    """The error a validator raises: ``problem`` in words (no braces needed) and its ``fix``."""
    return PydanticCustomError("invalid", "{problem}", {"problem": problem, "fix": fix})


def field_path(loc: tuple) -> str:
    """('model', 'file') -> 'model.file'; ('requirements', 0) -> 'requirements[0]'."""
    path = ""
    for part in (p for p in loc if p != "[key]"):  # pydantic's marker for a mapping's key
        path += f"[{part}]" if isinstance(part, int) else (("." if path else "") + printable(str(part), 40))
    return path or "(file)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation may hold (through Optional, unions, lists, tuples and dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict:
        args = args[1:]
    if origin in (typing.Union, types.UnionType, list, tuple, dict, typing.Annotated):
        return [model for arg in args for model in _models_in(arg)]
    return []


def _lookup(root: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, Any]:
    """(the model that holds the last named key of ``loc``, that key's FieldInfo or None)."""
    model, info = root, None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        info = fields.get(str(part))
        if info is None:  # a dict key, or a union member's tag: stay on this model
            continue
        inner = _models_in(info.annotation)
        holder = model
        model = inner[0] if inner else None
        if model is None:
            return holder, info
    return model, info


def _allowed_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    model, _ = _lookup(root, loc)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _fix_of(root: type[BaseModel], loc: tuple) -> str:
    _, info = _lookup(root, loc)
    extra = (info.json_schema_extra if info is not None else None) or {}
    return extra.get("fix", "") if isinstance(extra, dict) else ""


def problems(error: ValidationError, root: type[BaseModel], default_fix: str) -> list[Problem]:
    """Every problem of one document, in the order pydantic found them."""
    found = []
    for item in error.errors(include_url=False):
        loc, kind, ctx = tuple(item["loc"]), item["type"], item.get("ctx") or {}
        if kind == "extra_forbidden":
            key = str(loc[-1])
            found.append(Problem(field_path(loc), "unknown key",
                                 f"remove it or rename it ({did_you_mean(key, _allowed_keys(root, loc[:-1]))})"))
            continue
        if kind == "missing":
            name = str(loc[-1])
            found.append(Problem(field_path(loc), "missing",
                                 f"add `{name}:` ({_fix_of(root, loc) or default_fix})"))
            continue
        if kind == "invalid":
            problem, fix = ctx["problem"], ctx["fix"]
        else:
            wording = _WORDING.get(kind) or item["msg"][0].lower() + item["msg"][1:]
            problem = f"{wording}, got {show(item.get('input'))}"
            fix = _fix_of(root, loc) or default_fix
        found.append(Problem(field_path(loc), problem, fix))
    return found
