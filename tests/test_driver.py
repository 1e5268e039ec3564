"""The Ray layer on CPU with fake GPUs: placement, concurrency, faults as rows, resume, isolation."""

from __future__ import annotations

import pandas as pd
import pytest

from esr_eval.driver import DriverOptions, HomogeneityError, apply_ray_env, run_distributed
from esr_eval.evaluate import EvaluationConfig
from esr_eval.manifest import discover_all
from esr_eval.run import RunFolder, new_run_id
from esr_eval.data import embedded_split
from esr_eval.timing import OFFICIAL

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

FAKE_GPUS = 2
CONFIG = EvaluationConfig(protocol=OFFICIAL, device="auto", hygiene=False, complexity_input_shape=(1, 3, 16, 16))
UP = "self.shuffle(self.tail(self.head(x)))"


@pytest.fixture(scope="module", autouse=True)
def ray_instance(tmp_path_factory):
    apply_ray_env()
    ray.init(address="local", num_cpus=2, num_gpus=FAKE_GPUS, include_dashboard=False,
             log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def _run(factory, tmp_path, run_id=None, **options):
    subs, errors = discover_all(factory.manifests, factory.root)
    folder = RunFolder.create(tmp_path / "results", run_id or new_run_id())
    summary = run_distributed(subs, errors, [embedded_split()], CONFIG, folder,
                              DriverOptions(progress=False, **options))
    return summary, pd.read_parquet(folder.path / "submissions").set_index("submission_id"), folder


def _logging_model(log, sleep_s):
    return {"prelude": "import os, time\n",
            "forward_body": f"open({str(log)!r}, 'a').write(f'{{os.getpid()}} {{time.time()}}\\n'); "
                            f"time.sleep({sleep_s}); return {UP}"}


def test_one_actor_per_fake_gpu_all_busy_at_once(factory, tmp_path):
    log = tmp_path / "calls.log"
    for i in range(4):
        factory.make(f"team1{i}_S", team_id=f"1{i}", model_source=_logging_model(log, 0.25))
    summary, subs, _ = _run(factory, tmp_path)
    assert summary.scheduling == "gpu" and summary.slots == FAKE_GPUS
    assert (subs["status"] == "ok").all() and len(subs) == 4
    assert set(subs["device_kind"]) == {"cpu"}  # fake GPUs: torch sees no CUDA, and the row says so
    spans = {}
    for pid, stamp in (line.split() for line in log.read_text().splitlines()):
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
    factory.make("team13_Hangs", team_id="13", model_source={"prelude": "import time\n",
                                                             "forward_body": "time.sleep(600)"})
    summary, subs, folder = _run(factory, tmp_path, timeout_s=8)
    assert subs.loc["team10_Ok", "status"] == "ok"
    assert subs.loc["team11_Raises", "status"] == "error"
    assert "ValueError: bad team" in subs.loc["team11_Raises", "error"]
    assert "Traceback" in subs.loc["team11_Raises", "traceback"]
    assert subs.loc["team12_Exits", "status"] == "crashed"
    assert "died" in subs.loc["team12_Exits", "error"]
    assert subs.loc["team13_Hangs", "status"] == "timeout"
    assert "killed" in subs.loc["team13_Hangs", "error"]
    assert len(pd.read_parquet(folder.path / "samples").query("submission_id == 'team10_Ok'")) == 5


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
