"""Ray for tests: a local instance with fake GPUs, a driver run over a factory's submissions, and
an actor class that logs when it works (what scheduling and node-loss tests observe)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from esr_eval.data import embedded_split
from esr_eval.driver import DriverOptions, SubmissionActor, run_distributed
from esr_eval.manifest import discover_all
from esr_eval.nodes import apply_ray_env
from esr_eval.run import RunFolder, new_run_id


def local_ray(temp_dir: Path, fake_gpus: int = 2):
    """Generator for a module fixture: a private local instance (never one found on the machine)
    with 2 CPUs and ``fake_gpus`` fake GPUs; yields its GCS address and shuts it down after."""
    import ray

    apply_ray_env()
    ray.init(address="local", num_cpus=2, num_gpus=fake_gpus, include_dashboard=False,
             log_to_driver=False, _temp_dir=str(temp_dir))
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def run_driver(factory, tmp_path: Path, config, run_id: str | None = None, **options):
    """One ``run_distributed`` over every manifest of ``factory`` on the embedded split:
    (summary, submissions table indexed by submission_id, run folder)."""
    subs, errors = discover_all(factory.manifests, factory.root)
    folder = RunFolder.create(tmp_path / "results", run_id or new_run_id())
    summary = run_distributed(subs, errors, [embedded_split()], config, folder,
                              DriverOptions(progress=False, **options))
    return summary, pd.read_parquet(folder.path / "submissions").set_index("submission_id"), folder


def logging_actor(log: Path):
    """A driver actor class that appends ``node_id pid unix_time`` to ``log`` when its evaluate call
    starts and ends: what tests of scheduling and node loss observe, now that the submission's own
    code runs in a sandbox that can neither write there nor talk to Ray."""

    class LoggingActor(SubmissionActor):
        LOG = str(log)

        def evaluate(self, sub, splits, config, run_id):
            self._log()
            try:
                return super().evaluate(sub, splits, config, run_id)
            finally:
                self._log()

        def _log(self) -> None:
            import os
            import time

            import ray

            with open(self.LOG, "a") as handle:
                handle.write(f"{ray.get_runtime_context().get_node_id()} {os.getpid()} {time.time()}\n")

    return LoggingActor
