"""Hostile submissions against the privilege separation: each fixture is a cheat that worked when the
model ran in the evaluator's process; through :func:`evaluate_submission` it is refused, measured
correctly, or flagged with the evidence in the row. Controls show each cheat works where its
target is within reach, so a test cannot pass because the cheat itself is broken."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from esr_eval import landlock
from esr_eval.check import check_submission
from esr_eval.data import embedded_split, folder_split
from esr_eval.evaluate import EvaluationConfig, evaluate_submission
from esr_eval.manifest import parse_manifest
from esr_eval.timing import get_protocol

CONFIG = EvaluationConfig(protocol=get_protocol("esr-default", repeats=2, warmup_passes=1), hygiene=False)
needs_landlock = pytest.mark.skipif(landlock.abi_version() < 6,
                                    reason="Landlock ABI >= 6 (Linux 6.12) needed for filesystem, TCP and signal scoping")

# Looks for ground truth everywhere a model in the evaluator's process could: every frame's locals
# (one level into lists, tuples and dicts) and the HR file on disk, which it also tries to rewrite.
THIEF = '''
import inspect, os
import numpy as np
HR_FILE = {hr_file!r}

def _arrays(value):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _arrays(item) if isinstance(item, (list, tuple)) else ([item] if isinstance(item, np.ndarray) else [])
    elif isinstance(value, dict):
        for item in value.values():
            if isinstance(item, np.ndarray):
                yield item

def steal(hr_shape):
    found = [a for frame in inspect.stack() for v in frame.frame.f_locals.values() for a in _arrays(v)
             if a.dtype == np.uint8 and a.shape[:2] == hr_shape]
    taken = []
    try:
        with open(HR_FILE, "rb") as handle:
            handle.read(16)
        taken.append("read")
    except OSError:
        pass
    try:
        with open(HR_FILE, "r+b") as handle:
            handle.write(b"\\0")
        taken.append("rewrote")
    except OSError:
        pass
    return found, taken
'''


def _data_copy(tmp_path):
    """The embedded split copied outside the submissions root: (split, one HR file)."""
    source = embedded_split()
    hr_dir, lr_dir = tmp_path / "data" / "HR", tmp_path / "data" / "LR"
    for pair in source.pairs:
        for path, folder in ((pair.hr_path, hr_dir), (pair.lr_path, lr_dir)):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)
    split = folder_split("hidden", hr_dir, lr_dir, 4)
    return split, split.pairs[0].hr_path


def _evaluate(factory, sid: str, splits, **source):
    sub = parse_manifest(factory.make(sid, model_source=source), factory.root)
    return evaluate_submission(sub, splits, CONFIG, "sandbox-test")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_landlock
def test_ground_truth_is_neither_in_reach_in_memory_nor_on_disk(factory, tmp_path):
    split, hr_file = _data_copy(tmp_path)
    thief = THIEF.format(hr_file=str(hr_file))
    namespace: dict = {}
    exec(thief, namespace)  # control: in the evaluator's own process the thief finds the ground truth
    hr = [np.zeros((256, 256, 3), np.uint8)]  # noqa: F841 (a local the thief must find)
    found, taken = namespace["steal"]((256, 256))
    assert found and taken == ["read", "rewrote"]
    hr_file.write_bytes((embedded_split().pairs[0].hr_path).read_bytes())  # undo the control's write
    before = _sha(hr_file)

    result = _evaluate(factory, "team30_Thief", [split], prelude=thief, forward_body=(
        "found, taken = steal((x.shape[-2] * 4, x.shape[-1] * 4))\n"
        "        if found or taken:\n"
        "            raise RuntimeError(f'ground truth within reach: {len(found)} arrays, file {taken}')\n"
        "        return self.shuffle(self.tail(torch.relu(self.head(x))))"))
    row = result.submission
    assert row.status == "ok", row.error
    assert "landlock v" in row.sandbox and "filesystem" in row.sandbox
    assert _sha(hr_file) == before
    assert np.isfinite(result.splits[0].psnr_db)


# Freezes the sandbox's clock at import, then does ~300 ms of work per call that the frozen clock hides.
FROZEN_CLOCK = '''
import time
_ticks = [0]
def _frozen():
    _ticks[0] += 1000
    return _ticks[0]
time.perf_counter_ns = _frozen
'''


def test_a_stopped_clock_is_caught_by_the_evaluators_clock_and_its_figure_stands(factory):
    result = _evaluate(factory, "team31_Frozen", [embedded_split()], prelude=FROZEN_CLOCK,
                       forward_body="time.sleep(0.3)\n        return self.shuffle(self.tail(torch.relu(self.head(x))))")
    assert result.submission.status == "ok", result.submission.error
    (split,) = result.splits
    assert split.runtime_sandbox_ms < 1.0  # what the patched clock reported
    assert split.timing_tampered and "above what the submission's process reported" in split.timing_detail
    # the external figure stands: the 300 ms of hidden work, less a calibrated overhead that a busy
    # machine can overestimate by tens of ms (so a margin, not the sleep itself, is the bound)
    assert split.runtime_ms == split.runtime_external_ms > 100.0
    assert all(s.latency_ms == pytest.approx(max(s.external_ms - s.overhead_ms, 0.0)) for s in result.samples)


def test_an_honest_model_is_not_flagged_by_the_external_clock(factory):
    result = _evaluate(factory, "team32_Honest", [embedded_split()],
                       forward_body="time.sleep(0.05)\n        return self.shuffle(self.tail(torch.relu(self.head(x))))",
                       prelude="import time\n")
    (split,) = result.splits
    assert result.submission.status == "ok" and not split.timing_tampered
    assert split.runtime_ms == split.runtime_sandbox_ms >= 50.0
    assert split.runtime_external_ms is not None and split.external_overhead_ms is not None
    assert not result.submission.complexity_flags


# Rewrites the evaluator's scoring and counting functions wherever the sandbox's modules hold them
# (the sandbox's own entry point runs as __main__).
PATCHER = '''
import dataclasses, sys
def _tenth(original):
    def patched(*args, **kwargs):
        c = original(*args, **kwargs)
        return dataclasses.replace(c, params=c.params // 10, flops_fvcore=c.flops_fvcore // 10,
                                   flops_audit=c.flops_audit // 10)
    return patched
for _name, _module in list(sys.modules.items()):
    if _name.startswith("esr_eval") or _name == "__main__":
        for _attr in ("psnr_db", "score"):
            if hasattr(_module, _attr):
                setattr(_module, _attr, lambda *a, **k: 99.0)
        if hasattr(_module, "measure_complexity"):
            _module.measure_complexity = _tenth(_module.measure_complexity)
        if hasattr(_module, "per_pixel_audit"):
            _original_px = _module.per_pixel_audit
            _module.per_pixel_audit = lambda *a, _o=_original_px, **k: _o(*a, **k) / 10
'''


def test_patching_the_evaluators_code_changes_no_score_and_is_flagged_and_taints_no_one(factory):
    splits = [embedded_split()]
    hostile = _evaluate(factory, "team33_Patcher", splits, prelude=PATCHER)
    clean = _evaluate(factory, "team34_Clean", splits)  # same weights, evaluated next in the same process
    assert hostile.submission.status == clean.submission.status == "ok"
    assert hostile.splits[0].psnr_db == clean.splits[0].psnr_db < 99.0  # scored here, not by the patched code
    assert hostile.submission.params * 10 <= clean.submission.params  # what the patched counter reported ...
    flags = hostile.submission.complexity_flags.split(",")
    assert "flops_input_dependent" in flags and "params_in_buffers" in flags  # ... disagrees with our recount
    assert hostile.submission.params_clean == clean.submission.params_clean == clean.submission.params
    assert hostile.submission.flops_audit_per_px_real == pytest.approx(clean.submission.flops_audit_per_px_real)
    assert clean.submission.complexity_flags is None


def test_a_trace_that_is_not_the_model_is_flagged_unverified(factory):
    result = _evaluate(factory, "team35_TwoFaced", [embedded_split()], forward_body=(
        "if torch.jit.is_tracing():\n"
        "            return torch.nn.functional.interpolate(x, scale_factor=4)\n"
        "        return self.shuffle(self.tail(torch.relu(self.head(x))))"))
    row = result.submission
    assert row.status == "ok" and row.trace_verified is False
    assert "trace_unverified" in row.complexity_flags.split(",")
    assert "not what produced the outputs" in row.trace_detail


def test_weights_kept_outside_parameters_and_buffers_are_counted(factory):
    result = _evaluate(factory, "team36_Plain", [embedded_split()],
                       init_extra="self.plain = torch.randn(8, 8, 3, 3) * 0.01",
                       forward_body=("h = torch.relu(self.head(x))\n"
                                     "        h = h + torch.nn.functional.conv2d(h, self.plain, padding=1)\n"
                                     "        return self.shuffle(self.tail(h))"))
    row = result.submission
    assert row.status == "ok" and row.float_buffer_elements == 0
    assert row.params_clean == row.params + 8 * 8 * 3 * 3 == row.checkpoint_float_elements + 8 * 8 * 3 * 3
    assert {"params_in_buffers", "params_not_in_checkpoint"} <= set(row.complexity_flags.split(","))


ESCAPE = '''
import os, signal, socket
escaped = []
try:
    open({forged!r}, "wb").write(b"PAR1")
    escaped.append("wrote a forged row")
except OSError:
    pass
try:
    os.kill({victim}, signal.SIGKILL)
    escaped.append("killed a process outside")
except OSError:
    pass
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    escaped.append("connected to a local service")
except OSError:
    pass
if escaped:
    raise RuntimeError("escaped: " + ", ".join(escaped))
'''


@needs_landlock
def test_results_folder_other_processes_and_the_network_are_out_of_reach(factory, tmp_path):
    results = tmp_path / "results" / "run" / "submissions"
    results.mkdir(parents=True)
    victims = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    try:
        control = subprocess.run([sys.executable, "-c", ESCAPE.format(
            forged=str(tmp_path / "control.parquet"), victim=victims[1].pid, port=port)], capture_output=True, text=True)
        # control: outside the sandbox every escape works
        assert "escaped: wrote a forged row, killed a process outside, connected to a local service" in control.stderr
        result = _evaluate(factory, "team37_Escape", [embedded_split()],
                           prelude=ESCAPE.format(forged=str(results / "team99_Forged.parquet"),
                                                 victim=victims[0].pid, port=port))
        assert result.submission.status == "ok", result.submission.error
        assert victims[0].poll() is None and not any(results.iterdir())
        assert "signals to outside processes refused" in result.submission.containment
    finally:
        for victim in victims:
            victim.kill()
            victim.wait()
        listener.close()


def test_a_forged_reply_on_the_evaluators_pipe_is_refused(factory):
    forger = '''
import json, os, struct, sys
_body = json.dumps({"nonce": "guessed", "latency_ms": 0.01, "_arrays": []}).encode()
os.write(int(sys.argv[2]), struct.pack("<I", len(_body)) + _body)
'''
    result = _evaluate(factory, "team38_Forger", [embedded_split()], prelude=forger)
    row = result.submission
    assert row.status == "error" and row.error_stage == "load"
    assert "reply to another request" in row.error and not result.splits


def test_a_model_that_ends_its_process_is_an_error_row_and_the_evaluator_lives_on(factory):
    result = _evaluate(factory, "team39_Exit", [embedded_split()],
                       forward_body="os._exit(7)", prelude="import os\n")
    row = result.submission
    assert row.status == "error" and row.error_stage == "inference"
    assert "exited with status 7" in row.error


@needs_landlock
def test_check_runs_the_model_in_the_same_sandbox(factory, tmp_path):
    split, hr_file = _data_copy(tmp_path)
    thief = THIEF.format(hr_file=str(hr_file))
    manifest = factory.make("team40_CheckedThief", model_source=dict(prelude=thief, forward_body=(
        "found, taken = steal((x.shape[-2] * 4, x.shape[-1] * 4))\n"
        "        if found or taken:\n"
        "            raise RuntimeError(f'ground truth within reach: {len(found)} arrays, file {taken}')\n"
        "        return self.shuffle(self.tail(torch.relu(self.head(x))))")))
    report = check_submission(manifest, factory.root)
    assert report.result("import").status == "pass" and "landlock v" in report.result("import").message
    assert "within reach" not in report.render()  # the thief found nothing (the tiny random model may fail plausibility)
    assert report.result("psnr").status in ("pass", "warn")  # scored by the checker, which holds the HR images
