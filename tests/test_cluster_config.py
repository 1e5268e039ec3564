"""The cluster templates pass Ray's own launcher validation offline and keep the cluster homogeneous.

Each YAML goes through what `ray up` does before it contacts a provider: ``prepare_config``
(provider defaults, merged setup commands, node-type min/max) then ``validate_config`` (Ray's
JSON schema and its cross-field checks). Sockets are blocked, so nothing here can reach a cloud.
"""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path

import pytest
import yaml

from esr_eval.nodes import RAY_ENV

jsonschema = pytest.importorskip("jsonschema")
util = pytest.importorskip("ray.autoscaler._private.util")

REPO_ROOT = Path(__file__).resolve().parents[1]
AWS = REPO_ROOT / "ray_config.yaml"
ONPREM = REPO_ROOT / "cluster" / "onprem.yaml"
INSTALL = re.compile(r"\bpip install (-q )?-e ~/esr-eval'\[cluster,report\]'$")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cluster-config tests must not open network connections")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(raw: dict) -> dict:
    """What `ray up` validates: defaults filled, setup commands merged, then Ray's validation."""
    config = util.prepare_config(copy.deepcopy(raw))
    util.validate_config(config)
    return config


@pytest.fixture(scope="module", params=[AWS, ONPREM], ids=["aws", "onprem"])
def template(request) -> tuple[dict, dict]:
    raw = load(request.param)
    return raw, prepared(raw)


def test_every_node_runs_the_same_setup_which_installs_esr_eval(template):
    raw, config = template
    assert config["head_setup_commands"] == config["worker_setup_commands"] == raw["setup_commands"]
    assert any(INSTALL.search(command) for command in raw["setup_commands"]), raw["setup_commands"]
    assert not any(re.search(r"torch\s*==", command) for command in raw["setup_commands"]), \
        "torch must come from the image (its CUDA build), never a pin"
    assert any("torch.version.cuda" in command for command in raw["setup_commands"]), \
        "setup should refuse a CPU-only torch"
    assert any(re.search(r'"ray\[default\]==[\d.]+"', command) for command in raw["setup_commands"]), \
        "every node should install one exact Ray version"


def test_submissions_repo_and_data_reach_every_node_at_the_same_path(template):
    raw, config = template
    mounts = config["file_mounts"]
    assert mounts["~/esr-eval"] == "."
    assert mounts["~/esr-eval/models"] == "./models" and (REPO_ROOT / "models").is_dir()
    assert mounts["~/esr-eval/model_zoo"] == "./model_zoo" and (REPO_ROOT / "model_zoo").is_dir()
    assert "~/esr-eval-data" in mounts
    assert {"/models", "/model_zoo", "/.venv", "/results"} <= set(config["rsync_exclude"])
    assert ".git" not in config["rsync_exclude"] and "/.git" not in config["rsync_exclude"]


def test_ray_environment_matches_the_driver(template):
    _, config = template
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for key, value in RAY_ENV.items():
        setting = f"export {key}=${{{key}:-{value}}}"
        assert all(setting in command for command in starts), (setting, starts)
        assert any(setting in command for command in config["setup_commands"]), "shells Ray opens need it too"


def test_aws_has_one_gpu_worker_type_at_a_fixed_count():
    config = prepared(load(AWS))
    head_type = config["head_node_type"]
    types = config["available_node_types"]
    workers = {name: spec for name, spec in types.items() if name != head_type}
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["resources"]["GPU"] == 1
    assert worker["min_workers"] == worker["max_workers"] == config["max_workers"] > 0
    assert types[head_type]["resources"]["GPU"] == 0
    assert types[head_type]["max_workers"] == 0
    assert worker["node_config"]["ImageId"] == types[head_type]["node_config"]["ImageId"]
    assert config["provider"]["type"] == "aws"


def test_onprem_keeps_every_listed_host_and_no_gpu_on_the_head():
    raw = load(ONPREM)
    config = prepared(raw)
    (node_type,) = config["available_node_types"].values()
    hosts = len(raw["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == hosts
    assert all("--num-gpus=0" in c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert config["provider"]["type"] == "local" and "head_ip" in config["provider"]


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])
def test_a_misspelt_top_level_key_fails_validation(path):
    broken = load(path)
    broken["setup_comands"] = broken.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        prepared(broken)


def test_a_misspelt_node_type_key_fails_validation():
    broken = load(AWS)
    worker = broken["available_node_types"]["ray.worker.gpu"]
    worker["min_worker"] = worker.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        prepared(broken)
