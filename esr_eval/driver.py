"""The Ray layer: one fresh actor per submission on a dedicated device; the driver is the only writer.

Contract
--------
* Each submission runs in its own new actor process (a global flag one team sets cannot reach
  the next), with ``num_gpus=1`` (never fractional) and ``num_cpus=0`` when the cluster has
  GPUs, else ``num_cpus=cpus_per_actor`` on CPU resources; the scheduling mode is recorded.
  At most as many actors run as there are slots (GPUs, or CPUs ÷ cpus_per_actor), started in
  longest-expected-first order.
* GPU runs stay GPU runs: ``config.device`` ``auto`` becomes ``cuda`` when the cluster schedules
  on GPUs and ``cpu`` otherwise; a ``cuda`` run on a cluster without GPUs is refused
  (:class:`~esr_eval.nodes.GpuWaitError`), and an actor that lands where torch sees no CUDA
  writes an ``error`` row saying so — never a CPU-timed ``ok`` row.
* As each submission finishes, its rows are written to the run folder before the driver waits
  for the next one. A progress bar shows done / failed / running and an ETA.
* Environments (:mod:`esr_eval.environments`): a submission with ``requirements:`` gets an actor
  with its own Ray ``runtime_env`` (pip, cached per requirement set and node); a requirement that
  would replace what the evaluator runs on is an ``error`` row (stage ``requirements``) before
  anything is installed. Rows record ``requirements_sha256``, ``requirements_installed`` (read in
  the actor) and ``actor_startup_s``.
* Clocks (monotonic, on the driver): an actor has ``startup_timeout_s`` to start (scheduling,
  building its environment, process start, imports) → ``status=startup_timeout``; the submission's own ``timeout_s`` starts
  only once its actor answers that it is running → past it the actor is killed, ``status=timeout``.
* Faults: an exception inside the submission → ``status=error`` from the actor itself. An actor
  that dies is not judged at once, because its error can arrive before the cluster declares its
  node dead: a node that Ray's error says died, or that the cluster marks dead within
  ``node_grace_s``, means the submission is retried on another node, up to ``max_attempts``
  (attempts recorded). Only a node that is still alive ``node_settle_s`` after the error and then
  answers a task pinned to it proves the actor died on a healthy node → ``status=crashed`` with
  Ray's message. While any verdict is pending no new actor is launched, so nothing is placed on
  a node that is failing but not yet declared dead.
* Homogeneity: the GPU models of all alive GPU nodes must agree unless ``allow_mixed_gpus``;
  every row records the device model, and ``gpu_model`` pins one (Ray ``accelerator_type``).
* Resume: submissions whose fingerprint is already complete in the run folder, measured on the
  same device kind (and, on GPUs, the cluster's GPU model), are skipped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError
from tqdm import tqdm

from esr_eval.attribution import NodeLosses
from esr_eval.environments import installed_versions, plan
from esr_eval.evaluate import EvaluationConfig, evaluate_submission, manifest_failure, manifest_fields
from esr_eval.manifest import Submission, SubmissionError
from esr_eval.nodes import GpuWaitError, alive_nodes, gpu_count, gpu_models, node_alive, probe_node
from esr_eval.records import EvaluationResult, SubmissionRow
from esr_eval.run import RunFolder, fingerprint
from esr_eval.scheduling import lpt_order

POLL_S = 0.5
SLOTS_REFRESH_S = POLL_S  # the cluster's slot count is re-read before any launch, and at least this often
_NODE_DIED = re.compile(r"its node has died|node was terminated", re.IGNORECASE)
_NODE_ID = re.compile(r"Node Id: ([0-9a-f]{8,})", re.IGNORECASE)


class HomogeneityError(RuntimeError):
    """The cluster mixes GPU models and the run did not allow it."""


@dataclass(frozen=True)
class DriverOptions:
    timeout_s: float = 1800.0
    startup_timeout_s: float = 900.0
    max_attempts: int = 3
    cpus_per_actor: int = 1
    allow_mixed_gpus: bool = False
    gpu_model: str | None = None
    progress: bool = True
    expected_s: dict = field(default_factory=dict)
    node_settle_s: float = 3.0
    node_grace_s: float = 60.0
    actor_class: type | None = None  # what each actor runs; None: SubmissionActor


@dataclass(frozen=True)
class DriverSummary:
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    statuses: dict
    scheduling: str
    slots: int
    gpu_models: tuple[str, ...]
    makespan_s: float
    device: str
    attempts: dict


def _failure_row(sub: Submission, run_id: str, status: str, message: str, stage: str = "actor") -> SubmissionRow:
    return SubmissionRow(run_id=run_id, status=status, error=f"[{sub.submission_id}] {message}", error_stage=stage,
                         **manifest_fields(sub))


class SubmissionActor:
    """Runs exactly one submission, then is killed; a new process per submission.

    The evaluator's own heavy imports, and the start of the sandbox process the submission will
    run in (:func:`esr_eval.sandbox.prestart`), happen while the actor starts, so they count as
    start-up (``startup_timeout_s``), never against the submission's ``timeout_s``.
    """

    def __init__(self):
        import fvcore.nn  # noqa: F401  (imported lazily by complexity; seconds on a loaded node)

        from esr_eval.sandbox import prestart

        prestart()  # the sandbox's interpreter and imports start now, not inside the submission's wall

    def node(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def evaluate(self, sub: Submission, splits, config: EvaluationConfig, run_id: str) -> EvaluationResult:
        import torch

        node_id = ray.get_runtime_context().get_node_id()
        if config.device == "cuda" and not torch.cuda.is_available():
            message = (f"this is a GPU run, but the actor landed on node {node_id[:12]} ({socket.gethostname()}) where "
                       f"torch {torch.__version__} sees no CUDA device (CUDA_VISIBLE_DEVICES="
                       f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); nothing was timed. Fix: install a CUDA build of "
                       "torch and the NVIDIA driver on every GPU worker, or pass --device cpu for a CPU-timed run")
            row = _failure_row(sub, run_id, "error", message, stage="device")
            return EvaluationResult(submission=dataclasses.replace(row, node_id=node_id, hostname=socket.gethostname(),
                                                                   device_kind="cpu"))
        result = evaluate_submission(sub, splits, config, run_id)
        installed = installed_versions(plan(sub).packages)  # in this actor's environment
        return dataclasses.replace(result, submission=dataclasses.replace(
            result.submission, node_id=node_id, requirements_installed=installed))


def _slots(options: DriverOptions) -> tuple[str, int]:
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) > 0:
        return "gpu", gpu_count(options.gpu_model)
    return "cpu", max(1, int(resources.get("CPU", 1)) // options.cpus_per_actor)


def _resolve_device(device: str, scheduling: str) -> str:
    """``cuda`` for a GPU run, ``cpu`` for a CPU run; a GPU run without GPUs is refused."""
    if device == "auto":
        return "cuda" if scheduling == "gpu" else "cpu"
    if device == "cuda" and scheduling != "gpu":
        raise GpuWaitError("this is a GPU run (--device cuda) but the cluster has no GPU; nothing would be timed on "
                           "one. Fix: start the GPU workers (or wait for them with --wait-for-gpus SECONDS), or pass "
                           "--device cpu for a CPU-timed run")
    return device


@dataclass
class _Job:
    sub: Submission
    actor: object
    ref: object
    node_ref: object
    attempt: int
    launched_s: float
    running_since_s: float | None = None
    node_id: str | None = None
    error: BaseException | None = None
    suspect_since_s: float | None = None
    probe: object = None


class _Driver:
    """The scheduling loop of one run (state kept here, rows written through ``folder``)."""

    def __init__(self, subs, splits, config, folder: RunFolder, options: DriverOptions, keys: dict, slots: int,
                 actor_class, resources: dict, environments: dict):
        self.splits, self.config, self.folder, self.options, self.keys = splits, config, folder, options, keys
        self.slots, self.actor_class, self.resources, self.environments = slots, actor_class, resources, environments
        self.queue = [(s, 1) for s in lpt_order(subs, lambda s: s.submission_id, options.expected_s)]
        self.jobs: list[_Job] = []
        self.losses = NodeLosses()
        self.statuses: dict[str, str] = {}
        self.attempts: dict[str, int] = {}
        self.written: list[str] = []
        self.bar = tqdm(total=len(self.queue), desc="submissions", unit="sub", disable=not options.progress,
                        file=sys.stderr)
        self.slots_read_s = time.monotonic()
        self.shown: tuple[int, int] | None = None

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    def finish(self, job: _Job, result: EvaluationResult) -> None:
        sid = job.sub.submission_id
        startup_s = None if job.running_since_s is None else job.running_since_s - job.launched_s
        result = dataclasses.replace(result, submission=dataclasses.replace(
            result.submission, actor_startup_s=startup_s, requirements_sha256=self.environments[sid].sha256))
        self.folder.write_result(result, self.keys[sid], attempts=job.attempt)
        self.statuses[sid], self.attempts[sid] = result.submission.status, job.attempt
        self.written.append(sid)
        self._drop(job)
        self.bar.update(1)

    def fail(self, job: _Job, status: str, message: str) -> None:
        self.finish(job, EvaluationResult(submission=_failure_row(job.sub, self.run_id, status, message)))

    def _drop(self, job: _Job) -> None:
        ray.kill(job.actor)
        if job in self.jobs:
            self.jobs.remove(job)

    def launch(self, sub: Submission, attempt: int) -> None:
        environment = self.environments[sub.submission_id].runtime_env()
        options = {**self.resources, **({"runtime_env": environment} if environment else {})}
        actor = self.actor_class.options(**options).remote()
        node_ref = actor.node.remote()  # actor calls run in order: this answers just before evaluate starts
        ref = actor.evaluate.remote(sub, self.splits, self.config, self.run_id)
        self.jobs.append(_Job(sub, actor, ref, node_ref, attempt, time.monotonic()))

    def run(self) -> None:
        try:
            while self.queue or self.jobs:
                if not any(j.suspect_since_s is not None for j in self.jobs):
                    while self.queue and len(self.jobs) < self.slots:
                        self.launch(*self.queue.pop(0))
                ready = self._wait()
                now = time.monotonic()
                for job in list(self.jobs):
                    self._step(job, now, ready)
                # The slot count (two GCS round trips) is re-read before any launch it could change, and
                # every SLOTS_REFRESH_S while submissions wait, so a node that joins is used within that time.
                if self.queue and (len(self.jobs) < self.slots or now - self.slots_read_s >= SLOTS_REFRESH_S):
                    self._read_slots()
                self._show_progress()
            self._read_slots()  # the cluster as the run ended, for the summary
        finally:
            self.bar.close()

    def _read_slots(self) -> None:
        self.slots, self.slots_read_s = max(1, _slots(self.options)[1]), time.monotonic()

    def _show_progress(self) -> None:
        shown = (len(self.written), len(self.jobs))
        if shown != self.shown:  # the postfix changes only when a submission is written or launched
            self.shown = shown
            failed = sum(s not in ("ok", "skipped") for s in self.statuses.values())
            self.bar.set_postfix(done=len(self.written) - failed, failed=failed, running=len(self.jobs),
                                 refresh=False)

    def _wait(self) -> set:
        """Sleep until some job has news (or POLL_S passes); the refs that are ready now.

        Two ``ray.wait`` calls per pass, whatever the number of jobs: one that blocks for the first
        news, one (no wait) that collects everything else ready by then.
        """
        refs = [j.ref for j in self.jobs if j.suspect_since_s is None]
        refs += [j.node_ref for j in self.jobs if j.running_since_s is None and j.suspect_since_s is None]
        refs += [j.probe for j in self.jobs if j.probe is not None]
        if not refs:
            time.sleep(POLL_S)
            return set()
        ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
        if ready and len(refs) > 1:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return set(ready)

    def _step(self, job: _Job, now: float, ready: set) -> None:
        if job.suspect_since_s is not None:
            self._judge(job, now)
            return
        if job.running_since_s is None and job.node_ref in ready:
            try:
                job.node_id = ray.get(job.node_ref)["node_id"]
                job.running_since_s = time.monotonic()
            except RayActorError:
                pass  # the actor died before it ran: its evaluate call says how, below
        if job.ref in ready:
            self._settle(job, now)
        elif job.running_since_s is None and now - job.launched_s > self.options.startup_timeout_s:
            self.fail(job, "startup_timeout",
                      f"the actor did not start within {self.options.startup_timeout_s:.0f} s, so no submission code "
                      "ran (not the submission's fault; retried on resume). Fix: check `ray status` for free "
                      "GPUs and the node's logs, or raise --startup-timeout")
        elif job.running_since_s is not None and now - job.running_since_s > self.options.timeout_s:
            self.fail(job, "timeout",
                      f"no result within {self.options.timeout_s:.0f} s; the actor was killed. Fix: check the model "
                      "for hangs, or raise --timeout if it is merely slow")

    def _settle(self, job: _Job, now: float) -> None:
        """A finished call: its result, or (the actor died) the start of a verdict on its node."""
        try:
            result = ray.get(job.ref)
        except RayActorError as exc:
            job.error, job.suspect_since_s = exc, now
            job.node_id = job.node_id or _node_from_error(exc)
            self._judge(job, now)
        except Exception as exc:  # e.g. a result that could not be deserialised
            self.fail(job, "crashed", f"the result could not be read (attempt {job.attempt}): {_brief(exc)}")
        else:
            self.finish(job, result)

    def _judge(self, job: _Job, now: float) -> None:
        """Retry (node lost), crashed (node healthy), or keep waiting for the node's fate."""
        if job.node_id is not None and (_node_died(job.error) or not node_alive(job.node_id)):
            self._retry(job)
            return
        if job.probe is None and job.node_id is not None and now - job.suspect_since_s >= self.options.node_settle_s:
            job.probe = probe_node(job.node_id)
        if job.node_id is None or _probe_answered(job.probe):
            self.fail(job, "crashed", f"the actor process died (attempt {job.attempt}); its node is healthy: "
                                      f"{_brief(job.error)}")
        elif now - job.suspect_since_s > self.options.node_grace_s:
            self.fail(job, "crashed", f"the actor died and its node neither died nor answered within "
                                      f"{self.options.node_grace_s:.0f} s (attempt {job.attempt}): {_brief(job.error)}")

    def _retry(self, job: _Job) -> None:
        """The actor went down with its node: run the submission again elsewhere, within max_attempts
        of losses charged to it; a submission alone in common to two node losses is their cause."""
        sid = job.sub.submission_id
        self.losses.record(job.node_id, sid, {j.sub.submission_id for j in self.jobs if j.node_id == job.node_id})
        if self.losses.culprit(sid):
            self.fail(job, "crashed", f"{self.losses.describe(sid)} (attempt {job.attempt}). Fix: the model must not "
                                      f"take its node down (host memory, processes, the node's services); "
                                      f"{_brief(job.error)}")
        elif self.losses.charged(sid) < self.options.max_attempts:
            self._drop(job)
            self.queue.insert(0, (job.sub, job.attempt + 1))
        else:
            self.fail(job, "crashed", f"its node was lost {job.attempt} times: {_brief(job.error)}")


def _ready(ref) -> bool:
    return bool(ray.wait([ref], num_returns=1, timeout=0)[0])


def _probe_answered(probe) -> bool:
    if probe is None or not _ready(probe):
        return False
    try:
        ray.get(probe)
    except Exception:  # the node could not run the probe: not an answer
        return False
    return True


def _node_died(exc: BaseException | None) -> bool:
    if isinstance(exc, RayActorError) and exc.preempted:
        return True
    return bool(_NODE_DIED.search(str(exc or "")))


def _node_from_error(exc: BaseException) -> str | None:
    match = _NODE_ID.search(str(exc))
    return match.group(1) if match else None


def _brief(exc: BaseException | None) -> str:
    return " ".join(line.strip() for line in str(exc).strip().splitlines()[:8])


def run_distributed(subs: list[Submission], manifest_errors: list[SubmissionError], splits,
                    config: EvaluationConfig, folder: RunFolder, options: DriverOptions) -> DriverSummary:
    """Evaluate every submission on the connected Ray cluster, writing rows as they finish."""
    started = time.monotonic()
    models = gpu_models(alive_nodes())
    if len(models) > 1 and not options.allow_mixed_gpus and not options.gpu_model:
        raise HomogeneityError(f"the cluster mixes GPU models {sorted(models)}; timings would not be comparable. "
                               "Pin one with --gpu-model NAME or pass --allow-mixed-gpus (recorded in run.json)")
    scheduling, slots = _slots(options)
    if slots < 1:
        raise HomogeneityError(f"no GPU of model {options.gpu_model!r} in the cluster")
    device = _resolve_device(config.device, scheduling)
    config = dataclasses.replace(config, device=device)
    resources = ({"num_gpus": 1, "num_cpus": 0} if scheduling == "gpu"
                 else {"num_gpus": 0, "num_cpus": options.cpus_per_actor})
    if scheduling == "gpu" and options.gpu_model:
        resources["accelerator_type"] = options.gpu_model
    if scheduling == "cpu" and config.torch_threads is None:
        config = dataclasses.replace(config, torch_threads=options.cpus_per_actor)
    actor_class = ray.remote(max_restarts=0, max_task_retries=0)(options.actor_class or SubmissionActor)
    environments, refused = {}, []
    for sub in subs:
        try:
            environments[sub.submission_id] = plan(sub)
        except SubmissionError as exc:  # refused before anything is installed
            refused.append(EvaluationResult(submission=_failure_row(
                sub, folder.run_id, "error", f"{exc.field_name}: {exc.problem}. Fix: {exc.fix}", stage=exc.stage)))
    subs = [s for s in subs if s.submission_id in environments]

    for error in manifest_errors:
        folder.write_result(manifest_failure(error, folder.run_id), fingerprint=None)
    for result in refused:
        folder.write_result(result, fingerprint=None)
    pinned = {options.gpu_model} if options.gpu_model else models
    done = folder.completed(device_kind=device, gpu_models=pinned if device == "cuda" else None)
    keys = {s.submission_id: fingerprint(s, config.protocol.protocol_id, splits) for s in subs}
    skipped = tuple(s.submission_id for s in subs if done.get(s.submission_id) == keys[s.submission_id])
    driver = _Driver([s for s in subs if s.submission_id not in skipped], splits, config, folder, options, keys,
                     slots, actor_class, resources, environments)
    not_run = [e.submission_id for e in manifest_errors] + [r.submission.submission_id for r in refused]
    driver.statuses.update({sid: "error" for sid in not_run})
    driver.written.extend(not_run)
    driver.run()
    return DriverSummary(written=tuple(driver.written), skipped=skipped, statuses=driver.statuses,
                         scheduling=scheduling, slots=driver.slots, gpu_models=tuple(sorted(models)),
                         makespan_s=time.monotonic() - started, device=device, attempts=driver.attempts)
