"""Scale: each submission is measured on the splits of its own scale (esr_eval.data, evaluate, run, cli)."""

from __future__ import annotations

import pandas as pd

from esr_eval.cli import main
from esr_eval.data import embedded_split, matlab_imresize, mod_crop, read_image_rgb
from esr_eval.evaluate import evaluate_submission
from esr_eval.manifest import parse_manifest
from esr_eval.run import fingerprint
from esr_eval.settings import OFFICIAL, EvaluationConfig
from tests.conftest import tiny_state_dict
from tests.test_data import _save_png


def _x2(factory):
    return factory.make("team12_Two", team_id="12", model_source={"scale": 2},
                        checkpoint_obj=tiny_state_dict(scale=2), manifest_extra={"scale": 2})


def _evaluate(factory, tmp_path, *extra: str) -> pd.DataFrame:
    code = main(["evaluate", "--root", str(factory.root), "--manifests", str(factory.manifests),
                 "--results", str(tmp_path / "results"), "--run-id", "r", "--repeats", "1", *extra])
    subs = pd.read_parquet(tmp_path / "results" / "r" / "submissions").set_index("submission_id")
    return code, subs


def test_an_x2_submission_is_measured_on_the_x2_embedded_split(factory, tmp_path, capsys):
    factory.make()
    _x2(factory)
    code, subs = _evaluate(factory, tmp_path)
    assert code == 0, capsys.readouterr()
    assert set(subs["status"]) == {"ok"} and subs.loc["team12_Two", "scale"] == 2
    assert pd.notna(subs.loc["team12_Two", "hygiene_data_range_psnr_db"])  # hygiene ran at x2 as well
    splits = pd.read_parquet(tmp_path / "results" / "r" / "splits")
    assert sorted(zip(splits["submission_id"], splits["split"])) == [("team10_Tiny", "embedded"),
                                                                      ("team12_Two", "embedded_x2")]


def test_a_scale_the_data_lacks_is_a_manifest_error_row_and_the_rest_runs(factory, tmp_path, capsys):
    factory.make()
    _x2(factory)
    data = tmp_path / "data"
    for pair in embedded_split().pairs[:2]:
        hr = read_image_rgb(pair.hr_path)[:64, :48]
        _save_png(data / "valid_HR" / f"{pair.name}.png", hr)
        _save_png(data / "valid_LR" / f"{pair.name}x4.png", matlab_imresize(mod_crop(hr, 4), 1 / 4))
    code, subs = _evaluate(factory, tmp_path, "--data", str(data), "--no-hygiene")
    assert code == 1
    assert subs.loc["team10_Tiny", "status"] == "ok"
    row = subs.loc["team12_Two"]
    assert (row["status"], row["error_stage"]) == ("error", "manifest")
    assert row["error"].startswith("[team12_Two] scale 2: the data has no x2 split (splits: valid at x4). Fix: add "
                                   f"<split>_LR/X2/NAMEx2.png under {data}")
    assert row["error"].endswith("or declare scale 4 if the network upscales by that")
    assert set(pd.read_parquet(tmp_path / "results" / "r" / "splits")["submission_id"]) == {"team10_Tiny"}


def test_evaluate_submission_without_a_split_of_its_scale_is_an_error_row(factory):
    sub = parse_manifest(_x2(factory), factory.root)
    row = evaluate_submission(sub, [embedded_split()], EvaluationConfig(protocol=OFFICIAL, hygiene=False), "r").submission
    assert (row.status, row.error_stage) == ("error", "manifest")
    assert row.error.startswith("[team12_Two] scale 2: the data has no x2 split (splits: embedded at x4). Fix: ")


def test_fingerprint_covers_only_the_splits_of_the_submissions_scale(factory):
    four = parse_manifest(factory.make(), factory.root)
    two = parse_manifest(_x2(factory), factory.root)
    x4, x2 = embedded_split(), embedded_split(scale=2)
    assert fingerprint(four, "p", [x4]) == fingerprint(four, "p", [x4, x2])
    assert fingerprint(two, "p", [x2]) == fingerprint(two, "p", [x4, x2]) != fingerprint(two, "p", [x4])
