"""The cluster templates pass Ray's own launcher validation offline and keep the cluster homogeneous;
the cluster commands they and the READMEs show are accepted by Ray's CLI and by evaluate_all.py.

Each YAML goes through what `ray up` does before it contacts a provider: ``prepare_config``
(provider defaults, merged setup commands, node-type min/max) then ``validate_config`` (Ray's
JSON schema and its cross-field checks). Sockets are blocked, so nothing here can reach a cloud.
The documented commands are parsed by Ray's own click commands (never invoked).
"""

from __future__ import annotations

import copy
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

import evaluate_all
from esr_eval.nodes import RAY_ENV
from esr_eval.provenance import NOT_SOURCE_DIRS

jsonschema = pytest.importorskip("jsonschema")
util = pytest.importorskip("ray.autoscaler._private.util")

REPO_ROOT = Path(__file__).resolve().parents[1]
AWS = REPO_ROOT / "ray_config.yaml"
ONPREM = REPO_ROOT / "cluster" / "onprem.yaml"
DOCS = [AWS, ONPREM, REPO_ROOT / "README.md", REPO_ROOT / "cluster" / "README.md"]
RAY_COMMAND = re.compile(r"^\s*(?:#\s*)?(ray (?:up|submit|attach|rsync-down|rsync-up|down|exec)\b.*)$", re.MULTILINE)
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
    assert mounts["~/esr-eval-data"] == "./cluster/data"
    assert {"/models", "/model_zoo", "/cluster/data", "/.venv", "/results"} <= set(config["rsync_exclude"])
    assert ".git" not in config["rsync_exclude"] and "/.git" not in config["rsync_exclude"]
    assert ".gitignore" not in config["rsync_filter"], "cluster/data/.gitignore ignores the data it holds"


def test_ray_up_finds_every_mount_source_in_a_fresh_checkout(template):
    """`ray up` hashes every mount's local source first and dies with a traceback on a missing one:
    each source is a folder of the repository that git keeps, never a path outside it."""
    _, config = template
    for remote, source in config["file_mounts"].items():
        assert not source.startswith(("~", "/")), (remote, source)
        assert (REPO_ROOT / source).is_dir(), (remote, source)
    data = REPO_ROOT / "cluster" / "data"
    assert (data / ".gitignore").is_file()

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT).returncode == 0
    assert ignored("cluster/data/DIV2K_LSDIR_valid_HR/0801.png") and not ignored("cluster/data/.gitignore")


def test_the_dirty_flag_ignores_exactly_the_tracked_folders_kept_out_of_the_repo_mount(template):
    """On a node the repository lacks the files rsync_exclude kept out of it; those folders (runs,
    submissions, data) must not make the recorded commit dirty, and nothing the sync sends may be
    ignored. Folders git keeps nothing of (.venv, build) cannot make it dirty either way."""
    _, config = template
    anchored = {pattern.strip("/") for pattern in config["rsync_exclude"] if pattern.startswith("/")}

    def git_keeps(folder: str) -> bool:
        files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", folder],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        return bool(files.strip())
    assert set(NOT_SOURCE_DIRS) == {folder for folder in anchored if git_keeps(folder)}


def documented_commands(path: Path) -> list[str]:
    """The `ray ...` command lines of a file (YAML comments or Markdown), continuations joined."""
    return RAY_COMMAND.findall(re.sub(r"\\\n\s*(?:#\s*)?", " ", path.read_text()))


def split_command(line: str) -> tuple[str, list[str]]:
    """(subcommand, its arguments) as Ray's CLI receives them from a POSIX shell."""
    words = shlex.split(line, comments=True)
    assert words[0] == "ray", line
    return words[1], words[2:]


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_documented_cluster_commands_work_from_a_laptop(path):
    """Ray's CLI accepts each command; no `~` is left for the laptop's shell to expand; the driver
    runs in tmux with a way back in; its arguments are evaluate_all.py's; and the rsync-down copies
    the folder that submit writes."""
    from ray.scripts import scripts

    commands = documented_commands(path)
    by_name: dict[str, list] = {}
    for line in commands:
        code = line.split(" #", 1)[0]
        assert not re.search(r"(^|\s)~", code), f"{path.name}: the laptop's shell expands this ~: {line}"
        name, args = split_command(line)
        by_name.setdefault(name, []).append(scripts.cli.commands[name].make_context(name, list(args)).params)
    submits, attaches, copies = by_name.get("submit", []), by_name.get("attach", []), by_name.get("rsync-down", [])
    assert submits and copies, f"{path.name} shows no ray submit / ray rsync-down"
    for submit in submits:
        assert submit["tmux"], f"{path.name}: ray submit without --tmux ends with a dropped SSH session"
        assert any(a["tmux"] and a["cluster_config_file"] == submit["cluster_config_file"] for a in attaches)
        assert submit["script"] == "evaluate_all.py" and "--protocol" not in submit["script_args"]
        options = evaluate_all.build_parser().parse_args(list(submit["script_args"]))
        run_dir = f"{options.results}/{options.run_id}/"
        assert any(c["source"] == run_dir and c["target"] == f"results/{options.run_id}/"
                   and c["cluster_config_file"] == submit["cluster_config_file"] for c in copies), (run_dir, copies)
    for copy_ in copies:
        assert copy_["source"].endswith("/"), "rsync_exclude's /results would drop a folder named results"


def test_onprem_warns_that_ray_stop_stops_every_ray_of_the_user_on_a_shared_host():
    text = ONPREM.read_text()
    caveat = text[:text.index("head_start_ray_commands:")].rsplit("\n\n", 1)[1]
    assert "`ray stop` stops EVERY Ray instance this ssh_user runs on the host" in caveat
    assert "dedicated" in caveat and "ssh_user" in caveat


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
