"""Scale benchmark: 1,000 sleeping submissions through the real driver on 64 fake GPUs over 8 simulated nodes.

Contract
- ``python benchmarks/scale_driver.py [--submissions 1000] [--nodes 8] [--gpus-per-node 8]
  [--scale 0.25] [--seed 0] [--out PREFIX] [--profile] [--driver-file PATH]`` writes
  ``--submissions`` manifests into a temporary submissions root, all pointing at one trivial model
  file (no checkpoint; the file is never imported); they share the 100 two-digit team ids
  (``discover_all(..., allow_shared_team_ids=True)``). Each manifest's ``model.kwargs.sleep_s``
  is its designed duration: a seeded log-normal draw of *realistic* per-submission durations
  (median ``REAL_MEDIAN_S`` = 120 s, sigma ``REAL_SIGMA`` = 0.5, at least ``REAL_FLOOR_S`` = 30 s:
  what one submission's full evaluation takes on a GPU), times ``--scale`` (default 0.25: an
  ideal makespan of 520 s on 64 GPUs, so the default run takes about 10 minutes on a quiet 2-core
  machine, more on a busy one).
- A simulated cluster (:class:`ray.cluster_utils.Cluster`): a head advertising ``GPU: 0`` (as
  ``ray_config.yaml``'s head) plus ``--nodes`` nodes of ``--gpus-per-node`` fake GPUs each (one
  raylet process per node, one CPU each; no Ray accelerator type is declared, so the GPU model is
  ``unknown`` and the same everywhere). The submissions run through the real driver,
  :func:`esr_eval.driver.run_distributed`, with manifests discovered by
  :func:`esr_eval.manifest.discover_all`, a real run folder, real Parquet part files, the designed
  durations as ``expected_s`` (LPT order) and ``DriverOptions(actor_class=SleeperActor)``.
- :class:`SleeperActor` is a light actor: it sleeps the designed duration and returns an ``ok``
  :class:`~esr_eval.records.SubmissionRow`, one :class:`~esr_eval.records.SplitRow` per split and
  one :class:`~esr_eval.records.SampleRow` per image and timed repeat, with made-up numbers. It
  never imports torch (arguments and results are torch-free: ``esr_eval.settings``,
  ``esr_eval.manifest``, ``esr_eval.data``, ``esr_eval.records``), so one 2-core machine holds 64
  at once. Each actor checks ``'torch' not in sys.modules`` when its evaluation starts and logs it
  (a torch-loaded actor returns an ``error`` row instead), with its pid, process start time, CPU
  seconds and RSS, as one JSON line in ``<submissions root>/actors.jsonl``. The class is defined in this script, so
  Ray pickles it by value (``register_pickle_by_value`` when the module is imported instead).
- Figures: makespan (wall clock around ``run_distributed``) against :func:`lpt_makespan` of the
  designed durations on all GPUs (target <= ``TARGET_RATIO``) and :func:`lower_bound`; the
  driver process's CPU seconds (``getrusage(RUSAGE_SELF)`` around ``run_distributed``: every
  thread, Ray's included) in total and per submission; its RSS before, peak (``VmHWM``, reset
  through ``/proc/self/clear_refs`` first when allowed) and after, per submission; calls the
  driver made to ``ray.wait``, ``ray.get``, ``ray.nodes``, ``ray.cluster_resources`` and
  ``ray.kill`` (counted by wrapping them); actor start-up (slot freed → evaluation started; first
  wave from the driver start; process start → evaluation started) and the hand-over gap; the
  peak number of evaluations running at once; the time ``pd.read_parquet`` takes to read each
  table of the run (first read, and the best of three) with its row count; the machine (CPU
  model, cores, memory, load averages, Ray/torch/Python versions, date) and the sha256 of the
  driver module that ran. ``--profile`` runs ``run_distributed`` under cProfile, timed by the CPU
  time of the loop's thread, and keeps the top functions (it inflates the driver's CPU figures:
  use it to find hot spots, not to measure). ``--driver-file PATH`` runs another copy of
  ``esr_eval/driver.py`` (loaded under a private name) for an A/B comparison of a driver change.
- Ray's temporary files go under ``$RAY_TMPDIR`` (default ``/tmp/rt``: its socket paths must stay
  short).
- Output: ``PREFIX.json`` (everything, one timeline per submission included) and ``PREFIX.md``
  (the table, printed last); default ``benchmarks/results/scale_driver-<host>-<date>``.
Units: seconds (``_s``), MiB (``_mib``), KiB (``_kib``); ratios are dimensionless.
Caveat: the actors sleep instead of running torch, so this measures the driver, Ray and the run
folder at scale, not a GPU's work; on a real cluster every node has its own CPUs for start-up.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime
import hashlib
import importlib.util
import io
import json
import os
import pstats
import resource
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import yaml

from esr_eval.data import embedded_split
from esr_eval.manifest import discover_all
from esr_eval.nodes import apply_ray_env
from esr_eval.records import EvaluationResult, SampleRow, SplitRow, SubmissionRow
from esr_eval.scheduling import lower_bound, lpt_makespan, lpt_order
from esr_eval.settings import DEFAULT, EvaluationConfig

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
REAL_MEDIAN_S = 120.0
REAL_SIGMA = 0.5
REAL_FLOOR_S = 30.0
DEFAULT_SCALE = 0.25
TARGET_RATIO = 1.05
DEVICE_NAME = "simulated GPU (sleeper actor)"
ACTOR_LOG = "actors.jsonl"
SAMPLE_EVERY_S = 1.0
COUNTED_RAY_CALLS = ("wait", "get", "nodes", "cluster_resources", "kill")
MODEL_SOURCE = '''"""A trivial x4 model file: the scale benchmark's manifests point here; its actors never import it."""


class Nothing:
    pass
'''


def _load_scheduling_benchmark():
    """benchmarks/scheduling.py (not a package), under the name the smoke tests give it."""
    name = "_benchmarks_scheduling"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "scheduling.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_sched = _load_scheduling_benchmark()
Spread, Machine, TimedRunFolder = _sched.Spread, _sched.Machine, _sched.TimedRunFolder
machine_facts, slot_predecessors = _sched.machine_facts, _sched.slot_predecessors


# --- the actor (runs in the Ray worker processes: standard library, Ray and esr_eval.records only) ----------


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _process_start_unix_s() -> float:
    """When this process was created (from /proc: start ticks since boot against the uptime)."""
    with open("/proc/self/stat") as stat:
        start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        uptime_s = float(uptime.read().split()[0])
    return time.time() - (uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))


class SleeperActor:
    """Sleeps each submission's designed duration and returns made-up rows; never imports torch."""

    def __init__(self):
        self.init_unix_s = time.time()

    def node(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def evaluate(self, sub, splits, config, run_id: str) -> EvaluationResult:
        started = time.time()
        torch_loaded = "torch" in sys.modules
        node_id = ray.get_runtime_context().get_node_id()
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        sleep_s = float(sub.model.kwargs["sleep_s"])
        if not torch_loaded:
            time.sleep(sleep_s)
        ended = time.time()
        base = dict(run_id=run_id, submission_id=sub.submission_id, team_id=sub.team_id, name=sub.name,
                    strict=sub.strict, trusted_pickle=sub.trusted_pickle, data_range=sub.data_range,
                    scale=sub.scale, adapter=sub.adapter.describe(), manifest_sha256=sub.manifest_sha256,
                    timing_protocol=config.protocol.protocol_id, runtime_statistic=config.protocol.headline,
                    device_kind=config.device, device_name=DEVICE_NAME,
                    gpu_uuid=",".join(gpu_ids), hostname=socket.gethostname(), node_id=node_id,
                    started_at_unix_s=started, wall_s=ended - started)
        with open(Path(sub.root) / ACTOR_LOG, "a") as log:  # one short line per actor: an atomic append
            log.write(json.dumps({
                "submission_id": sub.submission_id, "pid": os.getpid(), "node_id": node_id, "gpu_ids": gpu_ids,
                "process_start_unix_s": _process_start_unix_s(), "init_unix_s": self.init_unix_s,
                "evaluate_start_unix_s": started, "evaluate_end_unix_s": ended, "torch_loaded": torch_loaded,
                "modules_loaded": len(sys.modules), "rss_kib": _proc_status_kib("VmRSS"),
                "cpu_s": sum(os.times()[:2])}) + "\n")
        if torch_loaded:
            return EvaluationResult(submission=SubmissionRow(
                status="error", error_stage="actor", **base,
                error=f"[{sub.submission_id}] torch was imported in the sleeper actor's process"))
        return _made_up_result(base, sub, splits, config, sleep_s)


def _made_up_result(base: dict, sub, splits, config, sleep_s: float) -> EvaluationResult:
    """Rows shaped like a real evaluation's: one split row per split, one sample row per image and repeat."""
    protocol = config.protocol
    seed = int(sub.manifest_sha256[:8], 16)
    split_rows, sample_rows = [], []
    for split in splits:
        images = [pair.name for pair in split.pairs]
        latency_ms = 1000.0 * sleep_s / max(1, len(images) * (protocol.repeats + protocol.warmup_passes))
        psnr = 26.5 + (seed % 1000) / 2000.0
        for index, image in enumerate(images):
            for repeat in range(protocol.repeats):
                first = repeat == 0
                sample_rows.append(SampleRow(
                    run_id=base["run_id"], submission_id=sub.submission_id, split=split.name, image=image,
                    repeat=repeat, latency_ms=latency_ms * (1 + 0.01 * ((index + repeat) % 3)),
                    wall_ms=latency_ms * 1.02, lr_height=64, lr_width=64,
                    psnr_db=psnr + 0.1 * index if first else None, ssim=None,
                    psnr_y_db=psnr + 1.4 + 0.1 * index if first else None, ssim_y=None))
        split_rows.append(SplitRow(
            run_id=base["run_id"], submission_id=sub.submission_id, split=split.name, num_images=len(images),
            dataset_sha256=split.sha256, psnr_db=psnr, ssim=None, psnr_y_db=psnr + 1.4, ssim_y=None,
            runtime_ms=latency_ms, runtime_mean_ms=latency_ms * 1.01, runtime_median_ms=latency_ms,
            runtime_p90_ms=latency_ms * 1.02, runtime_n=len(images) * protocol.repeats,
            wall_mean_ms=latency_ms * 1.02, warmup_calls=protocol.warmup_passes * len(images),
            repeats=protocol.repeats, peak_mem_mb=None, peak_mem_official_mb=None))
    row = SubmissionRow(status="ok", params=0, params_before_forward=0, flops_fvcore=0, num_conv=0, **base)
    return EvaluationResult(submission=row, splits=tuple(split_rows), samples=tuple(sample_rows))


# --- the driver side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    submissions: int
    nodes: int
    gpus_per_node: int
    gpus: int
    scale: float
    seed: int
    real_median_s: float
    real_sigma: float
    real_floor_s: float
    timing_protocol: str
    samples_per_submission: int
    profiled: bool
    driver_file: str | None = None


@dataclass(frozen=True)
class Timing:
    """One submission's timeline in seconds from the driver start (``run_distributed`` called)."""

    submission_id: str
    designed_s: float
    wall_s: float
    slot_freed_by: str | None
    slot_freed_offset_s: float
    previous_end_offset_s: float
    process_start_offset_s: float
    start_offset_s: float
    end_offset_s: float
    received_offset_s: float
    written_offset_s: float
    pid: int
    torch_loaded: bool
    actor_rss_mib: float
    actor_cpu_s: float

    @property
    def startup_s(self) -> float:
        """Slot freed (previous rows written; the driver start for the first wave) → evaluation started."""
        return self.start_offset_s - self.slot_freed_offset_s

    @property
    def in_process_startup_s(self) -> float:
        """The actor's process created → its evaluation started (interpreter, Ray worker, imports)."""
        return self.start_offset_s - self.process_start_offset_s

    @property
    def handover_gap_s(self) -> float:
        return self.start_offset_s - self.previous_end_offset_s


@dataclass(frozen=True)
class TableRead:
    table: str
    rows: int
    files: int
    first_read_s: float
    best_of_3_s: float


@dataclass(frozen=True)
class ScaleRecord:
    machine: Machine
    memory_total_gib: float
    load_average_1min_min_during: float
    load_average_1min_max_during: float
    driver_py_sha256: str
    esr_eval_git_sha: str
    settings: Settings
    statuses: dict
    makespan_s: float
    ideal_lpt_s: float
    lower_bound_s: float
    makespan_over_lpt: float
    makespan_over_lower_bound: float
    target_ratio: float
    target_met: bool
    designed_total_s: float
    designed_min_s: float
    designed_median_s: float
    designed_max_s: float
    utilisation: float
    driver_cpu_s: float
    driver_cpu_user_s: float
    driver_cpu_system_s: float
    driver_main_thread_cpu_s: float
    driver_cpu_ms_per_submission: float
    driver_cpu_share_of_one_core: float
    driver_rss_before_mib: float
    driver_rss_peak_mib: float
    driver_rss_after_mib: float
    driver_rss_peak_kib_per_submission: float
    driver_rss_peak_method: str
    driver_ray_calls: dict
    machine_cpu_busy_share: float
    memory_available_min_gib: float
    actors_torch_free: int
    actors_logged: int
    distinct_actor_processes: int
    peak_concurrent_evaluations: int
    actor_rss_mib: Spread
    actor_cpu_s: Spread
    startup_first_wave_s: Spread
    startup_handover_s: Spread
    in_process_startup_s: Spread
    handover_gap_s: Spread
    eval_overhead_s: Spread
    result_return_s: Spread
    row_write_s: Spread
    predicted_makespan_s: float
    table_reads: tuple[TableRead, ...]
    profile_top: tuple[dict, ...]
    samples: tuple[dict, ...]
    timings: tuple[Timing, ...]


def designed_durations(count: int, seed: int, scale: float) -> np.ndarray:
    """Seconds per submission: a seeded log-normal draw of realistic durations, floored, times ``scale``."""
    rng = np.random.default_rng(seed)
    real = np.maximum(np.exp(rng.normal(np.log(REAL_MEDIAN_S), REAL_SIGMA, count)), REAL_FLOOR_S)
    return np.round(real * scale, 3)


def write_field(root: Path, durations: np.ndarray) -> dict[str, float]:
    """Manifests under ``root/manifests`` sharing one trivial model file; returns id → designed seconds."""
    (root / "models").mkdir(parents=True)
    (root / "manifests").mkdir()
    (root / "models" / "nothing.py").write_text(MODEL_SOURCE)
    designed = {}
    for index, seconds in enumerate(durations):
        team = f"{index % 100:02d}"
        sid = f"team{team}_Sleep{index:04d}"
        manifest = {"team_id": team, "name": f"Sleep{index:04d}",
                    "model": {"file": "models/nothing.py", "class": "Nothing", "kwargs": {"sleep_s": float(seconds)}},
                    "data_range": 1.0, "scale": 4, "weights": "none: a synthetic sleeping submission"}
        (root / "manifests" / f"{sid}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        designed[sid] = float(seconds)
    return designed


def discover_field(root: Path):
    """The generated manifests, discovered as the driver's callers do; 1,000 submissions share the 100
    two-digit team ids, which a synthetic field may (``allow_shared_team_ids``)."""
    return discover_all(root / "manifests", root, allow_shared_team_ids=True)


class Sampler(threading.Thread):
    """Every SAMPLE_EVERY_S: the driver's RSS, the machine's available memory, load and CPU, rows written."""

    def __init__(self, folder, started_unix_s: float):
        super().__init__(daemon=True)
        self.folder, self.started_unix_s = folder, started_unix_s
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.cpu_first = self.cpu_last = _machine_cpu_ticks()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY_S):
            self.sample()

    def sample(self) -> None:
        self.cpu_last = _machine_cpu_ticks()
        self.samples.append({"t_s": round(time.time() - self.started_unix_s, 2),
                             "written": len(self.folder.written_unix_s),
                             "driver_rss_mib": round(_proc_status_kib("VmRSS") / 1024, 1),
                             "mem_available_gib": round(_meminfo_kib("MemAvailable") / 2 ** 20, 2),
                             "load_1min": os.getloadavg()[0]})

    def busy_share(self) -> float:
        (busy0, total0), (busy1, total1) = self.cpu_first, self.cpu_last
        return (busy1 - busy0) / max(1, total1 - total0)


def _machine_cpu_ticks() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


class RayCallCounter:
    """Counts calls to a few ``ray`` functions while active (the driver calls them as ``ray.X``)."""

    def __init__(self, names=COUNTED_RAY_CALLS):
        self.counts = dict.fromkeys(names, 0)
        self.originals = {}

    def __enter__(self):
        for name in self.counts:
            original = self.originals[name] = getattr(ray, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.counts[_name] += 1
                return _original(*args, **kwargs)
            setattr(ray, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(ray, name, original)


@dataclass(frozen=True)
class DriverRun:
    rows: pd.DataFrame
    actor_log: dict
    folder: object
    started_unix_s: float
    makespan_s: float
    slots: int
    statuses: dict
    cpu_user_s: float
    cpu_system_s: float
    main_thread_cpu_s: float
    rss_before_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    rss_peak_method: str
    ray_calls: dict
    busy_share: float
    samples: tuple[dict, ...]
    profile_top: tuple[dict, ...]
    driver_py_sha256: str


def start_cluster(nodes: int, gpus_per_node: int):
    """A head with GPU 0 and ``nodes`` nodes of ``gpus_per_node`` fake GPUs; this process connects to it."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                            "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1, num_gpus=gpus_per_node)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster


def _profile_top(profile: cProfile.Profile, limit: int = 30) -> tuple[dict, ...]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (file, line, function), (_, calls, tottime, cumtime, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({function})", "calls": calls,
                     "tottime_s": round(tottime, 4), "cumtime_s": round(cumtime, 4)})
    return tuple(sorted(rows, key=lambda r: -r["tottime_s"])[:limit])


def load_driver(path: Path | None):
    """``esr_eval.driver``, or (A/B of a driver change) another copy of it loaded from ``path``."""
    import esr_eval.driver

    if path is None or Path(path).resolve() == Path(esr_eval.driver.__file__).resolve():
        return esr_eval.driver
    spec = importlib.util.spec_from_file_location("_scale_driver_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_field(designed: dict[str, float], root: Path, workdir: Path, nodes: int, gpus_per_node: int,
              profile: bool, driver_file: Path | None = None) -> DriverRun:
    """Run the field through the real driver on a simulated cluster, measuring the driver process."""
    driver = load_driver(driver_file)
    DriverOptions, run_distributed = driver.DriverOptions, driver.run_distributed
    driver_py_sha256 = hashlib.sha256(Path(driver.__file__).read_bytes()).hexdigest()  # the code that runs
    if __name__ != "__main__":  # imported (e.g. by a test): Ray workers cannot import this module by name
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    subs, errors = discover_field(root)
    if errors:
        raise RuntimeError(f"generated manifests did not validate: {errors[0]}")
    splits = [embedded_split()]
    config = EvaluationConfig(protocol=DEFAULT, device="auto", hygiene=False)
    options = DriverOptions(progress=False, expected_s=designed, actor_class=SleeperActor)
    apply_ray_env()
    cluster = start_cluster(nodes, gpus_per_node)
    try:
        folder = TimedRunFolder.create(workdir / "results", "scale")
        profiler = cProfile.Profile(time.thread_time) if profile else None  # CPU of the loop's thread
        rss_before = _proc_status_kib("VmRSS")
        method = "VmHWM after clear_refs" if _reset_peak_rss() else "max of 1 s VmRSS samples"
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        thread_cpu_before = time.thread_time()
        started_unix_s = time.time()
        sampler = Sampler(folder, started_unix_s)
        sampler.start()
        with RayCallCounter() as counter:
            if profiler:
                profiler.enable()
            summary = run_distributed(subs, errors, splits, config, folder, options)
            if profiler:
                profiler.disable()
        makespan_s = time.time() - started_unix_s
        thread_cpu_s = time.thread_time() - thread_cpu_before
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        rss_after = _proc_status_kib("VmRSS")
        sampled_peak = max(s["driver_rss_mib"] for s in sampler.samples) * 1024
        rss_peak = _proc_status_kib("VmHWM") if method.startswith("VmHWM") else int(sampled_peak)
    finally:
        ray.shutdown()
        cluster.shutdown()
    rows = pd.read_parquet(folder.path / "submissions").set_index("submission_id")
    log_path = root / ACTOR_LOG
    actor_log = {}
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        entry = json.loads(line)
        actor_log[entry["submission_id"]] = entry
    return DriverRun(
        rows=rows, actor_log=actor_log, folder=folder, started_unix_s=started_unix_s, makespan_s=makespan_s,
        slots=summary.slots, statuses=dict(pd.Series(summary.statuses).value_counts()),
        cpu_user_s=usage_after.ru_utime - usage_before.ru_utime,
        cpu_system_s=usage_after.ru_stime - usage_before.ru_stime, main_thread_cpu_s=thread_cpu_s,
        rss_before_kib=rss_before, rss_peak_kib=rss_peak, rss_after_kib=rss_after, rss_peak_method=method,
        ray_calls=dict(counter.counts), busy_share=sampler.busy_share(), samples=tuple(sampler.samples),
        profile_top=_profile_top(profiler) if profiler else (), driver_py_sha256=driver_py_sha256)


def read_tables(run_dir: Path) -> tuple[TableRead, ...]:
    """How long pandas takes to read each table of the run (first read, best of three), and its rows."""
    reads = []
    for table in ("submissions", "splits", "samples"):
        seconds, rows = [], 0
        for _ in range(3):
            start = time.perf_counter()
            frame = pd.read_parquet(run_dir / table)
            seconds.append(time.perf_counter() - start)
            rows = len(frame)
        reads.append(TableRead(table, rows, len(list((run_dir / table).glob("*.parquet"))), seconds[0], min(seconds)))
    return tuple(reads)


def timeline(designed: dict[str, float], run: DriverRun) -> tuple[Timing, ...]:
    """Every submission's timeline, in the driver's launch order (needs every submission's actor log line)."""
    def offset(unix_s: float) -> float:
        return float(unix_s) - run.started_unix_s

    log = run.actor_log
    start = {sid: offset(log[sid]["evaluate_start_unix_s"]) for sid in designed}
    end = {sid: offset(log[sid]["evaluate_end_unix_s"]) for sid in designed}
    received = {sid: offset(run.folder.received_unix_s[sid]) for sid in designed}
    written = {sid: offset(run.folder.written_unix_s[sid]) for sid in designed}
    launch_order = lpt_order(list(designed), lambda sid: sid, designed)
    predecessor = slot_predecessors(launch_order, sorted(designed, key=received.get), run.slots)
    return tuple(Timing(
        submission_id=sid, designed_s=designed[sid], wall_s=float(run.rows.at[sid, "wall_s"]),
        slot_freed_by=predecessor[sid],
        slot_freed_offset_s=0.0 if predecessor[sid] is None else written[predecessor[sid]],
        previous_end_offset_s=0.0 if predecessor[sid] is None else end[predecessor[sid]],
        process_start_offset_s=offset(log[sid]["process_start_unix_s"]), start_offset_s=start[sid],
        end_offset_s=end[sid], received_offset_s=received[sid], written_offset_s=written[sid],
        pid=int(log[sid]["pid"]), torch_loaded=bool(log[sid]["torch_loaded"]),
        actor_rss_mib=log[sid]["rss_kib"] / 1024, actor_cpu_s=float(log[sid]["cpu_s"])) for sid in launch_order)


def peak_concurrency(timings) -> int:
    events = sorted([(t.start_offset_s, 1) for t in timings] + [(t.end_offset_s, -1) for t in timings])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def _git_sha() -> str:
    try:
        head = (REPO_ROOT / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            return (REPO_ROOT / ".git" / head[5:]).read_text().strip()
        return head
    except OSError:
        return "unknown"


def build_record(designed: dict[str, float], run: DriverRun, tables: tuple[TableRead, ...], machine: Machine,
                 settings: Settings) -> ScaleRecord:
    durations = list(designed.values())
    timings = timeline(designed, run)
    first_wave = [t for t in timings if t.slot_freed_by is None]
    handed_over = [t for t in timings if t.slot_freed_by is not None] or first_wave
    gaps = np.array([t.handover_gap_s for t in timings])
    ideal_s, bound_s = lpt_makespan(durations, settings.gpus), lower_bound(durations, settings.gpus)
    cpu_s = run.cpu_user_s + run.cpu_system_s
    count = len(designed)
    loads = [s["load_1min"] for s in run.samples] or [0.0]
    return ScaleRecord(
        machine=machine, memory_total_gib=_meminfo_kib("MemTotal") / 2 ** 20,
        load_average_1min_min_during=min(loads), load_average_1min_max_during=max(loads),
        driver_py_sha256=run.driver_py_sha256, esr_eval_git_sha=_git_sha(), settings=settings, statuses=run.statuses,
        makespan_s=run.makespan_s, ideal_lpt_s=ideal_s, lower_bound_s=bound_s,
        makespan_over_lpt=run.makespan_s / ideal_s, makespan_over_lower_bound=run.makespan_s / bound_s,
        target_ratio=TARGET_RATIO, target_met=run.makespan_s / ideal_s <= TARGET_RATIO,
        designed_total_s=float(np.sum(durations)), designed_min_s=float(np.min(durations)),
        designed_median_s=float(np.median(durations)), designed_max_s=float(np.max(durations)),
        utilisation=float(np.sum([t.wall_s for t in timings])) / (settings.gpus * run.makespan_s),
        driver_cpu_s=cpu_s, driver_cpu_user_s=run.cpu_user_s, driver_cpu_system_s=run.cpu_system_s,
        driver_main_thread_cpu_s=run.main_thread_cpu_s,
        driver_cpu_ms_per_submission=1000 * cpu_s / count, driver_cpu_share_of_one_core=cpu_s / run.makespan_s,
        driver_rss_before_mib=run.rss_before_kib / 1024, driver_rss_peak_mib=run.rss_peak_kib / 1024,
        driver_rss_after_mib=run.rss_after_kib / 1024,
        driver_rss_peak_kib_per_submission=(run.rss_peak_kib - run.rss_before_kib) / count,
        driver_rss_peak_method=run.rss_peak_method, driver_ray_calls=run.ray_calls,
        machine_cpu_busy_share=run.busy_share,
        memory_available_min_gib=min(s["mem_available_gib"] for s in run.samples) if run.samples else float("nan"),
        actors_torch_free=sum(not t.torch_loaded for t in timings), actors_logged=len(run.actor_log),
        distinct_actor_processes=len({(t.pid, round(t.process_start_offset_s)) for t in timings}),
        peak_concurrent_evaluations=peak_concurrency(timings),
        actor_rss_mib=Spread.of(t.actor_rss_mib for t in timings),
        actor_cpu_s=Spread.of(t.actor_cpu_s for t in timings),
        startup_first_wave_s=Spread.of(t.startup_s for t in first_wave),
        startup_handover_s=Spread.of(t.startup_s for t in handed_over),
        in_process_startup_s=Spread.of(t.in_process_startup_s for t in timings),
        handover_gap_s=Spread.of(gaps),
        eval_overhead_s=Spread.of(t.wall_s - t.designed_s for t in timings),
        result_return_s=Spread.of(t.received_offset_s - t.end_offset_s for t in timings),
        row_write_s=Spread.of(t.written_offset_s - t.received_offset_s for t in timings),
        predicted_makespan_s=lpt_makespan([t.designed_s + gaps.mean() for t in timings], settings.gpus),
        table_reads=tables, profile_top=run.profile_top, samples=run.samples, timings=timings)


def run_benchmark(settings: Settings, workdir: Path) -> ScaleRecord:
    designed = write_field(workdir / "subs", designed_durations(settings.submissions, settings.seed, settings.scale))
    load_before = os.getloadavg()[0]
    run = run_field(designed, workdir / "subs", workdir, settings.nodes, settings.gpus_per_node, settings.profiled,
                    None if settings.driver_file is None else Path(settings.driver_file))
    missing = sorted(set(designed) - set(run.actor_log))
    if missing or set(run.rows.index) != set(designed):
        raise RuntimeError(f"{len(missing)} submission(s) left no actor log line and "
                           f"{len(set(designed) - set(run.rows.index))} no row; statuses {run.statuses}; "
                           f"first missing: {missing[:3]}")
    tables = read_tables(run.folder.path)
    return build_record(designed, run, tables, machine_facts(load_before), settings)


def markdown_table(record: ScaleRecord) -> str:
    r, m, s = record, record.machine, record.settings

    def spread(value: Spread) -> str:
        return f"{value.mean:.2f} (p90 {value.p90:.2f}, max {value.max:.2f})"

    calls = r.driver_ray_calls
    per_sub = ", ".join(f"{name} {calls[name] / s.submissions:.1f}" for name in COUNTED_RAY_CALLS)
    rows = [
        ("statuses", ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))),
        ("makespan (s)", f"{r.makespan_s:.1f}"),
        ("ideal: LPT makespan of the designed durations (s)", f"{r.ideal_lpt_s:.1f}"),
        ("lower bound max(longest, total / GPUs) (s)", f"{r.lower_bound_s:.1f}"),
        ("**makespan / LPT ideal**",
         f"**{r.makespan_over_lpt:.3f}** (target {r.target_ratio:.2f}: {'met' if r.target_met else 'missed'})"),
        ("makespan / lower bound", f"{r.makespan_over_lower_bound:.3f}"),
        ("utilisation: sum wall_s / (GPUs x makespan)", f"{r.utilisation:.3f}"),
        ("driver CPU, total (s): user + system", f"{r.driver_cpu_s:.1f} ({r.driver_cpu_user_s:.1f} + "
                                                  f"{r.driver_cpu_system_s:.1f})"),
        ("driver CPU per submission (ms)", f"{r.driver_cpu_ms_per_submission:.1f}"),
        ("... of which the loop's own thread (s)", f"{r.driver_main_thread_cpu_s:.1f}"),
        ("driver CPU / makespan (share of one core)", f"{r.driver_cpu_share_of_one_core:.3f}"),
        ("driver RSS before / peak / after (MiB)",
         f"{r.driver_rss_before_mib:.0f} / {r.driver_rss_peak_mib:.0f} / {r.driver_rss_after_mib:.0f}"),
        ("driver RSS growth to peak per submission (KiB)", f"{r.driver_rss_peak_kib_per_submission:.1f}"),
        ("driver ray calls per submission", per_sub),
        ("machine CPU busy during the run (share of all cores)", f"{r.machine_cpu_busy_share:.2f}"),
        ("memory available, lowest (GiB)", f"{r.memory_available_min_gib:.1f}"),
        ("actors torch-free / logged / distinct processes (pid, start)",
         f"{r.actors_torch_free} / {r.actors_logged} / {r.distinct_actor_processes}"),
        ("peak evaluations running at once", f"{r.peak_concurrent_evaluations}"),
        ("actor RSS at the end of its evaluation (MiB)", spread(r.actor_rss_mib)),
        ("actor process CPU, start-up to the end of its evaluation (s)", spread(r.actor_cpu_s)),
        ("actor start-up, first wave: driver start -> evaluation (s)", spread(r.startup_first_wave_s)),
        ("actor start-up after a hand-over: slot freed -> evaluation (s)", spread(r.startup_handover_s)),
        ("actor process created -> evaluation started (s)", spread(r.in_process_startup_s)),
        ("hand-over gap, previous end -> start (s)", spread(r.handover_gap_s)),
        ("evaluation overhead, wall_s - designed (s)", spread(r.eval_overhead_s)),
        ("result return to the driver (s)", spread(r.result_return_s)),
        ("row write (s)", spread(r.row_write_s)),
        ("predicted: LPT of designed + mean gap (s)", f"{r.predicted_makespan_s:.1f}"),
    ]
    for read in r.table_reads:
        rows.append((f"pd.read_parquet(run/{read.table}): rows, parts; first / best of 3 (s)",
                     f"{read.rows:,}, {read.files:,}; {read.first_read_s:.3f} / {read.best_of_3_s:.3f}"))
    header = (f"{s.submissions} sleeping submissions (seed {s.seed}; realistic durations log-normal median "
              f"{s.real_median_s:g} s, sigma {s.real_sigma:g}, floor {s.real_floor_s:g} s, times scale {s.scale:g}: "
              f"{r.designed_min_s:.1f}-{r.designed_max_s:.1f} s, median {r.designed_median_s:.1f} s, "
              f"{r.designed_total_s:,.0f} s in all) on {s.nodes} simulated nodes x {s.gpus_per_node} fake GPUs "
              f"(+ a GPU-0 head), {s.timing_protocol} rows ({s.samples_per_submission} samples per submission)"
              f"{'; PROFILED (cProfile inflates driver CPU)' if s.profiled else ''}"
              f"{f'; driver from {s.driver_file}' if s.driver_file else ''}; {m.cpu_model}, {m.cpu_cores} "
              f"cores, {r.memory_total_gib:.0f} GiB, 1-min load {m.load_average_1min_before:.1f} before / "
              f"{r.load_average_1min_min_during:.1f}-{r.load_average_1min_max_during:.1f} during / "
              f"{m.load_average_1min_after:.1f} after; Ray {m.ray_version}, torch {m.torch_version} (driver only), "
              f"Python {m.python_version}; esr_eval {r.esr_eval_git_sha[:7]}, driver.py sha256 "
              f"{r.driver_py_sha256[:12]}; {m.date}")
    table = ["| figure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join([header, "", *table]) + "\n"


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=1000, help="number of sleeping submissions")
    parser.add_argument("--nodes", type=int, default=8, help="simulated GPU nodes (besides a GPU-0 head)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="fake GPUs per simulated node")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                        help=f"multiply the realistic durations (median {REAL_MEDIAN_S:g} s) by this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the duration draw")
    parser.add_argument("--profile", action="store_true",
                        help="run the driver under cProfile, CPU time of its thread (inflates its CPU figures)")
    parser.add_argument("--driver-file", type=Path, default=None,
                        help="A/B a driver change: run this copy of esr_eval/driver.py (default: the package's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="writes PREFIX.json and PREFIX.md (default benchmarks/results/scale_driver-<host>-<date>)")
    args = parser.parse_args(argv)
    if not 1 <= args.submissions <= 10000:
        parser.error("--submissions must be 1..10000 (submission ids have four digits)")
    if args.nodes < 1 or args.gpus_per_node < 1 or args.scale <= 0:
        parser.error("--nodes and --gpus-per-node must be >= 1 and --scale > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_TMPDIR", "/tmp/rt")  # Ray's socket paths must stay short
    prefix = args.out or HERE / "results" / f"scale_driver-{socket.gethostname()}-{datetime.date.today().isoformat()}"
    settings = Settings(submissions=args.submissions, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                        gpus=args.nodes * args.gpus_per_node, scale=args.scale, seed=args.seed,
                        real_median_s=REAL_MEDIAN_S, real_sigma=REAL_SIGMA, real_floor_s=REAL_FLOOR_S,
                        timing_protocol=DEFAULT.protocol_id,
                        samples_per_submission=len(embedded_split().pairs) * DEFAULT.repeats, profiled=args.profile,
                        driver_file=None if args.driver_file is None else str(args.driver_file.resolve()))
    with tempfile.TemporaryDirectory(prefix="esr-scale-") as workdir:
        record = run_benchmark(settings, Path(workdir))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    table = markdown_table(record)
    Path(f"{prefix}.json").write_text(json.dumps(dataclasses.asdict(record), indent=1, default=_json_default) + "\n")
    Path(f"{prefix}.md").write_text(table)
    print(f"record: {prefix}.json, {prefix}.md\n\n{table}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
