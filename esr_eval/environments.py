"""Per-submission environments: a manifest's ``requirements:`` as the Ray ``runtime_env`` of the
submission's actor, checked before anything is installed.

Contract
--------
* :func:`plan` turns a submission's requirements into an :class:`EnvironmentPlan`, or raises
  :class:`~esr_eval.manifest.SubmissionError` (stage ``requirements``) before anything is installed:
  - a requirement on a distribution the evaluator runs on (torch, numpy, esr-eval's own
    dependencies: ``requirements.evaluator_distributions``) is satisfied by the evaluator's when
    the installed version meets it (then it is left out, and the plan notes it), and refused,
    naming the installed version and the fix, when it would replace it;
  - ``torchvision`` / ``torchaudio``, whose releases are built against one torch release, are
    pinned to the release that matches the installed torch when the requirement gives no version
    (``torch 2.M`` -> ``torchvision 0.(M+15)``, ``torchaudio 2.M``) and refused when the version
    given does not match; the pin is recorded;
  - a requirement that is not a valid PEP 508 line is refused with the line.
* :meth:`EnvironmentPlan.runtime_env` is Ray's ``pip`` runtime environment for the packages left
  to install (``None`` when there are none): Ray builds one virtualenv per distinct package list
  and node, cached, layered over the evaluator's environment (its packages stay importable), and
  the submission's sandbox process runs on that virtualenv's interpreter. Building it is part of
  the actor's start-up (``DriverOptions.startup_timeout_s``), never of the submission's timeout.
* :func:`lacking` is what the running interpreter lacks of a submission's requirements: the
  in-process evaluation (``esr-eval evaluate``) does not run such a submission (an ``error`` row at
  stage ``requirements`` says what is missing); ``evaluate_all.py`` installs them per actor.
* :attr:`EnvironmentPlan.sha256` identifies the requirement set (sorted, normalised) on every row;
  :func:`installed_versions` is what the environment actually holds for those packages (read in
  the actor).
Imports neither torch nor Ray.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from esr_eval.manifest import Submission, SubmissionError
from esr_eval.requirements import evaluator_distributions

TORCH_COMPANIONS = ("torchvision", "torchaudio")


@dataclass(frozen=True)
class EnvironmentPlan:
    """What a submission's environment holds beyond the evaluator's."""

    requirements: tuple[str, ...]
    packages: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def sha256(self) -> str | None:
        if not self.requirements:
            return None
        lines = sorted(str(Requirement(line)) for line in self.requirements)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def runtime_env(self) -> dict | None:
        if not self.packages:
            return None
        return {"pip": {"packages": list(self.packages), "pip_check": False}}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _companion_series(name: str, torch_version: str) -> str:
    """The release series of ``name`` built for ``torch_version``: torch 2.M -> torchvision 0.(M+15), torchaudio 2.M."""
    major, minor = (int(part) for part in torch_version.split("+")[0].split(".")[:2])
    return f"0.{minor + 15}" if name == "torchvision" else f"{major}.{minor}"


def plan(sub: Submission) -> EnvironmentPlan:
    """The environment ``sub`` needs (module doc); raises SubmissionError before anything is installed."""
    provided = evaluator_distributions()
    torch_version = _installed("torch")
    packages, notes = [], []
    for line in sub.requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise SubmissionError(sub.submission_id, "requirements", f"{line!r} is not a pip requirement ({exc})",
                                  "write one requirement per entry, e.g. `einops` or `timm==0.9.2`",
                                  stage="requirements") from None
        name = canonicalize_name(requirement.name)
        installed = _installed(name)
        if name in provided:
            if installed is not None and not requirement.specifier.contains(installed, prereleases=True):
                raise SubmissionError(
                    sub.submission_id, "requirements",
                    f"{line!r} would replace {name} {installed}, which the evaluator runs on; nothing was installed",
                    f"remove it from `requirements:` (the evaluator's {name} {installed} is used), or evaluate this "
                    f"submission with an evaluator built on {name}{requirement.specifier}", stage="requirements")
            notes.append(f"{line} is met by the evaluator's {name} {installed}")
            continue
        if name in TORCH_COMPANIONS and torch_version is not None:
            series = _companion_series(name, torch_version)
            if not requirement.specifier:
                packages.append(f"{name}=={series}.*")
                notes.append(f"{name} pinned to {series}.*, the release built for torch {torch_version}")
                continue
            if not any(requirement.specifier.contains(f"{series}.{patch}") for patch in range(20)):
                raise SubmissionError(
                    sub.submission_id, "requirements",
                    f"{line!r} does not match the installed torch {torch_version} (its release is {name}=={series}.*)",
                    f"write `{name}` without a version (the matching release is chosen and recorded)",
                    stage="requirements")
        packages.append(line)
    return EnvironmentPlan(tuple(sub.requirements), tuple(packages), tuple(notes))


def lacking(sub: Submission) -> list[str]:
    """The requirements of ``sub`` this interpreter's environment does not meet (refused ones included)."""
    try:
        packages = plan(sub).packages
    except SubmissionError:
        return list(sub.requirements)
    unmet = []
    for line in packages:
        requirement = Requirement(line)
        installed = _installed(requirement.name)
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(line)
    return unmet


def installed_versions(packages: tuple[str, ...]) -> str | None:
    """``name==version`` for each package as this interpreter sees it, ``;``-joined (None if none)."""
    names = [canonicalize_name(Requirement(line).name) for line in packages]
    return "; ".join(f"{name}=={_installed(name) or 'missing'}" for name in names) or None
