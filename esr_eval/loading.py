"""Submission → ready ``nn.Module``: safe checkpoint loading, strictness, isolation of model files.

Contract
--------
* Checkpoints are untrusted data: they are always read with
  ``torch.load(weights_only=True, map_location="cpu")``. One that needs full unpickling is
  refused unless its manifest says ``trusted_pickle: true``; then the fact is recorded.
* When the manifest gives a ``sha256`` it is verified before the file is parsed.
* Strict loading (the default) reports missing and unexpected keys by name and shape
  mismatches by key; ``strict: false`` tolerates missing/unexpected keys (recorded) but never
  shape mismatches.
* Each model file is imported under its own module name (derived from the submission id and
  the file path), so two files defining a class of the same name never collide.
* A constructor that calls ``.cuda()`` on a machine without CUDA is redirected to the CPU and
  the redirect is recorded.
* Every failure raises :class:`~esr_eval.manifest.SubmissionError` with ``stage`` set to
  ``import``, ``construct`` or ``checkpoint``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import pickle
import re
import sys
import traceback
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from esr_eval.hashing import file_sha256
from esr_eval.manifest import Submission, SubmissionError
from esr_eval.validation import did_you_mean


@dataclass(frozen=True)
class LoadInfo:
    """What loading did, recorded with every result row."""

    checkpoint_sha256: str | None
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    trusted_pickle_used: bool
    cuda_calls_redirected: int


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


def apply_state_dict(sub: Submission, model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load weights with named diagnostics; returns (missing, unexpected) keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    sid = sub.submission_id
    if mismatched:
        raise SubmissionError(sid, "checkpoint", "shape mismatch at " + "; ".join(mismatched[:12]),
                              "the constructor arguments (model.args/kwargs) do not match the checkpoint",
                              stage="checkpoint")
    if sub.strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {_format_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_format_keys(unexpected)}")
        raise SubmissionError(sid, "checkpoint", "strict load failed; " + "; ".join(parts),
                              "fix `checkpoint.key` or the constructor arguments; only if the team's own loader "
                              "uses strict=False, set `checkpoint.strict: false` (recorded in every row)",
                              stage="checkpoint")
    model.load_state_dict(state, strict=False)
    return missing, unexpected


def load_submission(sub: Submission, device: torch.device | str = "cpu") -> LoadedSubmission:
    """Import, construct, load weights, freeze and move the model to ``device``."""
    device = torch.device(device)
    model, redirects = construct_model(sub, device)
    digest, missing, unexpected, full_unpickle = None, [], [], False
    if sub.checkpoint is not None:
        obj, digest, full_unpickle = read_checkpoint(sub)
        missing, unexpected = apply_state_dict(sub, model, extract_state_dict(sub, obj))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.to(device)
    info = LoadInfo(
        checkpoint_sha256=digest,
        missing_keys=tuple(missing),
        unexpected_keys=tuple(unexpected),
        trusted_pickle_used=full_unpickle,
        cuda_calls_redirected=redirects,
    )
    return LoadedSubmission(submission=sub, model=model, info=info)
