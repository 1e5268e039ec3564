"""esr_eval.environments: a submission's requirements as its actor's Ray environment, refused
before anything is installed when they would replace what the evaluator runs on."""

from __future__ import annotations

from importlib import metadata

import pytest

from esr_eval.environments import installed_versions, lacking, plan
from esr_eval.manifest import SubmissionError, parse_manifest

TORCH = metadata.version("torch")
TORCH_MINOR = int(TORCH.split(".")[1])


def _sub(factory, requirements):
    return parse_manifest(factory.make(manifest_extra={"requirements": requirements}), factory.root)


def test_no_requirements_no_environment(factory):
    environment = plan(_sub(factory, []))
    assert environment.runtime_env() is None and environment.sha256 is None


def test_packages_become_a_pip_runtime_env_with_a_stable_hash(factory):
    first = plan(_sub(factory, ["einops", "timm==0.9.2"]))
    assert first.runtime_env() == {"pip": {"packages": ["einops", "timm==0.9.2"], "pip_check": False}}
    reordered = plan(_sub(factory, ["timm == 0.9.2", "einops"]))
    assert reordered.sha256 == first.sha256 and len(first.sha256) == 64
    assert plan(_sub(factory, ["einops", "timm==0.9.3"])).sha256 != first.sha256


def test_a_requirement_that_would_replace_torch_is_refused_naming_the_installed_version(factory):
    with pytest.raises(SubmissionError) as info:
        plan(_sub(factory, ["einops", "torch==1.13.1"]))
    error = info.value
    assert (error.stage, error.field_name) == ("requirements", "requirements")
    assert f"'torch==1.13.1' would replace torch {TORCH}, which the evaluator runs on; nothing was installed" in str(error)
    assert f"the evaluator's torch {TORCH} is used" in error.fix


def test_a_requirement_the_evaluator_already_meets_is_left_out_and_noted(factory):
    environment = plan(_sub(factory, ["numpy>=1.0", "einops"]))
    assert environment.packages == ("einops",)
    assert environment.notes == (f"numpy>=1.0 is met by the evaluator's numpy {metadata.version('numpy')}",)


def test_torchvision_is_pinned_to_the_release_built_for_the_installed_torch(factory):
    series = f"0.{TORCH_MINOR + 15}"
    environment = plan(_sub(factory, ["torchvision"]))
    assert environment.packages == (f"torchvision=={series}.*",)
    assert f"the release built for torch {TORCH}" in environment.notes[0]
    assert plan(_sub(factory, [f"torchvision>={series}.0"])).packages == (f"torchvision>={series}.0",)
    with pytest.raises(SubmissionError, match=rf"does not match the installed torch .*torchvision=={series}\.\*"):
        plan(_sub(factory, ["torchvision==0.10.0"]))


def test_an_invalid_line_is_refused(factory):
    with pytest.raises(SubmissionError, match=r"'einops\?\?' is not a pip requirement"):
        plan(_sub(factory, ["einops??"]))


def test_lacking_and_installed_versions_read_this_environment(factory):
    sub = _sub(factory, ["pyyaml>=5", "esr-eval-fixture-absent-pkg", "torch==1.13.1"])
    assert lacking(sub) == list(sub.requirements)  # refused: every line is reported
    sub = _sub(factory, ["pyyaml>=5", "esr-eval-fixture-absent-pkg"])
    assert lacking(sub) == ["esr-eval-fixture-absent-pkg"]
    assert installed_versions(("pyyaml>=5", "esr-eval-fixture-absent-pkg")) == (
        f"pyyaml=={metadata.version('pyyaml')}; esr-eval-fixture-absent-pkg==missing")
