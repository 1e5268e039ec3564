"""Several simulated nodes (ray.cluster_utils.Cluster, one raylet process per node): node loss is
retried elsewhere — a node removed, and a node whose raylet is SIGKILLed — and GPU homogeneity."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pandas as pd
import pytest

from esr_eval.data import embedded_split
from esr_eval.driver import DriverOptions, HomogeneityError, SubmissionActor, run_distributed
from esr_eval.evaluate import EvaluationConfig
from esr_eval.manifest import discover_all
from esr_eval.nodes import apply_ray_env
from esr_eval.run import RunFolder, new_run_id
from esr_eval.timing import OFFICIAL
from tests.support.faults import slow_submissions
from tests.support.ray_runs import logging_actor, run_driver

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.ray

CONFIG = EvaluationConfig(protocol=OFFICIAL, device="cpu", hygiene=False, complexity_input_shape=(1, 3, 16, 16))
UP = "self.shuffle(self.tail(self.head(x)))"
GPU_NODE = {"num_cpus": 1, "num_gpus": 1, "resources": {"accelerator_type:A10G": 1}}
# A dead raylet is declared dead after ~3 missed health checks of 1 s (Ray's default is ~15 s+).
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                 "health_check_timeout_ms": 1000, "health_check_initial_delay_ms": 1000}


@pytest.fixture(scope="module")
def cluster():
    apply_ray_env()
    if ray.is_initialized():
        ray.shutdown()
    sim = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                                      "_system_config": HEALTH_CHECKS})
    nodes = [sim.add_node(**GPU_NODE) for _ in range(3)]
    ray.init(address=sim.address, log_to_driver=False)
    sim.wait_for_nodes()
    yield sim, nodes
    ray.shutdown()
    sim.shutdown()


def _run(factory, tmp_path, **options):
    summary, subs, _ = run_driver(factory, tmp_path, CONFIG, **options)
    return summary, subs


def test_mixed_gpu_models_are_refused_unless_allowed_or_pinned(cluster, factory, tmp_path):
    sim, _ = cluster
    other = sim.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:T4": 1})
    sim.wait_for_nodes()
    try:
        factory.make()
        with pytest.raises(HomogeneityError, match=r"mixes GPU models \['A10G', 'T4'\]"):
            _run(factory, tmp_path)
        summary, subs = _run(factory, tmp_path, allow_mixed_gpus=True)
        assert summary.gpu_models == ("A10G", "T4") and subs.loc["team10_Tiny", "status"] == "ok"
        pinned, _ = _run(factory, tmp_path, gpu_model="A10G")
        assert pinned.slots == 3
    finally:
        sim.remove_node(other)


def test_node_lost_mid_submission_is_retried_on_another_node(cluster, factory, tmp_path):
    sim, nodes = cluster
    log = tmp_path / "nodes.log"
    slow_submissions(factory, count=3, sleep_s=0.8, prefix="team1")
    victim = {}

    def remove_a_busy_node():
        deadline = time.time() + 120
        while time.time() < deadline:
            if log.exists() and log.read_text().split():
                busy = log.read_text().split()[0]
                node = next(n for n in nodes if n.node_id == busy)
                victim["node_id"] = busy
                sim.remove_node(node, allow_graceful=False)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=remove_a_busy_node)
    killer.start()
    try:
        summary, subs = _run(factory, tmp_path, max_attempts=3, actor_class=logging_actor(log))
    finally:
        killer.join()
        _replace_lost(sim, nodes, victim.get("node_id"))
    assert victim, "no submission started"
    assert (subs["status"] == "ok").all(), subs[["status", "error"]].to_string()
    assert len(subs) == 3 and subs["attempts"].max() == 2
    retried = subs[subs["attempts"] == 2]
    assert (retried["node_id"] != victim["node_id"]).all()


def _first_busy(log, nodes, deadline_s: float = 180):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        lines = log.read_text().split("\n") if log.exists() else []
        if lines and lines[0]:
            node_id, pid, _ = lines[0].split()
            return next(n for n in nodes if n.node_id == node_id), int(pid)
        time.sleep(0.05)
    return None, None


def _wait_until_dead(node_ids, deadline_s: float = 120) -> None:
    """Removed nodes stay listed alive until their health checks fail; later tests must not land there."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and any(n["Alive"] for n in ray.nodes() if n["NodeID"] in node_ids):
        time.sleep(0.2)


def _replace_lost(sim, nodes, node_id: str | None) -> None:
    """The fixture's cluster keeps its GPU nodes: a lost one (removed or killed) is removed for good,
    waited for until the cluster lists it dead, and replaced by a fresh GPU node, so later tests
    never depend on which node an earlier test happened to kill."""
    for node in [n for n in nodes if n.node_id == node_id]:
        nodes.remove(node)
        if node in sim.worker_nodes:  # not yet removed by the test itself
            sim.remove_node(node, allow_graceful=False)
        _wait_until_dead([node_id])
        nodes.append(sim.add_node(**GPU_NODE))
        sim.wait_for_nodes()


def _raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


@pytest.mark.parametrize("how", ["raylet", "actor_then_raylet"])
def test_node_whose_raylet_is_sigkilled_mid_submission_is_retried(cluster, factory, tmp_path, how):
    """How a reclaimed spot instance dies. ``actor_then_raylet``: the actor's process is killed first
    and its raylet 0.5 s later, so the actor's error reaches the driver while the cluster still
    lists the node alive — the driver must wait for the node's fate, not record a crash."""
    sim, nodes = cluster
    fresh = [sim.add_node(**GPU_NODE) for _ in range(2)]
    sim.wait_for_nodes()
    log = tmp_path / "nodes.log"
    slow_submissions(factory, count=3, sleep_s=1.5)
    victim = {}

    def kill_a_busy_node():
        node, actor_pid = _first_busy(log, nodes + fresh)
        if node is None:
            return
        victim["node_id"] = node.node_id
        if how == "actor_then_raylet":
            os.kill(actor_pid, signal.SIGKILL)
            time.sleep(0.5)
        os.kill(_raylet_pid(node), signal.SIGKILL)

    killer = threading.Thread(target=kill_a_busy_node)
    killer.start()
    try:
        summary, subs = _run(factory, tmp_path, max_attempts=3, actor_class=logging_actor(log))
    finally:
        killer.join()
        for node in fresh:  # the victim's leftover processes too; the cluster stays as the fixture made it
            sim.remove_node(node, allow_graceful=False)
        _wait_until_dead([n.node_id for n in fresh])
        _replace_lost(sim, nodes, victim.get("node_id"))
    assert victim, "no submission started"
    assert (subs["status"] == "ok").all(), subs[["status", "attempts", "error"]].to_string()
    assert sorted(subs["attempts"]) == [1, 1, 2]
    assert (subs.loc[subs["attempts"] == 2, "node_id"] != victim["node_id"]).all()
    assert victim["node_id"] not in set(subs["node_id"])  # nothing finished on the dying node


class _DyingActor(SubmissionActor):
    """The measuring process itself dies (a crash below Python, an OOM kill of the actor): no sandbox
    can turn that into a row, so the driver must judge it."""

    def evaluate(self, sub, splits, config, run_id):
        os._exit(7)


def test_an_actor_that_dies_on_a_healthy_node_is_crashed_not_retried(cluster, factory, tmp_path):
    factory.make("team30_Exits", team_id="30")
    summary, subs = _run(factory, tmp_path, max_attempts=3, actor_class=_DyingActor)
    row = subs.loc["team30_Exits"]
    assert row["status"] == "crashed" and row["attempts"] == 1, row["error"]
    assert "its node is healthy" in row["error"]


def test_a_gpu_run_on_nodes_with_an_accelerator_type_records_rows(cluster, factory, tmp_path):
    """Real GPU nodes declare accelerator_type:<model>; resume bookkeeping filters on it (fake GPUs
    here, so torch sees no CUDA and every row is an error saying so, never a CPU timing)."""
    factory.make()
    subs, errors = discover_all(factory.manifests, factory.root)
    folder = RunFolder.create(tmp_path / "results", new_run_id())
    gpu_run = dataclasses.replace(CONFIG, device="auto")
    summary = run_distributed(subs, errors, [embedded_split()], gpu_run, folder, DriverOptions(progress=False))
    row = pd.read_parquet(folder.path / "submissions").set_index("submission_id").loc["team10_Tiny"]
    assert summary.device == "cuda" and summary.gpu_models == ("A10G",)
    assert row["status"] == "error" and "sees no CUDA device" in row["error"]
