"""The Ray layer on CPU with fake GPUs: placement, concurrency, faults as rows, resume, isolation."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

import evaluate_all
from esr_eval.driver import HomogeneityError, SubmissionActor
from esr_eval.evaluate import EvaluationConfig
from esr_eval.timing import OFFICIAL
from tests.support.ray_runs import local_ray, logging_actor, run_driver

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

FAKE_GPUS = 2
CONFIG = EvaluationConfig(protocol=OFFICIAL, device="cpu", hygiene=False, complexity_input_shape=(1, 3, 16, 16))
GPU_RUN = EvaluationConfig(protocol=OFFICIAL, device="auto", hygiene=False, complexity_input_shape=(1, 3, 16, 16))
UP = "self.shuffle(self.tail(self.head(x)))"


@pytest.fixture(scope="module", autouse=True)
def ray_instance(tmp_path_factory):
    yield from local_ray(tmp_path_factory.mktemp("ray"), FAKE_GPUS)


def _run(factory, tmp_path, run_id=None, config=CONFIG, **options):
    return run_driver(factory, tmp_path, config, run_id, **options)


SLOW = {"prelude": "import time\n", "forward_body": f"time.sleep(0.25); return {UP}"}


def test_one_actor_per_fake_gpu_all_busy_at_once(factory, tmp_path):
    log = tmp_path / "calls.log"
    for i in range(4):
        factory.make(f"team1{i}_S", team_id=f"1{i}", model_source=SLOW)
    summary, subs, _ = _run(factory, tmp_path, actor_class=logging_actor(log))
    assert summary.scheduling == "gpu" and summary.slots == FAKE_GPUS
    assert (subs["status"] == "ok").all() and len(subs) == 4
    assert set(subs["device_kind"]) == {"cpu"}  # fake GPUs: torch sees no CUDA, and the row says so
    # Ray starts workers at niceness 15 unless RAY_worker_niceness says otherwise: beside any normal
    # process the measuring actor would get a sliver of a core. esr-eval's Ray environment sets 0:
    # the actors run at the priority of the process that started Ray.
    assert set(subs["process_niceness"]) == {os.nice(0)}
    spans = {}
    for _, pid, stamp in (line.split() for line in log.read_text().splitlines()):
        lo, hi = spans.get(pid, (float(stamp), float(stamp)))
        spans[pid] = (min(lo, float(stamp)), max(hi, float(stamp)))
    assert len(spans) == 4  # a fresh process per submission
    events = sorted([(lo, 1) for lo, _ in spans.values()] + [(hi, -1) for _, hi in spans.values()])
    concurrent = peak = 0
    for _, step in events:
        concurrent += step
        peak = max(peak, concurrent)
    assert peak == FAKE_GPUS


def test_faults_become_rows_and_others_finish(factory, tmp_path):
    factory.make("team10_Ok", team_id="10")
    factory.make("team11_Raises", team_id="11", model_source={"forward_body": "raise ValueError('bad team')"})
    factory.make("team12_Exits", team_id="12", model_source={"prelude": "import os\n", "forward_body": "os._exit(7)"})
    summary, subs, folder = _run(factory, tmp_path)  # no short limit: a busy machine never makes team10 late
    assert subs.loc["team10_Ok", "status"] == "ok", subs.loc["team10_Ok", "error"]
    assert subs.loc["team11_Raises", "status"] == "error"
    assert "ValueError: bad team" in subs.loc["team11_Raises", "error"]
    assert "Traceback" in subs.loc["team11_Raises", "traceback"]
    assert subs.loc["team12_Exits", "status"] == "error"  # its sandbox died; the actor lived to say so
    assert "exited with status 7" in subs.loc["team12_Exits", "error"]
    assert len(pd.read_parquet(folder.path / "samples").query("submission_id == 'team10_Ok'")) == 5


def test_a_hang_is_killed_at_its_timeout(factory, tmp_path):
    """Alone in its run, so the short limit bounds only the submission that hangs."""
    factory.make("team13_Hangs", team_id="13", model_source={"prelude": "import time\n",
                                                             "forward_body": "time.sleep(600)"})
    _, subs, _ = _run(factory, tmp_path, timeout_s=30)
    assert subs.loc["team13_Hangs", "status"] == "timeout"
    assert "killed" in subs.loc["team13_Hangs", "error"]


def test_resume_skips_finished_work(factory, tmp_path):
    factory.make("team10_A", team_id="10")
    factory.make("team11_B", team_id="11")
    first, _, folder = _run(factory, tmp_path, run_id="resume")
    assert sorted(first.written) == ["team10_A", "team11_B"]
    factory.make("team12_C", team_id="12")
    second, subs, _ = _run(factory, tmp_path, run_id="resume")
    assert sorted(second.skipped) == ["team10_A", "team11_B"] and second.written == ("team12_C",)
    assert len(subs) == 3


def test_a_global_flag_set_by_one_team_cannot_reach_the_next(factory, tmp_path):
    factory.make("team10_Sets", team_id="10", model_source={"forward_body": f"torch._esr_leak = True; return {UP}"})
    factory.make("team11_Checks", team_id="11", model_source={
        "forward_body": f"assert not hasattr(torch, '_esr_leak'), 'leaked global'; return {UP}"})
    _, subs, _ = _run(factory, tmp_path, expected_s={"team10_Sets": 9.0, "team11_Checks": 1.0})
    assert (subs["status"] == "ok").all(), subs["error"].tolist()


def test_invalid_manifest_is_a_row(factory, tmp_path):
    factory.make("team10_A", team_id="10")
    bad = factory.make("team11_Bad", team_id="11")
    bad.write_text(bad.read_text().replace("scale: 4", "scael: 4"))
    _, subs, _ = _run(factory, tmp_path)
    assert subs.loc["team10_A", "status"] == "ok"
    assert subs.loc["team11_Bad", "status"] == "error" and "did you mean 'scale'" in subs.loc["team11_Bad", "error"]


def test_pinning_an_absent_gpu_model_is_refused(factory, tmp_path):
    factory.make()
    with pytest.raises(HomogeneityError, match="no GPU of model"):
        _run(factory, tmp_path, gpu_model="H100")


class SlowStartActor(SubmissionActor):
    """An actor whose process takes START_S to come up (as on a loaded node), before any submission code."""

    START_S = 100.0  # long enough that 90 % of it bounds the tiny submission even on an overloaded 2-core machine

    def __init__(self):
        import time

        time.sleep(self.START_S)


def test_gpu_run_where_torch_sees_no_cuda_is_an_error_row_never_a_cpu_timing(factory, tmp_path):
    factory.make()
    summary, subs, folder = _run(factory, tmp_path, config=GPU_RUN)
    row = subs.loc["team10_Tiny"]
    assert summary.device == "cuda" and summary.scheduling == "gpu"
    assert row["status"] == "error" and row["error_stage"] == "device"
    assert "sees no CUDA device" in row["error"] and "--device cpu" in row["error"]
    assert not (folder.path / "samples").exists()


def test_resume_of_a_gpu_run_does_not_take_cpu_timed_rows_as_complete(factory, tmp_path):
    factory.make()
    _, cpu_rows, _ = _run(factory, tmp_path, run_id="kinds")
    assert cpu_rows.loc["team10_Tiny", "status"] == "ok" and cpu_rows.loc["team10_Tiny", "device_kind"] == "cpu"
    again, _, _ = _run(factory, tmp_path, run_id="kinds")
    assert again.skipped == ("team10_Tiny",)  # same device kind: complete
    gpu, gpu_rows, _ = _run(factory, tmp_path, run_id="kinds", config=GPU_RUN)
    assert gpu.skipped == () and gpu.written == ("team10_Tiny",)
    assert gpu_rows.loc["team10_Tiny", "status"] == "error"


def test_slow_actor_start_does_not_count_against_the_submission(factory, tmp_path):
    factory.make()
    timeout_s = SlowStartActor.START_S * 0.9  # the start alone would exceed it; the tiny submission never does
    _, subs, _ = _run(factory, tmp_path, actor_class=SlowStartActor, timeout_s=timeout_s)
    assert subs.loc["team10_Tiny", "status"] == "ok", subs.loc["team10_Tiny", "error"]


def test_an_actor_that_cannot_start_in_time_is_a_startup_timeout_not_the_submissions(factory, tmp_path):
    factory.make()
    _, subs, _ = _run(factory, tmp_path, actor_class=SlowStartActor, startup_timeout_s=SlowStartActor.START_S / 4)
    row = subs.loc["team10_Tiny"]
    assert row["status"] == "startup_timeout"
    assert "did not start within" in row["error"] and "no submission code ran" in row["error"]


def test_evaluate_all_refuses_an_unknown_gpu_model_before_any_run_folder(factory, tmp_path, capsys):
    factory.make()
    results = tmp_path / "results"
    code = evaluate_all.main(["--address", ray.get_runtime_context().gcs_address, "--root", str(factory.root),
                              "--manifests", str(factory.manifests), "--results", str(results),
                              "--gpu-model", "H100", "--no-progress", "--rank", "none"])
    assert code == 2
    assert "--gpu-model H100: the cluster has no such GPU" in capsys.readouterr().err
    assert not results.exists() or not any(results.iterdir())


def test_evaluate_all_records_which_ray_instance_it_joined_and_why(factory, tmp_path):
    factory.make()
    results = tmp_path / "results"
    address = ray.get_runtime_context().gcs_address
    code = evaluate_all.main(["--address", address, "--root", str(factory.root), "--manifests",
                              str(factory.manifests), "--results", str(results), "--run-id", "joined",
                              "--device", "cpu", "--no-hygiene", "--no-progress", "--rank", "none"])
    meta = json.loads((results / "joined" / "run.json").read_text())
    assert code == 0
    assert (meta["ray_address"], meta["ray_address_source"]) == (address, "--address")
    assert meta["device"] == "cpu" and meta["device_kinds_measured"] == ["cpu"]


def test_evaluate_all_gpu_run_waits_for_its_gpus_then_refuses_without_a_run_folder(factory, tmp_path, capsys):
    factory.make()
    results = tmp_path / "results"
    code = evaluate_all.main(["--address", ray.get_runtime_context().gcs_address, "--root", str(factory.root),
                              "--manifests", str(factory.manifests), "--results", str(results),
                              "--min-gpus", str(FAKE_GPUS + 1), "--wait-for-gpus", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"waiting for GPUs: {FAKE_GPUS}/{FAKE_GPUS + 1} present" in err
    assert f"has {FAKE_GPUS} of the {FAKE_GPUS + 1} GPUs it needs" in err and "--wait-for-gpus" in err
    assert not results.exists() or not any(results.iterdir())
