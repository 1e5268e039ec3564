"""Several simulated nodes (ray.cluster_utils.Cluster): node loss is retried elsewhere; GPU homogeneity."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from esr_eval.data import embedded_split
from esr_eval.driver import DriverOptions, HomogeneityError, apply_ray_env, run_distributed
from esr_eval.evaluate import EvaluationConfig
from esr_eval.manifest import discover_all
from esr_eval.run import RunFolder, new_run_id
from esr_eval.timing import OFFICIAL

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.ray

CONFIG = EvaluationConfig(protocol=OFFICIAL, device="auto", hygiene=False, complexity_input_shape=(1, 3, 16, 16))
UP = "self.shuffle(self.tail(self.head(x)))"
GPU_NODE = {"num_cpus": 1, "num_gpus": 1, "resources": {"accelerator_type:A10G": 1}}


@pytest.fixture(scope="module")
def cluster():
    apply_ray_env()
    if ray.is_initialized():
        ray.shutdown()
    sim = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    nodes = [sim.add_node(**GPU_NODE) for _ in range(3)]
    ray.init(address=sim.address, log_to_driver=False)
    sim.wait_for_nodes()
    yield sim, nodes
    ray.shutdown()
    sim.shutdown()


def _run(factory, tmp_path, **options):
    subs, errors = discover_all(factory.manifests, factory.root)
    folder = RunFolder.create(tmp_path / "results", new_run_id())
    summary = run_distributed(subs, errors, [embedded_split()], CONFIG, folder, DriverOptions(progress=False, **options))
    return summary, pd.read_parquet(folder.path / "submissions").set_index("submission_id")


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
    for i in range(3):
        factory.make(f"team1{i}_Slow", team_id=f"1{i}", model_source={
            "prelude": "import time, ray\n",
            "forward_body": (f"open({str(log)!r}, 'a').write(ray.get_runtime_context().get_node_id() + '\\n'); "
                             f"time.sleep(0.8); return {UP}")})
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
    summary, subs = _run(factory, tmp_path, max_attempts=3)
    killer.join()
    assert victim, "no submission started"
    assert (subs["status"] == "ok").all(), subs[["status", "error"]].to_string()
    assert len(subs) == 3 and subs["attempts"].max() == 2
    retried = subs[subs["attempts"] == 2]
    assert (retried["node_id"] != victim["node_id"]).all()
