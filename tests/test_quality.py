"""Tests for esr_eval.quality against independent computations (skimage, direct formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from esr_eval.data import ImagePair, load_pair
from esr_eval.quality import (
    QualityScores,
    psnr_db,
    psnr_y_db,
    rgb_to_y,
    score,
    ssim,
    ssim_y,
    to_uint8,
)
from tests.conftest import SHARED_DATA

SET5_NAMES = ("baby", "bird", "butterfly", "head", "woman")


@pytest.fixture
def noisy_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (48, 40, 3)).astype(np.float64)
    hr = ndimage.uniform_filter(noise, size=(5, 5, 1))
    hr_u8 = hr.round().astype(np.uint8)
    sr_u8 = np.clip(hr_u8 + rng.normal(0, 6, hr_u8.shape), 0, 255).round().astype(np.uint8)
    return sr_u8, hr_u8


def _crop(image: np.ndarray, border: int) -> np.ndarray:
    return image[border:-border, border:-border]


def _cv2_style_ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    """The official formula with the full 2-D 11x11 window (as cv2.filter2D applies it)."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    window = np.outer(g / g.sum(), g / g.sum())

    def valid(plane):
        return ndimage.correlate(plane, window, mode="reflect")[5:-5, 5:-5]

    mu_a, mu_b = valid(a), valid(b)
    var_a, var_b = valid(a * a) - mu_a**2, valid(b * b) - mu_b**2
    cov = valid(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    ssim_map = numerator / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


# --- to_uint8 ------------------------------------------------------------------------------


def test_to_uint8_rounds_half_to_even_and_clamps():
    levels = np.array([-3.0, 0.5, 1.5, 2.5, 3.5, 254.5, 254.6, 300.0, np.inf], dtype=np.float32)
    image = np.broadcast_to(levels, (1, 3, 2, levels.size)).copy()
    out = to_uint8(torch.from_numpy(image), 255.0)
    assert out.shape == (2, levels.size, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 2, 2, 4, 254, 255, 255, 255])


def test_to_uint8_same_result_for_data_range_1_and_255():
    rng = np.random.default_rng(3)
    jitter = rng.uniform(-0.4, 0.4, (3, 16, 16))
    levels_255 = (rng.integers(0, 256, (3, 16, 16)) + jitter).astype(np.float32)
    levels_1 = (levels_255 / np.float32(255)).astype(np.float32)
    from_255 = to_uint8(torch.from_numpy(levels_255)[None], 255.0)
    from_1 = to_uint8(torch.from_numpy(levels_1)[None], 1.0)
    np.testing.assert_array_equal(from_255, from_1)
    np.testing.assert_array_equal(from_1, to_uint8(levels_1, 1.0))
    np.testing.assert_array_equal(from_1, np.clip(np.rint(levels_255), 0, 255).transpose(1, 2, 0))


def test_to_uint8_matches_official_tensor2uint():
    rng = np.random.default_rng(5)
    sr = torch.from_numpy(rng.uniform(-0.1, 1.1, (1, 3, 9, 11)).astype(np.float32))
    official = sr.data.squeeze().float().clamp_(0, 1.0).cpu().numpy()
    official = np.uint8((np.transpose(official, (1, 2, 0)) * 255.0 / 1.0).round())
    np.testing.assert_array_equal(to_uint8(sr, 1.0), official)


def test_to_uint8_rejects_bad_shapes_and_nan():
    with pytest.raises(ValueError, match="1x3xHxW"):
        to_uint8(np.zeros((1, 1, 4, 4), np.float32), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.full((3, 4, 4), np.nan, np.float32), 1.0)


# --- PSNR ----------------------------------------------------------------------------------


def test_psnr_matches_skimage_and_direct_formula(noisy_pair):
    sr, hr = noisy_pair
    expected = peak_signal_noise_ratio(_crop(hr, 4), _crop(sr, 4), data_range=255)
    assert psnr_db(sr, hr, 4) == pytest.approx(expected, abs=1e-12)
    mse = np.mean((_crop(sr, 4).astype(np.float64) - _crop(hr, 4)) ** 2)
    assert psnr_db(sr, hr, 4) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-10)
    assert psnr_db(sr, hr, 4) != pytest.approx(psnr_db(sr, hr, 0), abs=1e-6)


def test_psnr_ignores_the_border_and_is_inf_for_identical_images(noisy_pair):
    _, hr = noisy_pair
    assert psnr_db(hr, hr.copy(), 4) == math.inf
    framed = hr.copy()
    framed[:4] = 0
    framed[:, -4:] = 255
    assert psnr_db(framed, hr, 4) == math.inf
    assert psnr_db(framed, hr, 3) < 30


def test_metrics_reject_mismatched_inputs(noisy_pair):
    sr, hr = noisy_pair
    with pytest.raises(ValueError, match="shape"):
        psnr_db(sr[:-4], hr, 4)
    with pytest.raises(ValueError, match="uint8"):
        ssim(sr.astype(np.float32), hr, 4)


# --- SSIM ----------------------------------------------------------------------------------


def test_ssim_matches_skimage_and_full_window_formula(noisy_pair):
    sr, hr = noisy_pair
    expected_skimage = structural_similarity(
        _crop(sr, 4), _crop(hr, 4), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255, channel_axis=2,
    )
    value = ssim(sr, hr, 4)
    assert 0.5 < value < 0.99
    assert value == pytest.approx(expected_skimage, abs=1e-12)
    sr64, hr64 = _crop(sr, 4).astype(np.float64), _crop(hr, 4).astype(np.float64)
    per_channel = [_cv2_style_ssim_plane(sr64[..., c], hr64[..., c]) for c in range(3)]
    assert value == pytest.approx(np.mean(per_channel), abs=1e-12)
    assert ssim(hr, hr, 4) == pytest.approx(1.0, abs=1e-12)


# --- Y channel -----------------------------------------------------------------------------


def test_rgb_to_y_matches_skimage_rgb2ycbcr():
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [12, 200, 77]]], dtype=np.uint8)
    y = rgb_to_y(pixels)
    np.testing.assert_allclose(y, rgb2ycbcr(pixels)[..., 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(y[0, :2], [16.0, 235.0], atol=1e-12)


def test_y_metrics_match_independent_computation(noisy_pair):
    sr, hr = noisy_pair
    y_sr, y_hr = rgb2ycbcr(sr)[..., 0], rgb2ycbcr(hr)[..., 0]
    mse = np.mean((_crop(y_sr, 4) - _crop(y_hr, 4)) ** 2)
    assert psnr_y_db(sr, hr, 4) == pytest.approx(20 * math.log10(255 / math.sqrt(mse)), abs=1e-9)
    expected_ssim = structural_similarity(
        _crop(y_sr, 4), _crop(y_hr, 4), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
    )
    assert ssim_y(sr, hr, 4) == pytest.approx(expected_ssim, abs=1e-12)


def test_score_uses_scale_as_border(noisy_pair):
    sr, hr = noisy_pair
    assert score(sr, hr, 2) == QualityScores(
        psnr_db=psnr_db(sr, hr, 2),
        ssim=ssim(sr, hr, 2),
        psnr_y_db=psnr_y_db(sr, hr, 2),
        ssim_y=ssim_y(sr, hr, 2),
    )


@pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"Set5 not found at {SHARED_DATA} (set ESR_EVAL_SHARED_DATA to the shared data folder)",
)
def test_bicubic_upsampled_set5_scores_are_plausible():
    scores = []
    for name in SET5_NAMES:
        set5 = SHARED_DATA / "Set5"
        pair = ImagePair(name, set5 / "HR" / f"{name}.png", set5 / "LR_x4" / f"{name}x4.png")
        lr, hr = load_pair(pair, 4)
        lr_tensor = torch.tensor(lr, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        sr = torch.nn.functional.interpolate(
            lr_tensor, scale_factor=4, mode="bicubic", align_corners=False
        )
        scores.append(score(to_uint8(sr, 1.0), hr, 4))
    mean_psnr_db = np.mean([s.psnr_db for s in scores])
    mean_psnr_y_db = np.mean([s.psnr_y_db for s in scores])
    assert 26.0 < mean_psnr_db < 28.0, mean_psnr_db
    assert 28.0 < mean_psnr_y_db < 29.0, mean_psnr_y_db
    assert mean_psnr_y_db > mean_psnr_db
