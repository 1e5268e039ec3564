"""The Ray layer: one fresh actor per submission on a dedicated device; the driver is the only writer.

Contract
--------
* Each submission runs in its own new actor process (a global flag one team sets cannot reach
  the next), with ``num_gpus=1`` (never fractional) and ``num_cpus=0`` when the cluster has
  GPUs, else ``num_cpus=cpus_per_actor`` on CPU resources; the scheduling mode is recorded.
  At most as many actors run as there are slots (GPUs, or CPUs ÷ cpus_per_actor), started in
  longest-expected-first order.
* As each submission finishes, its rows are written to the run folder before the driver waits
  for the next one. A progress bar shows done / failed / running and an ETA.
* Faults: past ``timeout_s`` the actor is killed → ``status=timeout``; an actor that dies
  (exception escaping, ``os._exit``, segfault) → ``status=crashed`` with Ray's message; an
  actor lost with its node → retried on another node up to ``max_attempts`` (attempts
  recorded); an exception inside the submission → ``status=error`` from the actor itself.
* Homogeneity: the GPU models of all alive GPU nodes must agree unless ``allow_mixed_gpus``;
  every row records the device model, and ``gpu_model`` pins one (Ray ``accelerator_type``).
* Resume: submissions whose fingerprint is already complete in the run folder are skipped.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from tqdm import tqdm

from esr_eval.evaluate import (EvaluationConfig, EvaluationResult, evaluate_submission, manifest_failure,
                               manifest_fields)
from esr_eval.manifest import Submission, SubmissionError
from esr_eval.records import SubmissionRow
from esr_eval.run import RunFolder, fingerprint
from esr_eval.scheduling import lpt_order

RAY_ENV = {"RAY_AUTH_MODE": "disabled"}
POLL_S = 0.5
NODE_DEATH_GRACE_S = 60.0


class HomogeneityError(RuntimeError):
    """The cluster mixes GPU models and the run did not allow it."""


@dataclass(frozen=True)
class DriverOptions:
    timeout_s: float = 1800.0
    max_attempts: int = 3
    cpus_per_actor: int = 1
    allow_mixed_gpus: bool = False
    gpu_model: str | None = None
    progress: bool = True
    expected_s: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DriverSummary:
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    statuses: dict
    scheduling: str
    slots: int
    gpu_models: tuple[str, ...]
    makespan_s: float


class SubmissionActor:
    """Runs exactly one submission, then is killed; a new process per submission."""

    def node(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def evaluate(self, sub: Submission, splits, config: EvaluationConfig, run_id: str) -> EvaluationResult:
        import torch

        if config.device == "auto":
            config = dataclasses.replace(config, device="cuda" if torch.cuda.is_available() else "cpu")
        result = evaluate_submission(sub, splits, config, run_id)
        node_id = ray.get_runtime_context().get_node_id()
        return dataclasses.replace(result, submission=dataclasses.replace(result.submission, node_id=node_id))


def apply_ray_env() -> None:
    """The same Ray environment everywhere (driver, tests, cluster commands)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def _gpu_models(alive_nodes: list[dict]) -> set[str]:
    models = set()
    for node in alive_nodes:
        resources = node.get("Resources", {})
        if resources.get("GPU", 0) > 0:
            tags = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
            models.update(tags or ["unknown"])
    return models


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _slots(options: DriverOptions) -> tuple[str, int]:
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus > 0:
        if options.gpu_model:
            gpus = int(sum(n["Resources"].get("GPU", 0) for n in _alive_nodes()
                           if f"accelerator_type:{options.gpu_model}" in n["Resources"]))
        return "gpu", gpus
    return "cpu", max(1, int(resources.get("CPU", 1)) // options.cpus_per_actor)


def _failure_row(sub: Submission, run_id: str, status: str, message: str) -> SubmissionRow:
    return SubmissionRow(run_id=run_id, status=status, error=f"[{sub.submission_id}] {message}", error_stage="actor",
                         **manifest_fields(sub))


@dataclass
class _Running:
    sub: Submission
    actor: object
    ref: object
    node_ref: object
    attempt: int
    started_s: float
    node_id: str | None = None
    unreachable_since: float | None = None
    error: BaseException | None = None


def _node_alive(node_id: str | None) -> bool:
    if node_id is None:
        return True
    return any(n["NodeID"] == node_id for n in _alive_nodes())


def run_distributed(subs: list[Submission], manifest_errors: list[SubmissionError], splits,
                    config: EvaluationConfig, folder: RunFolder, options: DriverOptions) -> DriverSummary:
    """Evaluate every submission on the connected Ray cluster, writing rows as they finish."""
    started = time.time()
    models = _gpu_models(_alive_nodes())
    if len(models) > 1 and not options.allow_mixed_gpus and not options.gpu_model:
        raise HomogeneityError(f"the cluster mixes GPU models {sorted(models)}; timings would not be comparable. "
                               "Pin one with --gpu-model NAME or pass --allow-mixed-gpus (recorded in run.json)")
    scheduling, slots = _slots(options)
    if slots < 1:
        raise HomogeneityError(f"no GPU of model {options.gpu_model!r} in the cluster")
    resources = ({"num_gpus": 1, "num_cpus": 0} if scheduling == "gpu"
                 else {"num_gpus": 0, "num_cpus": options.cpus_per_actor})
    if scheduling == "gpu" and options.gpu_model:
        resources["accelerator_type"] = options.gpu_model
    if scheduling == "cpu" and config.torch_threads is None:
        config = dataclasses.replace(config, torch_threads=options.cpus_per_actor)
    actor_class = ray.remote(max_restarts=0, max_task_retries=0)(SubmissionActor).options(**resources)

    for error in manifest_errors:
        folder.write_result(manifest_failure(error, folder.run_id), fingerprint=None)
    done = folder.completed()
    keys = {s.submission_id: fingerprint(s, config.protocol.protocol_id, splits) for s in subs}
    skipped = tuple(s.submission_id for s in subs if done.get(s.submission_id) == keys[s.submission_id])
    queue = [(s, 1) for s in lpt_order([s for s in subs if s.submission_id not in skipped],
                                       lambda s: s.submission_id, options.expected_s)]
    statuses = {e.submission_id: "error" for e in manifest_errors}
    written: list[str] = [e.submission_id for e in manifest_errors]
    running: dict[object, _Running] = {}
    unreachable: list[_Running] = []
    bar = tqdm(total=len(queue), desc="submissions", unit="sub", disable=not options.progress, file=sys.stderr)

    def finish(job: _Running, result: EvaluationResult) -> None:
        folder.write_result(result, keys[job.sub.submission_id], attempts=job.attempt)
        statuses[job.sub.submission_id] = result.submission.status
        written.append(job.sub.submission_id)
        ray.kill(job.actor)
        bar.update(1)

    def launch(sub: Submission, attempt: int) -> None:
        actor = actor_class.remote()
        node_ref = actor.node.remote()  # actor calls run in order: this answers before evaluate starts
        job = _Running(sub, actor, actor.evaluate.remote(sub, splits, config, folder.run_id),
                       node_ref, attempt, time.time())
        running[job.ref] = job

    try:
        while queue or running or unreachable:
            while queue and len(running) + len(unreachable) < slots:
                launch(*queue.pop(0))
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S) if running else ([], [])
            for ref in ready:
                job = running.pop(ref)
                _settle(job, finish, queue, unreachable, options, folder.run_id)
            for job in list(unreachable):
                _resolve_unreachable(job, finish, queue, unreachable, options, folder.run_id)
            now = time.time()
            for ref, job in list(running.items()):
                _note_node(job)
                if now - job.started_s > options.timeout_s:
                    running.pop(ref)
                    finish(job, EvaluationResult(submission=_failure_row(
                        job.sub, folder.run_id, "timeout",
                        f"no result within {options.timeout_s:.0f} s; the actor was killed. Fix: check the model "
                        "for hangs, or raise --timeout if it is merely slow")))
            slots = max(1, _slots(options)[1]) if running or queue else slots
            failed = sum(s != "ok" for s in statuses.values())
            bar.set_postfix(done=len(written) - failed, failed=failed, running=len(running), refresh=False)
    finally:
        bar.close()
    return DriverSummary(written=tuple(written), skipped=skipped, statuses=statuses, scheduling=scheduling,
                         slots=slots, gpu_models=tuple(sorted(models)), makespan_s=time.time() - started)


def _note_node(job: _Running) -> None:
    """Record which node the actor landed on, once known."""
    if job.node_id is None:
        try:
            job.node_id = ray.get(job.node_ref, timeout=0)["node_id"]
        except (GetTimeoutError, RayActorError):
            pass


def _crashed(job: _Running, run_id: str, reason: str, exc: BaseException) -> EvaluationResult:
    detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:6])
    return EvaluationResult(submission=_failure_row(job.sub, run_id, "crashed",
                                                    f"{reason} (attempt {job.attempt}): {detail}"))


def _retry_or_give_up(job: _Running, finish, queue: list, options: DriverOptions, run_id: str,
                      exc: BaseException) -> None:
    """The actor went down with its node: run the submission again elsewhere, within max_attempts."""
    ray.kill(job.actor)
    if job.attempt < options.max_attempts:
        queue.insert(0, (job.sub, job.attempt + 1))
    else:
        finish(job, _crashed(job, run_id, f"its node was lost {job.attempt} times", exc))


def _settle(job: _Running, finish, queue: list, unreachable: list, options: DriverOptions, run_id: str) -> None:
    """Turn a finished (or dead) actor call into a result, a retry, or a wait for the node's fate."""
    try:
        finish(job, ray.get(job.ref))
    except RayActorError as exc:
        _note_node(job)
        if not _node_alive(job.node_id):
            _retry_or_give_up(job, finish, queue, options, run_id, exc)
        elif isinstance(exc, ActorUnavailableError) or exc.preempted:
            job.unreachable_since, job.error = time.time(), exc
            unreachable.append(job)
        else:
            finish(job, _crashed(job, run_id, "the actor process died", exc))
    except Exception as exc:  # e.g. a result that could not be deserialised
        finish(job, _crashed(job, run_id, "the result could not be read", exc))


def _resolve_unreachable(job: _Running, finish, queue: list, unreachable: list, options: DriverOptions,
                         run_id: str) -> None:
    """An unreachable actor's node is either declared dead (retry) or, after a grace period, not (crashed)."""
    if not _node_alive(job.node_id):
        unreachable.remove(job)
        _retry_or_give_up(job, finish, queue, options, run_id, job.error)
    elif time.time() - job.unreachable_since > NODE_DEATH_GRACE_S:
        unreachable.remove(job)
        finish(job, _crashed(job, run_id, "the actor stayed unreachable", job.error))
