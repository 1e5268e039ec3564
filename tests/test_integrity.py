"""Results that prove themselves: the driver's ledger, verified readers, the end-of-run split check.

Each test plays one attack from the field report against a run folder written through
``RunFolder`` (the single writer): a forged extra part file, a rival's part rewritten with a
lower PSNR, a deleted samples part, split files rewritten mid-run; and an untouched run.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from esr_eval import landlock
from esr_eval.cli import main
from esr_eval.data import embedded_split
from esr_eval.protocols import load_protocol
from esr_eval.ranking import rank_run
from esr_eval.records import (
    LEDGER_NAME,
    TABLES,
    EvaluationResult,
    RunIntegrityError,
    RunIntegrityWarning,
    SampleRow,
    SplitRow,
    SubmissionRow,
    read_run,
    read_verified,
    verify_run,
    write_rows,
)
from esr_eval.report import write_report
from esr_eval.run import RunFolder
from tests.support.synthetic import write_synthetic_run

RIVAL = "team01_SPAN"
FORGED = "team77_Forged"
# Only what the row types require and the synthetic run does not hold.
REQUIRED_DEFAULTS = {"dataset_sha256": "synthetic", "wall_mean_ms": 1.0, "warmup_calls": 0, "repeats": 3,
                     "wall_ms": 1.0, "lr_height": 64, "lr_width": 64}


def _rows(frame: pd.DataFrame, row_type: type) -> list:
    names = [f.name for f in fields(row_type)]
    rows = []
    for record in frame.to_dict("records"):
        values = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v)
                  for k, v in record.items() if k in names}
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
        rows.append(row_type(**{**{k: v for k, v in REQUIRED_DEFAULTS.items() if k in names}, **values}))
    return rows


def driver_written_run(tmp_path: Path) -> Path:
    """An 8-submission embedded-split run (RLFN baseline, bicubic reference) written through RunFolder."""
    synthetic = write_synthetic_run(tmp_path / "synthetic", n_submissions=8, seed=1, splits=("embedded",),
                                    images_per_split=5, repeats=3)
    tables = {t: pd.read_parquet(synthetic / t) for t in TABLES}
    folder = RunFolder.create(tmp_path / "results", "r")
    folder.write_run_json(json.loads((synthetic / "run.json").read_text()))
    for sub in _rows(tables["submissions"], SubmissionRow):
        mine = {t: tables[t][tables[t]["submission_id"] == sub.submission_id] for t in ("splits", "samples")}
        folder.write_result(EvaluationResult(submission=sub, splits=tuple(_rows(mine["splits"], SplitRow)),
                                             samples=tuple(_rows(mine["samples"], SampleRow))),
                            fingerprint=f"f-{sub.submission_id}")
    return folder.path


def forge(run: Path, sid: str = FORGED) -> None:
    """What the hostile model wrote: status ok, 40 dB, 0.01 ms, with the writer's own function."""
    write_rows(run, "submissions", [SubmissionRow(run_id="r", submission_id=sid, team_id="77", name="Forged",
                                                  status="ok", params=1, flops_fvcore=1, activations=1,
                                                  num_conv=1, timing_protocol="esr-default-v1")], sid)
    write_rows(run, "splits", [SplitRow(run_id="r", submission_id=sid, split="embedded", num_images=5,
                                        dataset_sha256="x", psnr_db=40.0, ssim=None, psnr_y_db=41.0, ssim_y=None,
                                        runtime_ms=0.01, runtime_mean_ms=0.01, runtime_median_ms=0.01,
                                        runtime_p90_ms=0.01, runtime_n=15, wall_mean_ms=0.01, warmup_calls=0,
                                        repeats=3)], sid)


DEMO = load_protocol("demo").with_resamples(30)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return driver_written_run(tmp_path)


def first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


def test_forged_part_file_is_never_read_and_marks_the_run_tampered(run: Path, tmp_path: Path, capsys) -> None:
    forge(run)
    integrity = verify_run(run)
    assert integrity.tampered and integrity.status == "tampered"
    assert set(integrity.unexpected) == {f"submissions/{FORGED}.parquet", f"splits/{FORGED}.parquet"}

    rankings = rank_run(run, DEMO)
    assert FORGED not in set(rankings["submission_id"])
    assert set(rankings["run_integrity"]) == {"tampered"}
    assert f"unexpected file submissions/{FORGED}.parquet" in rankings["run_integrity_findings"].iloc[0]
    metadata = pq.read_schema(run / "rankings" / "part-00000.parquet").metadata
    assert json.loads(metadata[b"esr_eval.integrity"])["status"] == "tampered"

    paths = write_report(run, DEMO, out_dir=tmp_path / "report")
    line = first_line(paths.markdown)
    assert line.startswith("TAMPERED RUN:") and f"submissions/{FORGED}.parquet" in line
    assert "TAMPERED RUN:" in first_line(paths.html)
    assert "Forged" not in paths.markdown.read_text(encoding="utf-8").split("## Results", 1)[1].split("## Provenance")[0]

    assert main(["rank", str(run), "--rules", "demo", "--resamples", "20"]) == 1
    captured = capsys.readouterr()
    assert "WARNING: TAMPERED RUN:" in captured.err and "WARNING: TAMPERED RUN:" in captured.out
    assert FORGED not in captured.out.split("WARNING")[0]

    with pytest.warns(RunIntegrityWarning, match="TAMPERED RUN"):
        subs = read_verified(run, "submissions")
    assert FORGED not in set(subs["submission_id"]) and len(subs) == 8
    with pytest.raises(RunIntegrityError, match="TAMPERED RUN"):
        read_verified(run, "splits", strict=True)


def test_rival_part_rewritten_with_lower_psnr_is_changed_and_not_read(run: Path, tmp_path: Path) -> None:
    part = run / "splits" / f"{RIVAL}.parquet"
    measured = pd.read_parquet(part)
    lowered = measured.assign(psnr_db=measured["psnr_db"] - 5.0)
    write_rows(run, "splits", _rows(lowered, SplitRow), RIVAL)

    integrity = verify_run(run)
    assert integrity.tampered and integrity.changed == (f"splits/{RIVAL}.parquet",)
    assert not integrity.unexpected and not integrity.missing
    tables = read_run(run)
    assert RIVAL not in set(tables.splits["submission_id"])  # the lowered row is not used

    rankings = rank_run(run, DEMO).set_index("submission_id")
    assert rankings.loc[RIVAL, "integrity"] == "integrity: splits part changed after the driver wrote it, not read"
    assert rankings.loc[RIVAL, "excluded_reason"].startswith("integrity: splits part changed")
    assert rankings.loc["team02_DIPNet", "integrity"] is None
    line = first_line(write_report(run, DEMO, out_dir=tmp_path / "report").markdown)
    assert line.startswith("TAMPERED RUN:") and f"changed file splits/{RIVAL}.parquet" in line


def test_deleted_samples_part_is_missing(run: Path, tmp_path: Path) -> None:
    (run / "samples" / f"{RIVAL}.parquet").unlink()
    integrity = verify_run(run)
    assert integrity.tampered and integrity.missing == (f"samples/{RIVAL}.parquet",)
    assert set(rank_run(run, DEMO)["run_integrity"]) == {"tampered"}
    line = first_line(write_report(run, DEMO, out_dir=tmp_path / "report").markdown)
    assert line.startswith("TAMPERED RUN:") and f"missing file samples/{RIVAL}.parquet" in line


def test_deleted_ledger_is_tampering_not_an_old_run(run: Path) -> None:
    (run / LEDGER_NAME).unlink()
    integrity = verify_run(run, read=("submissions",))
    assert integrity.tampered and integrity.ledger == "lost"
    assert integrity.tables["submissions"].empty  # nothing can be vouched for, so nothing is read


def test_untouched_run_is_verified_and_has_no_banner(run: Path, tmp_path: Path, capsys) -> None:
    integrity = verify_run(run)
    assert integrity.clean and integrity.status == "verified" and integrity.banner() is None
    assert not (integrity.unexpected or integrity.missing or integrity.changed)
    rankings = rank_run(run, DEMO)
    assert set(rankings["run_integrity"]) == {"verified"} and rankings["integrity"].isna().all()
    assert len(rankings) == 8 and rankings["rank_main"].min() == 1
    paths = write_report(run, DEMO, out_dir=tmp_path / "report")
    assert first_line(paths.markdown).startswith("# demo results")
    assert first_line(paths.html) == "<!DOCTYPE html>" and "TAMPERED" not in paths.html.read_text(encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunIntegrityWarning)
        assert len(read_verified(run, "samples")) == len(pd.read_parquet(run / "samples"))
    assert main(["rank", str(run), "--rules", "demo", "--resamples", "20"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out and f"integrity: verified; checked against {LEDGER_NAME} sha256" in out


def test_a_run_without_ledger_is_read_whole_and_called_unverified(tmp_path: Path) -> None:
    synthetic = write_synthetic_run(tmp_path / "synthetic", n_submissions=8, seed=1, splits=("embedded",),
                                    images_per_split=5, repeats=3)
    integrity = verify_run(synthetic, read=("submissions",))
    assert integrity.unverified and not integrity.tampered and len(integrity.tables["submissions"]) == 8
    assert integrity.banner().startswith("UNVERIFIED RUN:")


# --- real in-process evaluations: the model code is the attacker ---------------------------------


def _copied_embedded_split(tmp_path: Path) -> tuple[Path, Path]:
    split = embedded_split()
    hr, lr = tmp_path / "data" / "HR", tmp_path / "data" / "LR"
    hr.mkdir(parents=True)
    lr.mkdir(parents=True)
    for pair in split.pairs:
        shutil.copy(pair.hr_path, hr / pair.hr_path.name)
        shutil.copy(pair.lr_path, lr / pair.lr_path.name)
    return hr, lr


def _evaluate(factory, tmp_path: Path, hr: Path, lr: Path, *ids: str, landlock: bool = True) -> tuple[int, Path]:
    results = tmp_path / "results"
    code = main(["evaluate", *ids, "--root", str(factory.root), "--manifests", str(factory.manifests),
                 "--results", str(results), "--run-id", "r", "--repeats", "1", "--no-hygiene",
                 "--pair", "embedded", str(hr), str(lr), *([] if landlock else ["--no-landlock"])])
    return code, results / "r"


def _tables_of(run: Path) -> dict:
    return {table: read_verified(run, table) for table in ("submissions", "splits")}


def test_split_file_rewritten_mid_run_is_flagged(factory, tmp_path: Path, capsys) -> None:
    hr, lr = _copied_embedded_split(tmp_path)
    victim = sorted(hr.iterdir())[0]
    prelude = ("from PIL import Image as _Image\n"
               f"_image = _Image.open({str(victim)!r}).convert('RGB')\n"
               f"_image.point(lambda v: 255 - v).save({str(victim)!r})\n")
    factory.make()
    factory.make("team11_Rewriter", team_id="11", model_source={"prelude": prelude})
    before = victim.read_bytes()
    code, run = _evaluate(factory, tmp_path, hr, lr)
    out = capsys.readouterr().out
    if landlock.abi_version() >= 1:  # first line of defence: the sandbox cannot open the split
        assert victim.read_bytes() == before and "SPLIT CHANGED" not in out
        row = _tables_of(run)["submissions"].set_index("submission_id").loc["team11_Rewriter"]
        assert row["status"] == "error" and "Permission" in row["error"]
        shutil.rmtree(run)
    # second line, for a sandbox without Landlock (an older kernel, or --no-landlock): the split re-check
    code, run = _evaluate(factory, tmp_path, hr, lr, landlock=False)
    out = capsys.readouterr().out
    assert code == 1 and "WARNING: SPLIT CHANGED MID-RUN" in out and "ledger: " in out

    check = json.loads((run / "run.json").read_text())["splits_verified_at_end"]
    assert not check["ok"] and [c["name"] for c in check["changed"]] == ["embedded"]
    integrity = verify_run(run)
    assert integrity.split_changed and not integrity.tampered and integrity.status == "split-changed"

    assert main(["rank", str(run), "--resamples", "20", "--baseline", "team10_Tiny",
                 "--accept-baseline-mismatch"]) == 1
    assert "WARNING: SPLIT CHANGED MID-RUN" in capsys.readouterr().err
    paths = write_report(run, load_protocol("demo").with_resamples(20).with_baseline("team10_Tiny",
                                                                                      accept_mismatch=True))
    assert first_line(paths.markdown).startswith("SPLIT CHANGED MID-RUN: split embedded")


def test_model_code_forging_a_part_and_the_ledger_is_caught(factory, tmp_path: Path, capsys) -> None:
    """The reported attack, for real: model code finds the run folder, writes a forged part (status
    ok, 40 dB, 0.01 ms) and even adds it to ledger.json; the driver's next write restores its ledger."""
    hr, lr = _copied_embedded_split(tmp_path)
    run = tmp_path / "results" / "r"
    prelude = (
        "import hashlib as _h, json as _j, pathlib as _p\n"
        "from esr_eval.records import SubmissionRow as _S, SplitRow as _T, write_rows as _w\n"
        f"_run = _p.Path({str(run)!r})\n"
        f"_w(_run, 'submissions', [_S(run_id='r', submission_id={FORGED!r}, team_id='77', name='Forged', "
        "status='ok', params=1, flops_fvcore=1)], " + repr(FORGED) + ")\n"
        f"_w(_run, 'splits', [_T(run_id='r', submission_id={FORGED!r}, split='embedded', num_images=5, "
        "dataset_sha256='x', psnr_db=40.0, ssim=None, psnr_y_db=41.0, ssim_y=None, runtime_ms=0.01, "
        "runtime_mean_ms=0.01, runtime_median_ms=0.01, runtime_p90_ms=0.01, runtime_n=5, wall_mean_ms=0.01, "
        "warmup_calls=0, repeats=1)], " + repr(FORGED) + ")\n"
        "_ledger = _j.loads((_run / 'ledger.json').read_text())\n"
        "for _t in ('submissions', 'splits'):\n"
        f"    _b = (_run / _t / '{FORGED}.parquet').read_bytes()\n"
        f"    _ledger['files'][_t + '/{FORGED}.parquet'] = dict(sha256=_h.sha256(_b).hexdigest(), size=len(_b), "
        "written_at_unix_s=0.0)\n"
        "(_run / 'ledger.json').write_text(_j.dumps(_ledger))\n"
    )
    factory.make()
    factory.make("team11_Forger", team_id="11", model_source={"prelude": prelude})
    if landlock.abi_version() >= 1:  # first line of defence: the sandbox cannot reach the run folder
        code, run = _evaluate(factory, tmp_path, hr, lr, "team11_Forger", "team10_Tiny")
        assert not (run / "splits" / f"{FORGED}.parquet").exists()
        assert "TAMPERED" not in capsys.readouterr().out
        shutil.rmtree(run)
    # second line, for a sandbox without Landlock: the ledger
    code, run = _evaluate(factory, tmp_path, hr, lr, "team11_Forger", "team10_Tiny", landlock=False)
    assert (run / "splits" / f"{FORGED}.parquet").is_file()
    out = capsys.readouterr().out
    assert code == 1 and "WARNING: TAMPERED RUN:" in out and f"unexpected file splits/{FORGED}.parquet" in out
    assert FORGED not in json.loads((run / LEDGER_NAME).read_text())["files"]

    integrity = verify_run(run)
    assert set(integrity.unexpected) == {f"submissions/{FORGED}.parquet", f"splits/{FORGED}.parquet"}
    assert main(["report", str(run), "--resamples", "20", "--baseline", "team10_Tiny",
                 "--accept-baseline-mismatch"]) == 1
    report = (run / "report" / "report.md").read_text(encoding="utf-8")
    assert report.splitlines()[0].startswith("TAMPERED RUN:")
    assert "Forged" not in report.split("## Results", 1)[1].split("## Provenance")[0]
