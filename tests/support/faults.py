"""The fault matrix (docs/FAULTS.md) said once: each broken fixture under ``tests/fixtures/broken``
with what its result row must say (in-process and through Ray) and what ``esr-eval check`` must
say. ``text`` and ``fix`` are fragments of the row's error and, unless a check-specific one is
given, of the check's message and fix: the evaluator and the check word a failure the same way."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tests.conftest import REPO_ROOT

BROKEN = REPO_ROOT / "tests" / "fixtures" / "broken"
CONTROL = "team39_Control"
PICKLE_MARKER = "ESR_EVAL_PICKLE_PAYLOAD_RAN"
HANG_TIMEOUT_S = 5.0   # check's per-request limit for the hanging fixture
ACTOR_TIMEOUT_S = 60.0  # the driver's per-submission limit in the Ray fault run


@dataclass(frozen=True)
class Fault:
    """One broken fixture. ``status``/``stage``: the row; ``check``: the failing check (or the one
    that fails for an ``ok`` row with a hygiene flag, whose flag is ``text``); ``later_run``:
    whether the checks after it still run; ``in_process``: whether `esr-eval evaluate` survives it."""

    sid: str
    status: str
    stage: str | None
    check: str
    text: str
    fix: str | None
    check_text: str | None = None
    check_fix: str | None = None
    later_run: bool = False
    in_process: bool = True

    @property
    def check_message(self) -> str:
        return self.check_text or self.text

    @property
    def check_fix_text(self) -> str:
        return self.check_fix or self.fix or ""


FAULTS = [
    Fault("team40_ImportError", "error", "import", "import", "No module named 'esr_eval_fixture_missing_pkg'",
          "install 'esr_eval_fixture_missing_pkg'"),
    Fault("team41_MissingCheckpoint", "error", "manifest", "load",
          "checkpoint.path: model_zoo/team41_MissingCheckpoint.pth not found", "put the checkpoint there",
          check_text="team41_MissingCheckpoint.pth does not exist", check_fix="checkpoint.path"),
    Fault("team42_WrongKeys", "error", "checkpoint", "load", "unexpected keys: module.head.weight", "checkpoint.key"),
    Fault("team43_WrongShapes", "error", "checkpoint", "load", "shape mismatch at head.weight",
          "the constructor arguments"),
    Fault("team44_ForwardRaises", "error", "inference", "forward",
          "raised RuntimeError: shape '[1, 3, 256, 256]' is invalid",
          "fix the model's forward for 1x3xHxW inputs of any size"),
    Fault("team45_WrongOutputShape", "error", "quality", "forward",
          "embedded/astronaut: output 252x252 is not 4x the input", "check `scale` in the manifest"),
    Fault("team46_NaNOutput", "error", "inference", "forward", "the output contains NaN or Inf",
          "check the declared data_range and the weights"),
    Fault("team47_MutatesInput", "ok", None, "hygiene", "input_mutated", None,
          check_text="changes its input tensor in place", check_fix="x = x.clone()", later_run=True),
    Fault("team48_Hangs", "timeout", "actor", "forward",
          f"no result within {ACTOR_TIMEOUT_S:.0f} s; the actor was killed", "check the model for hangs",
          check_text=f"no answer within {HANG_TIMEOUT_S:g} s during forward", check_fix="endless loop",
          in_process=False),
    Fault("team49_HardCrash", "error", "inference", "forward",
          "ended during 'forward' (EOFError) and exited with status 3", "a model must not end", in_process=False),
    Fault("team50_CudaOOM", "error", "inference", "forward", "out of memory during inference",
          "declare an adapter tile"),
    Fault("team51_PickleRunsCode", "error", "checkpoint", "load",
          "needs full unpickling, which could run arbitrary code; refused", "ask the team for a plain state dict"),
    Fault("team52_TruncatedCheckpoint", "error", "checkpoint", "load", "truncated or corrupt",
          "re-download or re-save"),
    Fault("team53_WrongDataRange", "ok", None, "hygiene", "data_range", None,
          check_text="declared data_range 255 scores", check_fix="declare `data_range: 1.0`", later_run=True),
]
IN_PROCESS = [f for f in FAULTS if f.in_process]
PROCESS_ONLY = [f for f in FAULTS if not f.in_process]


def ids(faults: list[Fault]) -> list[str]:
    return [f.sid for f in faults]


def assert_row_says(row, fault: Fault) -> None:
    """The submission's row (a pandas Series of the submissions table) says what ``fault`` must."""
    assert row["status"] == fault.status, row["error"]
    if fault.status == "ok":
        assert fault.text in row["hygiene_flags"].split(",")
        return
    assert row["error_stage"] == fault.stage, row["error"]
    assert fault.text in row["error"] and f"[{fault.sid}]" in row["error"], row["error"]
    assert fault.fix is None or f"Fix: {fault.fix}" in row["error"] or fault.fix in row["error"], row["error"]


def assert_complete(tables, sid: str, images: int) -> None:
    """The submission's rows are all there: ok, complexity, one split row, one sample per image."""
    row = tables["submissions"].set_index("submission_id").loc[sid]
    assert row["status"] == "ok" and pd.isna(row["error"]), row["error"]
    assert row["params"] > 0 and row["flops_fvcore"] > 0 and row["fingerprint"]
    splits = tables["splits"].query("submission_id == @sid")
    assert len(splits) == 1 and (splits["psnr_db"] > 0).all() and (splits["runtime_ms"] > 0).all()
    assert len(tables["samples"].query("submission_id == @sid")) == images


def slow_submissions(factory, count: int, sleep_s: float, prefix: str = "team2") -> list[str]:
    """``count`` healthy submissions that sleep ``sleep_s`` in every forward (runs that last long
    enough to kill a driver or a node in the middle); their ids."""
    ids = [f"{prefix}{i}_Slow" for i in range(count)]
    for i, sid in enumerate(ids):
        factory.make(sid, team_id=f"{prefix[-1]}{i}", model_source={
            "prelude": "import time\n",
            "forward_body": f"time.sleep({sleep_s}); return self.shuffle(self.tail(torch.relu(self.head(x))))"})
    return ids
