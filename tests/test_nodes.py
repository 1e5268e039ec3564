"""The cluster as the driver sees it: which instance to join (never a silent attachment), the
GPUs a launcher config declares, a GPU wait that refuses instead of falling back to CPUs, and on
a cluster head the exact `ray rsync-down` of the run."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from esr_eval import nodes
from esr_eval.nodes import GpuWaitError, choose_address, declared_gpus, wait_for_gpus
from tests.conftest import REPO_ROOT


def test_no_address_starts_a_private_instance_even_if_one_runs_here(tmp_path):
    chosen = choose_address(None, environ={}, bootstrap=tmp_path / "absent.yaml")
    assert chosen.address == "local" and "private local instance" in chosen.source


def test_explicit_address_then_ray_address_then_cluster_head(tmp_path):
    head = tmp_path / "ray_bootstrap_config.yaml"
    head.write_text("cluster_name: x\n")
    assert choose_address("10.0.0.1:6379", {"RAY_ADDRESS": "auto"}, head).source == "--address"
    from_env = choose_address(None, {"RAY_ADDRESS": "127.0.0.1:6379"}, head)
    assert (from_env.address, from_env.source) == ("127.0.0.1:6379", "RAY_ADDRESS")
    on_head = choose_address(None, {}, head)
    assert on_head.address == "auto" and "ray up" in on_head.source


@pytest.mark.parametrize("template, gpus", [("ray_config.yaml", 8), ("cluster/onprem.yaml", None)])
def test_declared_gpus_of_the_shipped_templates(template, gpus):
    """AWS: 8 single-GPU workers. On-prem: Ray detects each host's GPUs, so nothing is declared
    (the driver then needs one GPU, or --min-gpus)."""
    assert declared_gpus(yaml.safe_load((REPO_ROOT / template).read_text())) == gpus


def test_declared_gpus_counts_min_workers_and_a_gpu_head():
    config = {"head_node_type": "head",
              "available_node_types": {"head": {"resources": {"GPU": 1}},
                                       "a": {"min_workers": 3, "resources": {"GPU": 2}},
                                       "cpu": {"min_workers": 4, "resources": {"CPU": 8}}}}
    assert declared_gpus(config) == 7
    assert declared_gpus({"available_node_types": {"cpu": {"min_workers": 2, "resources": {"CPU": 4}}}}) is None


def test_gpu_wait_reports_progress_then_refuses_with_the_fix(monkeypatch):
    counts = iter([0, 1, 1, 1, 1, 1, 1, 1])
    monkeypatch.setattr(nodes, "gpu_count", lambda model=None: next(counts))
    lines = []
    with pytest.raises(GpuWaitError) as refused:
        wait_for_gpus(2, wait_s=0.05, report=lines.append, poll_s=0.01)
    assert "has 1 of the 2 GPUs" in str(refused.value)
    assert "--wait-for-gpus" in str(refused.value) and "--device cpu" in str(refused.value)
    assert lines and lines[0].startswith("waiting for GPUs: 0/2")


def test_gpu_wait_returns_once_the_workers_join(monkeypatch):
    counts = iter([0, 0, 4])
    monkeypatch.setattr(nodes, "gpu_count", lambda model=None: next(counts))
    assert wait_for_gpus(4, wait_s=60, report=lambda line: None, poll_s=0.001) == 4


def test_bootstrap_path_is_the_cluster_launchers(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert nodes.bootstrap_config_path() == Path(tmp_path) / "ray_bootstrap_config.yaml"
    assert nodes.declared_gpus_here() is None
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(
        {"available_node_types": {"w": {"min_workers": 2, "resources": {"GPU": 1}}}}))
    assert nodes.declared_gpus_here() == 2


@pytest.mark.parametrize("provider, template, fate", [("aws", "ray_config.yaml", "deletes it with the nodes"),
                                                      ("local", "cluster/onprem.yaml", "keeps the files")])
def test_a_cluster_head_ends_with_the_exact_rsync_down_of_the_run(monkeypatch, tmp_path, provider, template, fate):
    """The command is what Ray's CLI parses as (config, the head's absolute run folder/, results/<run>/)."""
    from ray.scripts import scripts

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump({"provider": {"type": provider}}))
    monkeypatch.chdir(tmp_path)
    warning, command = nodes.rsync_down_lines(Path("results") / "run 7")
    assert "`ray down`" in warning and fate in warning
    words = shlex.split(command)
    assert words[:2] == ["ray", "rsync-down"]
    params = scripts.rsync_down.make_context("rsync-down", words[2:]).params
    assert (params["cluster_config_file"], params["source"], params["target"]) == (
        template, f"{tmp_path}/results/run 7/", "results/run 7/")


def test_no_rsync_down_line_off_a_cluster_head(tmp_path):
    assert nodes.rsync_down_lines(tmp_path / "results" / "r1", bootstrap=tmp_path / "absent.yaml") == []
