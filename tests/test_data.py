"""Tests for esr_eval.data: MATLAB-exact bicubic, decoding, split discovery, embedded split."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esr_eval import data
from esr_eval.data import (
    EMBEDDED_PHOTOS,
    ImagePair,
    Split,
    SplitError,
    discover_splits,
    embedded_source_paths,
    embedded_split,
    folder_split,
    load_pair,
    matlab_imresize,
    mod_crop,
    official_split,
    read_image_rgb,
    recheck_splits,
    resolve_splits,
    validate_split,
)
from tests.conftest import SHARED_DATA

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real SR images not found at {SHARED_DATA} (set ESR_EVAL_SHARED_DATA to their folder)",
)


def _save_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def _random_rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_same_pixels(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    differing = int(np.count_nonzero(actual != expected))
    assert differing == 0, f"{what}: {differing} of {expected.size} values differ"


# --- matlab_imresize -----------------------------------------------------------------------


@needs_shared_data
@pytest.mark.parametrize("name", ["baby", "bird", "butterfly", "head", "woman"])
def test_imresize_reproduces_set5_x4_lr(name):
    hr = read_image_rgb(SHARED_DATA / "Set5" / "HR" / f"{name}.png")
    expected = read_image_rgb(SHARED_DATA / "Set5" / "LR_x4" / f"{name}x4.png")
    _assert_same_pixels(matlab_imresize(hr, 1 / 4), expected, f"Set5 {name} x4")


@needs_shared_data
def test_imresize_reproduces_div2k_x2_lr_fast():
    hr = read_image_rgb(SHARED_DATA / "DIV2K_0004_x2" / "HR" / "0004.png")
    expected = read_image_rgb(SHARED_DATA / "DIV2K_0004_x2" / "LR_x2" / "0004x2.png")
    start = time.perf_counter()
    actual = matlab_imresize(hr, 1 / 2)
    elapsed_s = time.perf_counter() - start
    _assert_same_pixels(actual, expected, "DIV2K 0004 x2")
    assert elapsed_s < 3.0, f"2040x1344 downscale took {elapsed_s:.2f} s"


@pytest.mark.parametrize("scale", [1 / 2, 1 / 4])
def test_imresize_keeps_linear_ramp_and_constant(scale):
    step = int(round(1 / scale))
    ramp = np.tile((np.arange(64) * 2).astype(np.uint8), (8, 1))
    out = matlab_imresize(ramp, scale)
    assert out.shape == (8 * scale, 64 * scale)
    # Output column j (1-based) samples input position u = j*step - (step-1)/2 (1-based), so the
    # value 2*(u-1) = 2*step*j - step - 1 away from the mirrored edges.
    j = np.arange(1, out.shape[1] + 1)
    expected_row = 2 * step * j - step - 1
    interior = slice(2, -2)
    expected = np.tile(expected_row[interior], (out.shape[0], 1))
    np.testing.assert_array_equal(out[:, interior], expected)
    constant = np.full((13, 21, 3), 117, dtype=np.uint8)
    np.testing.assert_array_equal(matlab_imresize(constant, scale), 117)


def test_imresize_output_size_is_ceiled():
    assert matlab_imresize(np.zeros((13, 10), np.uint8), 1 / 4).shape == (4, 3)


def test_imresize_rejects_upscaling_and_floats():
    with pytest.raises(ValueError, match="downscaling"):
        matlab_imresize(np.zeros((8, 8), np.uint8), 2.0)
    with pytest.raises(ValueError, match="uint8"):
        matlab_imresize(np.zeros((8, 8), np.float32), 0.5)


def test_round_to_uint8_rounds_half_away_from_zero_and_saturates():
    values = np.array([0.49999999999999994, 0.5, 1.5, 2.5, 254.5, 300.0, -0.5, -3.0])
    np.testing.assert_array_equal(data._round_to_uint8(values), [0, 1, 2, 3, 255, 255, 0, 0])


# --- decoding ------------------------------------------------------------------------------


def test_read_image_rgb_converts_gray_and_drops_alpha(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    decoded = read_image_rgb(_save_png(tmp_path / "gray.png", gray))
    assert decoded.shape == (6, 8, 3) and decoded.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], gray)
    rgba = np.dstack([_random_rgb(5, 7, seed=1), np.full((5, 7), 9, np.uint8)])
    decoded_rgba = read_image_rgb(_save_png(tmp_path / "rgba.png", rgba))
    np.testing.assert_array_equal(decoded_rgba, rgba[..., :3])


def test_read_image_rgb_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(SplitError, match="corrupt.png"):
        read_image_rgb(corrupt)
    with pytest.raises(SplitError, match="missing.png"):
        read_image_rgb(tmp_path / "missing.png")
    sixteen_bit = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(sixteen_bit)
    with pytest.raises(SplitError, match="deep.png.*8-bit"):
        read_image_rgb(sixteen_bit)


def test_mod_crop_crops_bottom_and_right():
    image = np.arange(11 * 10).reshape(11, 10)
    cropped = mod_crop(image, 4)
    np.testing.assert_array_equal(cropped, image[:8, :8])


# --- splits --------------------------------------------------------------------------------


def _write_official(root: Path, split: str, names: list[str], scale: int = 4) -> None:
    for seed, name in enumerate(names):
        hr = _random_rgb(8 * scale + 3, 6 * scale + 1, seed)
        _save_png(root / f"{split}_HR" / f"{name}.png", hr)
        lr = matlab_imresize(mod_crop(hr, scale), 1 / scale)
        _save_png(root / f"{split}_LR" / f"{name}x{scale}.png", lr)


def test_official_split_pairs_files_and_load_pair_mod_crops(tmp_path):
    _write_official(tmp_path, "valid", ["0802", "0801"])
    split = official_split(tmp_path, "valid")
    assert split.name == "valid" and split.scale == 4
    assert [p.name for p in split.pairs] == ["0801", "0802"]
    assert split.pairs[0].lr_path == tmp_path / "valid_LR" / "0801x4.png"
    lr, hr = load_pair(split.pairs[0], 4)
    assert lr.shape == (8, 6, 3) and hr.shape == (32, 24, 3)
    validate_split(split)


def test_official_split_lists_unmatched_names(tmp_path):
    _write_official(tmp_path, "test", ["a", "b"])
    _save_png(tmp_path / "test_HR" / "only_hr.png", _random_rgb(8, 8, 0))
    _save_png(tmp_path / "test_LR" / "only_lrx4.png", _random_rgb(2, 2, 0))
    with pytest.raises(SplitError, match=r"HR without LR: only_hr.*LR without HR: only_lrx4"):
        official_split(tmp_path, "test")


def test_official_split_missing_folder_names_it(tmp_path):
    with pytest.raises(SplitError, match="nope_HR"):
        official_split(tmp_path, "nope")


def test_folder_split_accepts_both_lr_namings_and_rejects_ambiguity(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    for name in ("cat", "dog"):
        _save_png(hr_dir / f"{name}.png", _random_rgb(8, 8, 0))
    _save_png(lr_dir / "catx4.png", _random_rgb(2, 2, 0))
    _save_png(lr_dir / "dog.png", _random_rgb(2, 2, 0))
    split = folder_split("pets", hr_dir, lr_dir, 4)
    assert {p.name: p.lr_path.name for p in split.pairs} == {"cat": "catx4.png", "dog": "dog.png"}
    _save_png(lr_dir / "cat.png", _random_rgb(2, 2, 0))
    with pytest.raises(SplitError, match=r"cat.png, catx4.png all have stem 'cat'.*\nFix: .*--lr-glob"):
        folder_split("pets", hr_dir, lr_dir, 4)


def _pair_folders(tmp_path: Path, hr_names: list[str], lr_names: list[str], scale: int = 4,
                  hr_px: tuple[int, int] = (24, 16)) -> tuple[Path, Path]:
    """HR images of ``hr_px`` (HxW) and LR images 1/``scale`` of them, named as given (in that order)."""
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    for seed, (hr_name, lr_name) in enumerate(zip(hr_names, lr_names)):
        hr = _random_rgb(*hr_px, seed)
        _save_png(hr_dir / hr_name, hr)
        _save_png(lr_dir / lr_name, matlab_imresize(mod_crop(hr, scale), 1 / scale))
    return hr_dir, lr_dir


@pytest.mark.parametrize("hr_names, lr_names", [
    (["img_001_SRF_4_HR.png", "img_002_SRF_4_HR.png"], ["img_001_SRF_4_LR.png", "img_002_SRF_4_LR.png"]),
    (["baby.png", "bird.png"], ["babyx4.png", "birdx4.png"]),
    (["0801.png", "0802.png"], ["0801x4.png", "0802X4.png"]),
    (["baby_HR_x4.png", "bird_HR_x4.png"], ["baby_LRBI_x4.png", "bird_LRBI_x4.png"]),
    (["Canon_001_HR.png", "Canon_002_HR.png"], ["Canon_001_LR4.png", "Canon_002_LR4.png"]),
    (["HR_a.png", "HR_b.png"], ["a_bicubic.png", "b_bicubic.png"]),
])
def test_folder_split_pairs_the_usual_benchmark_names_and_keeps_the_hr_stem(tmp_path, hr_names, lr_names):
    hr_dir, lr_dir = _pair_folders(tmp_path, hr_names, lr_names)
    split = folder_split("bench", hr_dir, lr_dir)
    assert [(p.name, p.lr_path.name) for p in split.pairs] == [
        (Path(hr).stem, lr) for hr, lr in sorted(zip(hr_names, lr_names))]
    assert split.scale == 4
    validate_split(split)


def test_common_stem_names_what_it_removed():
    assert data.common_stem("img_001_SRF_4_HR", "HR") == ("img_001", ("_HR", "_SRF_4"))
    assert data.common_stem("babyx4_LR", "LR") == ("baby", ("_LR", "x4"))
    assert data.common_stem("box2", "HR") == ("box2", ())
    assert data.common_stem("box2x4", "LR") == ("box2", ("x4",))  # one glued scale only


def test_folder_split_reads_the_scale_from_the_image_sizes(tmp_path):
    hr_dir, lr_dir = _pair_folders(tmp_path, ["a.png", "b.png"], ["ax2.png", "bx2.png"], scale=2, hr_px=(33, 41))
    split = folder_split("two", hr_dir, lr_dir)
    assert split.scale == 2
    validate_split(split)
    hr_dir3, lr_dir3 = _pair_folders(tmp_path / "three", ["a.png"], ["ax3.png"], scale=3, hr_px=(40, 50))
    assert folder_split("three", hr_dir3, lr_dir3).scale == 3


def test_folder_split_unpaired_names_the_file_the_rule_a_bounded_list_and_the_fix(tmp_path):
    names = [f"img_{i:03d}" for i in range(12)]
    hr_dir, lr_dir = _pair_folders(tmp_path, [f"{n}_SRF_4_HR.png" for n in names],
                                   [f"{n}_SRF_4_LR.png" for n in names[:2]] + [f"{n}_SRF_4_LRx.png" for n in names[2:]])
    with pytest.raises(SplitError) as caught:
        folder_split("Urban", hr_dir, lr_dir)
    message = str(caught.value)
    assert ("img_002_SRF_4_HR.png: stem 'img_002' (after removing _HR, _SRF_4) has no LR file with that stem; "
            "nearest unpaired LR stem: 'img_002_LRx'") in message
    assert "20 file(s) without a partner" in message and "... and 12 more" in message
    assert message.count("\n  ") == data.MAX_LISTED + 1
    assert message.splitlines()[-1].startswith("Fix: ") and "--hr-glob '*_HR.png' --lr-glob '*_LR.png'" in message


def test_folder_split_by_globs_pairs_one_folder_and_says_what_the_star_is(tmp_path):
    hr_dir, lr_dir = _pair_folders(tmp_path, ["a-big.png", "b-big.png"], ["a-small.png", "b-small.png"])
    for path in lr_dir.iterdir():
        path.rename(hr_dir / path.name)
    with pytest.raises(SplitError, match="same folder.*Fix: .*--hr-glob"):
        folder_split("one", hr_dir, hr_dir)
    split = folder_split("one", hr_dir, hr_dir, hr_glob="*-big.png", lr_glob="*-small.png")
    assert [(p.name, p.lr_path.name) for p in split.pairs] == [("a-big", "a-small.png"), ("b-big", "b-small.png")]
    (hr_dir / "c-big.png").write_bytes((hr_dir / "a-big.png").read_bytes())
    with pytest.raises(SplitError, match=r"c-big.png: stem 'c' \(the \* of --hr-glob '\*-big.png'\) has no LR file"):
        folder_split("one", hr_dir, hr_dir, hr_glob="*-big.png", lr_glob="*-small.png")
    with pytest.raises(SplitError, match=r"--lr-glob '\*-\*.png': needs exactly one \*.*Fix: "):
        folder_split("one", hr_dir, hr_dir, hr_glob="*-big.png", lr_glob="*-*.png")


def test_resolve_splits_passes_the_globs_to_pairs_and_refuses_them_alone(tmp_path):
    hr_dir, lr_dir = _pair_folders(tmp_path, ["a_HR.png"], ["a_LR.png"])
    with pytest.raises(SplitError, match="no --pair was given. Fix: "):
        resolve_splits(None, None, None, hr_glob="*_HR.png")
    (split,) = resolve_splits(None, None, [("p", str(hr_dir), str(lr_dir))], hr_glob="*_HR.png", lr_glob="*_LR.png")
    assert split.pairs[0].name == "a_HR"
    with pytest.raises(SplitError, match="more than one split is named p. Fix: "):
        resolve_splits(None, None, [("p", str(hr_dir), str(lr_dir))] * 2)


def test_official_layout_per_scale_and_its_names(tmp_path):
    _write_official(tmp_path, "valid", ["0801"])
    x2 = tmp_path / "valid_LR" / "X2"
    hr = read_image_rgb(tmp_path / "valid_HR" / "0801.png")
    _save_png(x2 / "0801x2.png", matlab_imresize(mod_crop(hr, 2), 1 / 2))
    assert [(s.name, s.scale) for s in discover_splits(tmp_path)] == [("valid_x2", 2), ("valid", 4)]
    assert [s.name for s in resolve_splits(tmp_path, ["valid"], None, {2})] == ["valid_x2"]
    assert resolve_splits(tmp_path, None, None, {3}) == []
    assert official_split(tmp_path, "valid", 2).pairs[0].lr_path == x2 / "0801x2.png"
    with pytest.raises(SplitError, match=r"no x3 LR images \(it has x2, x4\). Fix: .*valid_LR/X3/NAMEx3.png"):
        official_split(tmp_path, "valid", 3)
    _save_png(tmp_path / "valid_LR" / "X4" / "0801x4.png", _random_rgb(8, 6, 0))
    with pytest.raises(SplitError, match="both directly in it and in X4/. Fix: keep one"):
        discover_splits(tmp_path)


def test_scale_gap_names_the_splits_and_the_fix(tmp_path):
    _write_official(tmp_path, "valid", ["0801"])
    splits = resolve_splits(tmp_path, None, None, {2, 4})
    assert data.scale_gap(4, splits, tmp_path) is None
    problem, fix = data.scale_gap(2, splits, tmp_path)
    assert problem == "the data has no x2 split (splits: valid at x4)"
    assert fix.startswith(f"add <split>_LR/X2/NAMEx2.png under {tmp_path}") and fix.endswith(
        "or declare scale 4 if the network upscales by that")


def test_discover_splits_finds_pairs_and_flags_lonely_folders(tmp_path):
    _write_official(tmp_path, "DIV2K_LSDIR_valid", ["1"])
    _write_official(tmp_path, "DIV2K_LSDIR_test", ["2"])
    names = [s.name for s in discover_splits(tmp_path, {4})]
    assert names == ["DIV2K_LSDIR_test", "DIV2K_LSDIR_valid"]
    (tmp_path / "extra_HR").mkdir()
    with pytest.raises(SplitError, match="extra_HR"):
        discover_splits(tmp_path, {4})


def test_load_pair_size_mismatch_names_both_files_and_sizes(tmp_path):
    hr_path = _save_png(tmp_path / "hr.png", _random_rgb(16, 12, 0))
    lr_path = _save_png(tmp_path / "lr.png", _random_rgb(4, 4, 0))
    with pytest.raises(SplitError, match=r"lr\.png: LR is 4x4.*hr\.png.*12x16.*3x4"):
        load_pair(ImagePair("x", hr_path, lr_path), 4)


def test_validate_split_reports_every_bad_file(tmp_path):
    _write_official(tmp_path, "s", ["good", "bad_size", "bad_bytes"])
    _save_png(tmp_path / "s_LR" / "bad_sizex4.png", _random_rgb(3, 3, 0))
    (tmp_path / "s_HR" / "bad_bytes.png").write_bytes(b"garbage")
    with pytest.raises(SplitError) as caught:
        validate_split(official_split(tmp_path, "s"))
    message = str(caught.value)
    assert "2 of 3" in message and "bad_sizex4.png" in message and "bad_bytes.png" in message
    assert "good" not in message


def test_split_sha256_tracks_content_not_order(tmp_path):
    _write_official(tmp_path, "s", ["a", "b"])
    split = official_split(tmp_path, "s")
    reordered = Split("other", 4, tuple(reversed(split.pairs)))
    assert len(split.sha256) == 64 and split.sha256 == reordered.sha256
    _save_png(split.pairs[1].hr_path, _random_rgb(35, 25, seed=99))
    assert official_split(tmp_path, "s").sha256 != split.sha256


# --- embedded split ------------------------------------------------------------------------


def test_embedded_split_builds_once_and_matches_its_recipe(tmp_path):
    split = embedded_split(tmp_path)
    assert split.name == "embedded" and split.scale == 4
    assert [p.name for p in split.pairs] == sorted(Path(photo).stem for photo in EMBEDDED_PHOTOS)
    sources = {path.stem: path for path in embedded_source_paths()}
    for pair in split.pairs:
        lr, hr = load_pair(pair, 4)
        source = read_image_rgb(sources[pair.name])
        top, left = (source.shape[0] - 256) // 2, (source.shape[1] - 256) // 2
        np.testing.assert_array_equal(hr, source[top : top + 256, left : left + 256])
        np.testing.assert_array_equal(lr, matlab_imresize(hr, 1 / 4))
    first_mtime_ns = split.pairs[0].hr_path.stat().st_mtime_ns
    again = embedded_split(tmp_path)
    assert again == split and again.pairs[0].hr_path.stat().st_mtime_ns == first_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedded-v1"]


def test_embedded_split_at_other_scales_uses_the_same_crops(tmp_path):
    four = embedded_split(tmp_path)
    for scale in (2, 3):
        split = embedded_split(tmp_path, scale=scale)
        assert (split.name, split.scale) == (f"embedded_x{scale}", scale)
        assert split.pairs[0].lr_path.parent == tmp_path / f"embedded-v1-x{scale}" / "embedded_LR" / f"X{scale}"
        for pair, pair4 in zip(split.pairs, four.pairs):
            lr, hr = load_pair(pair, scale)
            assert pair.name == pair4.name and pair.hr_path.read_bytes() == pair4.hr_path.read_bytes()
            assert hr.shape[0] == 256 - 256 % scale
            np.testing.assert_array_equal(lr, matlab_imresize(hr, 1 / scale))
    assert [s.name for s in resolve_splits(None, None, None, {4, 2})] == ["embedded_x2", "embedded"]


def test_embedded_split_loser_of_a_race_uses_the_winners_folder(tmp_path, monkeypatch):
    real_writer = data._write_embedded_files

    def writer_that_loses_the_race(staging: Path, scale: int) -> None:
        real_writer(staging, scale)
        real_writer(tmp_path / "embedded-v1", scale)

    monkeypatch.setattr(data, "_write_embedded_files", writer_that_loses_the_race)
    split = embedded_split(tmp_path)
    assert len(split.pairs) == len(EMBEDDED_PHOTOS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedded-v1"]


def test_embedded_split_uses_cache_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("ESR_EVAL_CACHE", str(tmp_path / "cache"))
    split = embedded_split()
    assert split.pairs[0].hr_path.is_relative_to(tmp_path / "cache" / "embedded-v1" / "embedded_HR")


def test_resolve_splits_default_is_embedded():
    (split,) = resolve_splits(None, None, None)
    assert split.name == "embedded"


def test_resolve_splits_rejects_bad_data_before_any_model_runs(tmp_path):
    hr, lr = tmp_path / "x_HR", tmp_path / "x_LR"
    hr.mkdir()
    lr.mkdir()
    split = embedded_split()
    pair = split.pairs[0]
    (hr / f"{pair.name}.png").write_bytes(pair.hr_path.read_bytes())
    (lr / f"{pair.name}x4.png").write_bytes(b"not a png")
    with pytest.raises(SplitError, match=f"{pair.name}x4.png"):
        resolve_splits(tmp_path, ["x"], None)


# --- the ledger (records "Integrity") ------------------------------------------------------------


def test_recheck_splits_finds_a_changed_or_vanished_file(tmp_path):
    import shutil

    source = embedded_split()
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    hr.mkdir()
    lr.mkdir()
    for pair in source.pairs:
        shutil.copy(pair.hr_path, hr / pair.hr_path.name)
        shutil.copy(pair.lr_path, lr / pair.lr_path.name)
    split = folder_split("copy", hr, lr, 4)
    start = split.sha256
    assert recheck_splits([split])["ok"]
    first = sorted(hr.iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\0")
    (change,) = recheck_splits([split])["changed"]
    assert change["name"] == "copy" and change["sha256_start"] == start != change["sha256_end"]
    first.unlink()
    (change,) = recheck_splits([split])["changed"]
    assert change["sha256_end"] is None and "FileNotFoundError" in change["error"]
