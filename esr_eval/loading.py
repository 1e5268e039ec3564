"""Submission → ready ``nn.Module``: safe checkpoint loading, strictness, isolation of model files.

Contract
--------
* Checkpoints are untrusted data: they are always read with
  ``torch.load(weights_only=True, map_location="cpu")``. One that needs full unpickling is
  refused unless its manifest says ``trusted_pickle: true``; then the fact is recorded.
* When the manifest gives a ``sha256`` it is verified before the file is parsed.
* Weights load through the model's own ``load_state_dict(state, strict=...)``, exactly as the
  official code calls it, so a model that overrides it (e.g. to merge its layers before loading)
  loads as it does there. The keys are read from what torch's ``nn.Module.load_state_dict`` finds
  in every call the model makes to it: strict loading (the default) reports missing and
  unexpected keys by name and shape mismatches by key; ``strict: false`` tolerates missing and
  unexpected keys (recorded) but never shape mismatches.
* ``after_load`` calls run in order after the weights load, before ``eval()``; a ``path``
  argument is resolved under the submissions root. What ran is recorded in
  :attr:`LoadInfo.after_load`, a file argument with its sha256.
* Each model file is imported under its own module name (derived from the submission id and
  the file path), so two files defining a class of the same name never collide.
* A constructor or an ``after_load`` call that calls ``.cuda()`` on a machine without CUDA is
  redirected to the CPU and the redirects are counted.
* Every failure raises :class:`~esr_eval.manifest.SubmissionError` with ``stage`` set to
  ``import``, ``construct``, ``checkpoint`` or ``after_load``.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import pickle
import re
import sys
import traceback
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from esr_eval.hashing import file_sha256
from esr_eval.manifest import AfterLoadCall, Submission, SubmissionError
from esr_eval.validation import did_you_mean


@dataclass(frozen=True)
class LoadInfo:
    """What loading did, recorded with every result row."""

    checkpoint_sha256: str | None
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    trusted_pickle_used: bool
    cuda_calls_redirected: int  # by the constructor and the after_load calls
    after_load: tuple[str, ...] = ()  # the after_load calls run, as Python source, in order


@dataclass(frozen=True)
class LoadedSubmission:
    submission: Submission
    model: nn.Module
    info: LoadInfo


def module_name_for(sub: Submission) -> str:
    """A module name unique to this submission's model file."""
    path_tag = hashlib.sha256(str(sub.model_path).encode()).hexdigest()[:10]
    safe_id = re.sub(r"\W", "_", sub.submission_id)
    return f"esr_submission_{safe_id}_{path_tag}"


def import_model_module(sub: Submission):
    """Import the submission's model file under its own module name (cached per process)."""
    name = module_name_for(sub)
    if name in sys.modules:
        return sys.modules[name]
    path = sub.model_path
    if not path.is_file():
        raise SubmissionError(sub.submission_id, "model.file", f"{path} does not exist",
                              "correct `model.file` (relative to --root)", stage="import")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    root = str(sub.root)
    added_root = root not in sys.path
    if added_root:
        sys.path.insert(0, root)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as exc:
        del sys.modules[name]
        raise SubmissionError(
            sub.submission_id, "model.file", f"importing {path.name} failed: {exc}",
            f"install '{exc.name}' (and list it under `requirements:` in the manifest)",
            stage="import") from exc
    except BaseException as exc:  # a model file may raise anything, even SystemExit
        del sys.modules[name]
        raise SubmissionError(
            sub.submission_id, "model.file",
            f"importing {path.name} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}",
            "fix the model file so that it imports on its own", stage="import") from exc
    finally:
        if added_root:
            sys.path.remove(root)
    return module


@contextlib.contextmanager
def cuda_redirected(counter: list[int]) -> Iterator[None]:
    """Make ``Module.cuda()`` / ``Tensor.cuda()`` no-ops on the CPU while constructing a model."""
    module_cuda, tensor_cuda = nn.Module.cuda, torch.Tensor.cuda

    def module_to_cpu(self, device=None):
        counter[0] += 1
        return self

    def tensor_to_cpu(self, device=None, non_blocking=False, **kwargs):
        counter[0] += 1
        return self

    nn.Module.cuda, torch.Tensor.cuda = module_to_cpu, tensor_to_cpu
    try:
        yield
    finally:
        nn.Module.cuda, torch.Tensor.cuda = module_cuda, tensor_cuda


def construct_model(sub: Submission, device: torch.device) -> tuple[nn.Module, int]:
    """Build the architecture with the manifest's args; returns (model, cuda redirects)."""
    module = import_model_module(sub)
    cls = getattr(module, sub.model.class_name, None)
    if cls is None:
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)]
        raise SubmissionError(sub.submission_id, "model.class",
                              f"{sub.model.file} has no class '{sub.model.class_name}'",
                              f"use one of its classes ({did_you_mean(sub.model.class_name, classes)})",
                              stage="import")
    redirects = [0]
    guard = cuda_redirected(redirects) if device.type != "cuda" else contextlib.nullcontext()
    try:
        with guard:
            model = cls(*sub.model.args, **dict(sub.model.kwargs))
    except Exception as exc:
        raise SubmissionError(sub.submission_id, "model.args/kwargs",
                              f"{sub.model.class_name}(...) raised {type(exc).__name__}: {exc}",
                              "give the constructor arguments the team's code expects", stage="construct") from exc
    if not isinstance(model, nn.Module):
        raise SubmissionError(sub.submission_id, "model.class", f"{sub.model.class_name} is not an nn.Module",
                              "point `model.class` at the network class", stage="construct")
    return model, redirects[0]


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The line of torch's refusal that names what the file wanted to run (e.g. 'Unsupported global: …')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported global" in line or "WeightsUnpickler" in line]
    return (named or lines or ["weights_only load failed"])[0]


def read_checkpoint(sub: Submission) -> tuple[Any, str, bool]:
    """Verify and safely unpickle the checkpoint; returns (object, sha256, full_unpickle_used)."""
    spec, path = sub.checkpoint, sub.checkpoint_path
    sid = sub.submission_id
    if not path.is_file():
        raise SubmissionError(sid, "checkpoint.path", f"{path} does not exist",
                              "put the checkpoint there or correct `checkpoint.path`", stage="checkpoint")
    digest = file_sha256(path)
    if spec.sha256 and digest != spec.sha256:
        raise SubmissionError(sid, "checkpoint.sha256", f"file hash {digest} differs from the declared {spec.sha256}",
                              "the checkpoint changed: get the file the team submitted, or update the hash after review",
                              stage="checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), digest, False
    except pickle.UnpicklingError as exc:
        if not spec.trusted_pickle:
            raise SubmissionError(
                sid, "checkpoint.trusted_pickle",
                f"{path.name} needs full unpickling, which could run arbitrary code; refused "
                f"({_unpickler_reason(exc)})",
                "ask the team for a plain state dict (torch.save(model.state_dict(), path)), or, after reviewing "
                "the file, set `checkpoint.trusted_pickle: true` (recorded in every result row)",
                stage="checkpoint") from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise SubmissionError(sid, "checkpoint.path",
                              f"{path.name} cannot be read ({type(exc).__name__}: {first_line}); "
                              "it looks truncated or corrupt",
                              "re-download or re-save the checkpoint and check its sha256", stage="checkpoint") from exc
    return torch.load(path, map_location="cpu", weights_only=False), digest, True


def extract_state_dict(sub: Submission, obj: Any) -> Mapping[str, torch.Tensor]:
    """Follow the manifest's key path (alternatives separated by '|', nesting by '.')."""
    spec = sub.checkpoint
    for alternative in spec.key_alternatives():
        node = obj
        for part in alternative:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            if isinstance(node, Mapping) and node and all(isinstance(v, torch.Tensor) for v in node.values()):
                return node
    top = list(obj.keys())[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise SubmissionError(sub.submission_id, "checkpoint.key",
                          f"no state dict at key {spec.key or '(root)'}; the checkpoint's top level holds {top}",
                          "set `checkpoint.key` to the entry that holds the tensors, e.g. 'params', "
                          "'params_ema|params' or a nested 'state.model'", stage="checkpoint")


def _format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


_STRICT_FIX = ("fix `checkpoint.key` or the constructor arguments; only if the team's own loader uses "
               "strict=False, set `checkpoint.strict: false` (recorded in every row)")


@dataclass
class _Keys:
    """What torch's ``nn.Module.load_state_dict`` found in the calls a model made to it."""

    calls: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    refused: tuple[list[str], list[str]] | None = None  # the keys of the last strict call that failed
    mismatched: list[str] = field(default_factory=list)


def _strict_message(module: nn.Module, missing: list[str], unexpected: list[str]) -> str:
    """torch's own wording of a failed strict load."""
    parts = [f"{kind} key(s) in state_dict: " + ", ".join(f'"{k}"' for k in keys) + ". "
             for kind, keys in (("Missing", missing), ("Unexpected", unexpected)) if keys]
    return f"Error(s) in loading state_dict for {type(module).__name__}:\n\t" + "\n\t".join(parts)


def _shape_mismatches(module: nn.Module, state: Mapping[str, Any], prefix: str) -> list[str]:
    expected = module.state_dict()
    return [f"{prefix}{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
            for k, v in state.items()
            if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape]


@contextlib.contextmanager
def _keys_recorded(model: nn.Module) -> Iterator[_Keys]:
    """Every call of torch's ``nn.Module.load_state_dict`` (the model's own, an override's
    ``super()`` call, a submodule's) runs torch's code with ``strict=False`` and records the keys it
    reports (named from ``model``); a strict call with missing or unexpected keys then fails as
    torch fails it (RuntimeError, torch's wording), so team code that catches it behaves the same."""
    original = nn.Module.load_state_dict
    keys = _Keys()

    def recording(module, state_dict, strict=True, assign=False):
        keys.calls += 1
        prefix = next((f"{name}." for name, m in model.named_modules() if m is module and name), "")
        try:
            result = original(module, state_dict, strict=False, assign=assign)
        except RuntimeError:
            keys.mismatched += _shape_mismatches(module, state_dict, prefix)
            raise
        missing = [prefix + k for k in result.missing_keys]
        unexpected = [prefix + k for k in result.unexpected_keys]
        if strict and (missing or unexpected):
            keys.refused = (missing, unexpected)
            raise RuntimeError(_strict_message(module, result.missing_keys, result.unexpected_keys))
        keys.missing += missing
        keys.unexpected += unexpected
        return result

    nn.Module.load_state_dict = recording
    try:
        yield keys
    finally:
        nn.Module.load_state_dict = original


def apply_state_dict(sub: Submission, model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """``model.load_state_dict(state, strict=...)``, the model's own, as the official code calls it;
    returns the (missing, unexpected) keys it let through, or raises naming them."""
    sid = sub.submission_id
    failure: Exception | None = None
    with _keys_recorded(model) as keys:
        try:
            result = model.load_state_dict(state, strict=sub.strict)
        except Exception as exc:  # the model's own loader may raise anything
            failure = exc
    if failure is None:
        if keys.calls == 0 and hasattr(result, "missing_keys") and hasattr(result, "unexpected_keys"):
            return list(map(str, result.missing_keys)), list(map(str, result.unexpected_keys))
        return keys.missing, keys.unexpected
    if keys.mismatched:
        raise SubmissionError(sid, "checkpoint", "shape mismatch at " + "; ".join(keys.mismatched[:12]),
                              "the constructor arguments (model.args/kwargs) do not match the checkpoint",
                              stage="checkpoint") from failure
    if keys.refused is not None:
        missing, unexpected = keys.refused
        parts = ([f"missing keys: {_format_keys(missing)}"] if missing else []) + (
            [f"unexpected keys: {_format_keys(unexpected)}"] if unexpected else [])
        raise SubmissionError(sid, "checkpoint", "strict load failed; " + "; ".join(parts), _STRICT_FIX,
                              stage="checkpoint") from failure
    first_line = (str(failure).splitlines() or [""])[0]
    raise SubmissionError(sid, "checkpoint",
                          f"{type(model).__name__}.load_state_dict raised {type(failure).__name__}: {first_line}",
                          "fix `checkpoint.key` or the constructor arguments so that the model's own "
                          "load_state_dict accepts the checkpoint", stage="checkpoint") from failure


def _own_methods(model: nn.Module) -> list[str]:
    """Public methods the team's classes add to nn.Module's."""
    cls = type(model)
    return sorted(n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n, None))
                  and not hasattr(nn.Module, n))


def _missing_method(sub: Submission, model: nn.Module, index: int, call: AfterLoadCall) -> SubmissionError:
    own = _own_methods(model)
    close = difflib.get_close_matches(call.method, own, n=1)
    problem = (f"no module of {type(model).__name__} has a method '{call.method}'" if call.each_module
               else f"{type(model).__name__} has no method '{call.method}'")
    hint = f"did you mean '{close[0]}'? " if close else ""
    return SubmissionError(sub.submission_id, f"after_load[{index}]", problem,
                           f"{hint}name a method the team's code defines ({', '.join(own) or 'none'})",
                           stage="after_load")


def run_after_load(sub: Submission, model: nn.Module, device: torch.device) -> tuple[tuple[str, ...], int]:
    """Run the manifest's ``after_load`` calls in order; returns (the calls run, ``.cuda()`` redirects)."""
    ran: list[str] = []
    redirects = [0]
    guard = cuda_redirected(redirects) if device.type != "cuda" else contextlib.nullcontext()
    with guard:
        for index, call in enumerate(sub.after_load):
            path = None if call.path is None else (sub.root / call.path).resolve()
            args = ((str(path),) if path is not None else ()) + tuple(call.args)
            if call.each_module:
                targets = (m for m in model.modules() if hasattr(m, call.method))
            elif callable(getattr(model, call.method, None)):
                targets = iter([model])
            else:
                raise _missing_method(sub, model, index, call)
            done = f" [file sha256 {file_sha256(path)}]" if path is not None else ""
            count = 0
            try:
                for module in targets:
                    getattr(module, call.method)(*args, **dict(call.kwargs))
                    count += 1
            except Exception as exc:  # the team's method may raise anything
                raise SubmissionError(sub.submission_id, f"after_load[{index}]",
                                      f"{call.describe()} raised {type(exc).__name__}: {exc}",
                                      "make the entry match the method's signature in the team's code, or fix "
                                      "the method", stage="after_load") from exc
            if call.each_module and count == 0:
                raise _missing_method(sub, model, index, call)
            ran.append(call.describe() + (f" [{count} modules]" if call.each_module else "") + done)
    return tuple(ran), redirects[0]


def load_submission(sub: Submission, device: torch.device | str = "cpu") -> LoadedSubmission:
    """Import, construct, load weights, run the after_load calls, freeze and move to ``device``."""
    device = torch.device(device)
    model, redirects = construct_model(sub, device)
    digest, missing, unexpected, full_unpickle = None, [], [], False
    if sub.checkpoint is not None:
        obj, digest, full_unpickle = read_checkpoint(sub)
        missing, unexpected = apply_state_dict(sub, model, extract_state_dict(sub, obj))
    after_load, after_load_redirects = run_after_load(sub, model, device)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.to(device)
    info = LoadInfo(
        checkpoint_sha256=digest,
        missing_keys=tuple(missing),
        unexpected_keys=tuple(unexpected),
        trusted_pickle_used=full_unpickle,
        cuda_calls_redirected=redirects + after_load_redirects,
        after_load=after_load,
    )
    return LoadedSubmission(submission=sub, model=model, info=info)
