"""The Ray cluster as the driver sees it: which instance to join, what GPUs it declares and has,
which nodes are alive, and whether a node still answers.

Contract
--------
* :func:`choose_address` never attaches silently: an explicit ``--address`` wins, then
  ``RAY_ADDRESS``, then the cluster this machine is the head of (a head started by ``ray up``
  holds ``~/ray_bootstrap_config.yaml``, which is where ``ray submit`` runs the script); anything
  else starts a private local instance. The choice and the reason are returned for ``run.json``.
* :func:`declared_gpus` reads a cluster-launcher config (the bootstrap file on a head, or any
  ``ray up`` YAML) and returns the GPUs its worker types promise (``min_workers`` × ``GPU``),
  ``None`` when it promises nothing countable.
* :func:`wait_for_gpus` returns once the cluster has at least the expected GPUs (of the pinned
  model, if any), and raises :class:`GpuWaitError` naming the fix when ``wait_s`` runs out;
  it never lets a GPU run fall back to CPUs.
* :func:`probe_node` schedules a zero-resource task pinned to one node: it answers only if the
  node's raylet is alive and can still start work, which tells an actor that crashed on a
  healthy node from one whose node is dying but not yet declared dead.
* :func:`rsync_down_lines` gives, on a head started by ``ray up``, the exact ``ray rsync-down``
  command that copies a run folder to the machine ``ray up`` ran on, with what ``ray down`` does
  to it (deletes it with the nodes on a cloud; keeps it on premises), and nothing elsewhere.
This module imports only Ray and the standard library (no torch), so any process can use it.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import yaml
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# RAY_worker_niceness: Ray starts worker processes at niceness 15 by default, so on a node where
# anything else runs at normal priority the measuring actor (and the sandbox it forks) gets a sliver
# of a core; 0 times submissions at the scheduler's normal priority. Rows record it (process_niceness).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0"}
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
GPU_POLL_S = 2.0
# The shipped cluster-launcher templates by provider type, as named from the repository root.
CLUSTER_TEMPLATES = {"aws": "ray_config.yaml", "local": "cluster/onprem.yaml"}


class GpuWaitError(RuntimeError):
    """A GPU run found fewer GPUs than it needs within its wait."""


@dataclass(frozen=True)
class Address:
    """Where the driver connects and why (recorded in run.json)."""

    address: str
    source: str


def apply_ray_env() -> None:
    """The same Ray environment everywhere (driver, tests, cluster commands)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def bootstrap_config_path() -> Path:
    return BOOTSTRAP_CONFIG.expanduser()


def choose_address(explicit: str | None, environ: dict | None = None,
                   bootstrap: Path | None = None) -> Address:
    """The Ray instance to join: explicit, RAY_ADDRESS, this cluster head, or a new local one."""
    environ = os.environ if environ is None else environ
    bootstrap = bootstrap_config_path() if bootstrap is None else bootstrap
    if explicit:
        return Address(explicit, "--address")
    if environ.get("RAY_ADDRESS"):
        return Address(environ["RAY_ADDRESS"], "RAY_ADDRESS")
    if bootstrap.is_file():
        return Address("auto", f"cluster head ({bootstrap} exists: started by `ray up`)")
    return Address("local", "a private local instance (no --address, no RAY_ADDRESS, not a cluster head)")


def connect(address: Address, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join ``address`` (``local`` starts a private instance that ends with this process)."""
    if address.address == "local":
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    else:
        ray.init(address=address.address, ignore_reinit_error=True)


def declared_gpus(config: dict) -> int | None:
    """GPUs a cluster-launcher config promises: Σ min_workers × GPU over its node types."""
    total, counted = 0, False
    head = config.get("head_node_type")
    for name, node_type in (config.get("available_node_types") or {}).items():
        gpus = (node_type.get("resources") or {}).get("GPU", 0)
        count = 1 if name == head else node_type.get("min_workers", 0)
        if gpus:
            total += int(gpus) * int(count)
            counted = True
    return total if counted else None


def declared_gpus_here() -> int | None:
    """GPUs promised by this head's bootstrap config, or None when this is no cluster head."""
    path = bootstrap_config_path()
    if not path.is_file():
        return None
    try:
        return declared_gpus(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return None


def rsync_down_lines(run_dir: Path, bootstrap: Path | None = None) -> list[str]:
    """On a cluster head: how to copy ``run_dir`` to the machine ``ray up`` ran on; else ``[]``."""
    bootstrap = bootstrap_config_path() if bootstrap is None else bootstrap
    if not bootstrap.is_file():
        return []
    try:
        config = yaml.safe_load(bootstrap.read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    provider = (config.get("provider") or {}).get("type")
    template = CLUSTER_TEMPLATES.get(provider, "YOUR-CLUSTER-CONFIG.yaml")
    run_dir = Path(run_dir).expanduser().resolve()
    command = shlex.join(["ray", "rsync-down", template, f"{run_dir}/", f"results/{run_dir.name}/"])
    fate = ("`ray down` stops Ray there and keeps the files" if provider == "local"
            else "`ray down` deletes it with the nodes, so copy it first")
    return [f"this run is on the cluster head only ({fate}). To copy it, run from the folder you ran `ray up` in "
            f"(with the config you gave `ray up`, if not {template}):",
            f"  {command}"]


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def node_alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id for n in alive_nodes())


def gpu_models(nodes: list[dict]) -> set[str]:
    """Ray accelerator types of the GPU nodes (``unknown`` for a GPU node without one)."""
    models = set()
    for node in nodes:
        resources = node.get("Resources", {})
        if resources.get("GPU", 0) > 0:
            tags = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
            models.update(tags or ["unknown"])
    return models


def gpu_count(gpu_model: str | None = None) -> int:
    """GPUs of alive nodes, only those of ``gpu_model`` when pinned."""
    return int(sum(n["Resources"].get("GPU", 0) for n in alive_nodes()
                   if gpu_model is None or f"accelerator_type:{gpu_model}" in n["Resources"]))


def wait_for_gpus(expected: int, wait_s: float, gpu_model: str | None = None,
                  report: Callable[[str], None] = print, poll_s: float = GPU_POLL_S) -> int:
    """Block until ``expected`` GPUs are present (bounded by ``wait_s``); returns the count."""
    deadline = time.monotonic() + wait_s
    last = None
    kind = f"{gpu_model} GPUs" if gpu_model else "GPUs"
    while True:
        have = gpu_count(gpu_model)
        if have >= expected:
            return have
        if time.monotonic() >= deadline:
            raise GpuWaitError(
                f"this is a GPU run but the cluster has {have} of the {expected} {kind} it needs after waiting "
                f"{wait_s:.0f} s. Fix: wait for the workers to join (`ray status`) and re-run, raise "
                "--wait-for-gpus SECONDS, lower --min-gpus N, or pass --device cpu for a CPU-timed run")
        if have != last:
            report(f"waiting for GPUs: {have}/{expected} present, up to {deadline - time.monotonic():.0f} s more "
                   "(--wait-for-gpus)")
            last = have
        time.sleep(poll_s)


@ray.remote(num_cpus=0, max_retries=0)
def _where_am_i() -> str:
    return ray.get_runtime_context().get_node_id()


def probe_node(node_id: str):
    """An object ref that resolves to ``node_id`` if the node can still run a task."""
    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return _where_am_i.options(scheduling_strategy=strategy).remote()
