"""Provenance: where and with what a number was measured.

Contract: :func:`device_facts` describes the device an evaluation runs on (model, UUID, host,
thread count, the measuring process's niceness, cuDNN/TF32 flags); :func:`environment` gives
library versions (torch, CUDA, cuDNN, NVIDIA driver, Ray, numpy, fvcore, esr-eval) and the
esr-eval git sha with a dirty flag; :func:`run_metadata` is what ``run.json`` holds (keys:
``records.RUN_JSON_KEYS``). Nothing here fails: an unknown fact is ``None``.

The dirty flag (:func:`git_dirty`) is true only when a tracked file of esr-eval itself differs
from the commit: untracked files and the folders that hold runs, submissions and data
(:data:`NOT_SOURCE_DIRS`, which the cluster templates keep out of the repository mount, so a node
lacks them by construction) do not count.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent
# Tracked folders of the repository that hold runs, submissions and data, not esr-eval's code
# (the cluster templates' rsync_exclude keeps them out of the repository mount).
NOT_SOURCE_DIRS = ("results", "models", "model_zoo", "cluster/data")


@dataclass(frozen=True)
class DeviceFacts:
    device_kind: str
    device_name: str
    gpu_uuid: str | None
    hostname: str
    torch_num_threads: int
    process_niceness: int
    cudnn_benchmark: bool
    tf32_matmul: bool
    tf32_cudnn: bool


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_facts(device: torch.device) -> DeviceFacts:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        name, uuid = properties.name, str(getattr(properties, "uuid", "")) or None
    else:
        name, uuid = cpu_model_name(), None
    return DeviceFacts(
        device_kind=device.type,
        device_name=name,
        gpu_uuid=uuid,
        hostname=socket.gethostname(),
        torch_num_threads=torch.get_num_threads(),
        process_niceness=os.nice(0),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
        tf32_cudnn=bool(torch.backends.cudnn.allow_tf32),
    )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str, cwd: Path = _PACKAGE_DIR) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_dirty(cwd: Path = _PACKAGE_DIR) -> bool | None:
    """Whether a tracked source file of the checkout holding ``cwd`` differs from its commit
    (``None`` outside a git checkout); untracked files and :data:`NOT_SOURCE_DIRS` do not count."""
    excluded = [f":(top,exclude){folder}" for folder in NOT_SOURCE_DIRS]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded, cwd=cwd)
    return None if status is None else bool(status)


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def environment() -> dict:
    """Library versions and the esr-eval source revision."""
    return {
        "esr_eval_version": _version("esr-eval"),
        "esr_eval_git_sha": _git("rev-parse", "HEAD"),
        "esr_eval_git_dirty": git_dirty(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nvidia_driver": _nvidia_driver() if torch.cuda.is_available() else None,
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "fvcore": _version("fvcore"),
        "platform": platform.platform(),
    }


def facts_dict(facts: DeviceFacts) -> dict:
    return asdict(facts)


def run_metadata(run_id: str, protocol, splits: list, submissions: list, driver: str,
                 device: str, extra: dict | None = None) -> dict:
    """The facts ``run.json`` holds (per-node device facts are on every submission row)."""
    return {
        "run_id": run_id,
        "created_unix_s": time.time(),
        "driver": driver,
        "driver_host": socket.gethostname(),
        "device": device,
        "timing_protocol": {"id": protocol.protocol_id, **dataclasses.asdict(protocol)},
        "splits": [{"name": s.name, "scale": s.scale, "num_images": len(s.pairs), "sha256": s.sha256}
                   for s in splits],
        "submissions": [s.submission_id for s in submissions],
        "environment": environment(),
        **(extra or {}),
    }
