"""The recorded esr-eval commit is dirty only for real changes to esr-eval's own tracked files:
not for untracked files, and not for the runs, submissions and data a cluster node lacks by
construction (the templates keep them out of the repository mount)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from esr_eval import provenance
from esr_eval.provenance import git_dirty

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A committed repository laid out like esr-eval's."""
    repo = tmp_path / "esr-eval"
    for name in ("esr_eval/run.py", "results/.gitkeep", "models/team00_RLFN.py", "model_zoo/team00_RLFN.yaml",
                 "cluster/data/.gitignore", "README.md"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(f"{name}\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")
    return repo


def test_a_clean_checkout_is_clean(checkout):
    assert git_dirty(checkout / "esr_eval") is False


def test_what_the_cluster_sync_leaves_out_is_no_change(checkout):
    """A node's copy: results/.gitkeep and cluster/data/ excluded, models/ and model_zoo/ from another checkout."""
    (checkout / "results" / ".gitkeep").unlink()
    shutil.rmtree(checkout / "cluster" / "data")
    (checkout / "models" / "team00_RLFN.py").write_text("another organiser's file\n")
    (checkout / "model_zoo" / "team00_RLFN.yaml").unlink()
    (checkout / "esr_eval" / "notes.txt").write_text("untracked\n")
    assert git_dirty(checkout / "esr_eval") is False


@pytest.mark.parametrize("change", ["edit", "delete"])
def test_a_change_to_a_tracked_source_file_is_dirty(checkout, change):
    source = checkout / "esr_eval" / "run.py"
    source.write_text("changed\n") if change == "edit" else source.unlink()
    assert git_dirty(checkout / "esr_eval") is True
    assert git_dirty(checkout / "results") is True, "found from any folder of the checkout"


def test_a_staged_change_at_the_top_is_dirty(checkout):
    (checkout / "README.md").write_text("changed\n")
    git(checkout, "add", "README.md")
    assert git_dirty(checkout) is True


def test_outside_a_checkout_the_flag_is_unknown(monkeypatch, tmp_path):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_dirty(tmp_path) is None


def test_run_json_records_this_flag(monkeypatch):
    monkeypatch.setattr(provenance, "git_dirty", lambda: "the flag")
    assert provenance.environment()["esr_eval_git_dirty"] == "the flag"
