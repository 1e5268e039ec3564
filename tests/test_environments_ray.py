"""Per-submission environments through Ray: two submissions pinning incompatible versions of one
package (installed from the registry pip is configured for) both run `ok` in one run, each in its
own environment; a requirement that would replace torch is refused before anything is installed;
a CUDA-only submission is `skipped` on a CPU run. Slow: Ray builds a virtualenv per requirement set."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from esr_eval.records import read_verified
from tests.conftest import REPO_ROOT, SubmissionFactory
from tests.support.ray_runs import local_ray

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(1500)]  # two virtualenvs built (Ray clones this one)

PINS = {"team61_TomliOld": "1.0.0", "team62_TomliNew": "1.1.0"}  # tomli-w: pure Python, absent here


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    yield from local_ray(tmp_path_factory.mktemp("ray"), fake_gpus=2)


@pytest.fixture(scope="module")
def environments_run(ray_address, tmp_path_factory):
    factory = SubmissionFactory(tmp_path_factory.mktemp("envs") / "subs")
    for number, (sid, version) in enumerate(PINS.items(), start=61):
        factory.make(sid, team_id=str(number), manifest_extra={"requirements": [f"tomli-w=={version}"]},
                     model_source={"prelude": "import tomli_w\nfrom importlib import metadata\n",
                                   "init_extra": f"assert metadata.version('tomli-w') == {version!r}"})
    factory.make("team63_TorchPin", team_id="63", manifest_extra={"requirements": ["torch==1.13.1"]})
    factory.make("team64_Mamba", team_id="64", model_source={"prelude": "from mamba_ssm import Mamba\n"})
    results = factory.root.parent / "results"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "evaluate_all.py"), "--address", ray_address, "--root", str(factory.root),
         "--manifests", str(factory.manifests), "--results", str(results), "--run-id", "envs", "--device", "cpu",
         "--no-hygiene", "--timing", "official", "--rank", "none", "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200, check=False)
    rows = read_verified(results / "envs", "submissions").set_index("submission_id")
    return completed, rows


def test_conflicting_pins_both_run_in_their_own_environment(environments_run):
    completed, rows = environments_run
    for sid, version in PINS.items():
        row = rows.loc[sid]
        assert row["status"] == "ok", (row["error"], completed.stderr[-2000:])
        assert row["requirements_installed"] == f"tomli-w=={version}"
        assert len(row["requirements_sha256"]) == 64 and row["actor_startup_s"] > 0
    assert rows.loc["team61_TomliOld", "requirements_sha256"] != rows.loc["team62_TomliNew", "requirements_sha256"]
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("tomli-w")  # nothing was installed into the evaluator's own environment


def test_a_requirement_replacing_torch_is_refused_before_install(environments_run):
    _, rows = environments_run
    row = rows.loc["team63_TorchPin"]
    assert (row["status"], row["error_stage"]) == ("error", "requirements")
    assert f"would replace torch {metadata.version('torch')}, which the evaluator runs on" in row["error"]


def test_a_cuda_only_submission_is_skipped_on_a_cpu_run(environments_run):
    completed, rows = environments_run
    row = rows.loc["team64_Mamba"]
    assert (row["status"], row["error_stage"]) == ("skipped", "needs")
    assert "not measured on this hardware: it imports the CUDA-only extension mamba_ssm" in row["error"]
    assert completed.returncode == 1  # the refused submission is an error; the skipped one is not
