"""Image quality exactly as the challenge's official code measures it.

Contract (PROTOCOLS.md, "Quality")
- ``to_uint8``: model output (1x3xHxW or 3xHxW, torch tensor on any device or numpy array) ->
  float32 -> clamp to [0, data_range] -> x 255.0 then / data_range (float32, that order, as the
  official ``tensor2uint``) -> round half to even -> uint8 HxWx3. NaN outputs are refused.
- ``psnr_db``: RGB, all channels, ``border`` pixels cropped on every side, MSE in float64,
  20*log10(255 / sqrt(MSE)) in dB; ``math.inf`` when MSE is 0.
- ``ssim``: MATLAB-style SSIM (11x11 Gaussian window, sigma 1.5, valid region only,
  C1 = (0.01*255)^2, C2 = (0.03*255)^2, float64) per RGB channel, then the mean. Same value as
  the official ``calculate_ssim`` (cv2.filter2D with the outer-product window, crop [5:-5, 5:-5]);
  the window is applied separably here, which differs only by float64 rounding (~1e-15).
- ``rgb_to_y``: MATLAB ``rgb2ycbcr`` luma, BT.601 limited range,
  Y = 16 + 65.481*R + 128.553*G + 24.966*B with R, G, B in [0, 1], float64 on the [0, 255]
  scale and NOT rounded (BasicSR ``bgr2ycbcr(y_only=True)`` on float input; BasicSR computes in
  float32, which moves PSNR-Y by ~1e-6 dB). ``psnr_y_db`` and ``ssim_y`` use it with the same
  border.
- ``score`` gathers all four with border = scale into ``QualityScores``.
Inputs to the metrics are uint8 HxWx3 arrays of identical shape.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

SSIM_WINDOW_PX = 11
SSIM_SIGMA_PX = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
PIXEL_MAX = 255.0
YCBCR_Y_OFFSET = 16.0
YCBCR_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


@dataclass(frozen=True)
class QualityScores:
    """Quality of one SR image against its HR: PSNR in dB, SSIM unitless, RGB and Y variants."""

    psnr_db: float
    ssim: float | None
    psnr_y_db: float
    ssim_y: float | None


def to_uint8(sr: torch.Tensor | np.ndarray, data_range: float, reject_inf: bool = False) -> np.ndarray:
    """Model output (torch.Tensor or np.ndarray, 1x3xHxW or 3xHxW) -> uint8 HxWx3.

    NaN always raises :class:`NonFiniteOutputError`; Inf is clamped as the official code does,
    unless ``reject_inf`` (the evaluator's choice: an Inf output is a broken network).
    """
    loaded_torch = sys.modules.get("torch")
    if loaded_torch is not None and isinstance(sr, loaded_torch.Tensor):
        return _tensor_to_uint8(sr, data_range, loaded_torch.uint8, reject_inf)
    else:
        values = np.asarray(sr, dtype=np.float32)
    values = values.squeeze(0) if values.ndim == 4 and values.shape[0] == 1 else values
    if values.ndim != 3 or values.shape[0] != 3:
        raise ValueError(
            f"model output must be 1x3xHxW or 3xHxW, got shape {tuple(np.shape(sr))}; "
            f"return one RGB image per call"
        )
    bad_count = int((~np.isfinite(values)).sum() if reject_inf else np.isnan(values).sum())
    if bad_count:
        raise NonFiniteOutputError(f"model output holds {bad_count} NaN{' or Inf' if reject_inf else ''} values; "
                                   "it cannot be scored")
    clamped = np.clip(values, np.float32(0), np.float32(data_range))
    scaled = clamped * np.float32(PIXEL_MAX) / np.float32(data_range)
    return np.round(scaled).astype(np.uint8).transpose(1, 2, 0)


class NonFiniteOutputError(ValueError):
    """The model output holds NaN (or, when asked, Inf) values, so it cannot be scored."""


def _tensor_to_uint8(sr, data_range: float, uint8_dtype, reject_inf: bool) -> np.ndarray:
    """:func:`to_uint8` for a torch tensor, on its own device: the same float32 operations
    (clamp, ×255, ÷data_range, round half to even), and only uint8 crosses to the host."""
    values = sr.detach()
    values = values.squeeze(0) if values.ndim == 4 and values.shape[0] == 1 else values
    if values.ndim != 3 or values.shape[0] != 3:
        raise ValueError(
            f"model output must be 1x3xHxW or 3xHxW, got shape {tuple(sr.shape)}; "
            f"return one RGB image per call"
        )
    values = values.float()
    low, high = (float(v) for v in values.aminmax())  # one pass; NaN and Inf propagate into it
    if math.isnan(low) or math.isnan(high) or (reject_inf and (math.isinf(low) or math.isinf(high))):
        raise NonFiniteOutputError(f"model output holds NaN{' or Inf' if reject_inf else ''} values; "
                                   "it cannot be scored")
    scaled = values.clamp(0.0, data_range).mul_(PIXEL_MAX).div_(data_range).round_()
    return scaled.to(dtype=uint8_dtype).permute(1, 2, 0).contiguous().cpu().numpy()


def _check_pair(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int) -> None:
    if sr_u8.dtype != np.uint8 or hr_u8.dtype != np.uint8:
        raise ValueError(
            f"quality metrics take uint8 images, got {sr_u8.dtype} and {hr_u8.dtype}; "
            f"convert the model output with to_uint8"
        )
    if sr_u8.shape != hr_u8.shape:
        raise ValueError(
            f"SR shape {sr_u8.shape} differs from HR shape {hr_u8.shape}; the model must "
            f"upscale by exactly the split's scale and HR must be mod-cropped"
        )
    if min(sr_u8.shape[:2]) <= 2 * border:
        raise ValueError(f"image {sr_u8.shape[:2]} is too small for a {border}-pixel border")


def _crop(image: np.ndarray, border: int) -> np.ndarray:
    height, width = image.shape[:2]
    return image[border : height - border, border : width - border]


def _squared_error_sum(sr: np.ndarray, hr: np.ndarray) -> float:
    """Sum of squared differences, in float64.

    For uint8 images the differences are integers whose squares (<= 255**2) are exact in
    float32, and their float64 sum is an exact integer (< 2**53), so the result is bit-identical
    to the official ``np.mean((a.astype(float64) - b) ** 2)`` times n, at a third of the cost.
    """
    if sr.dtype == np.uint8 and hr.dtype == np.uint8:
        diff = np.subtract(sr, hr, dtype=np.float32)
    else:
        diff = sr.astype(np.float64) - hr.astype(np.float64)
    return float(np.sum(diff * diff, dtype=np.float64))


def _psnr_db(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    cropped = _crop(sr, border)
    mse = _squared_error_sum(cropped, _crop(hr, border)) / cropped.size
    if mse == 0:
        return math.inf
    return 20 * math.log10(PIXEL_MAX / math.sqrt(mse))


def _gaussian_window_1d() -> np.ndarray:
    offsets = np.arange(SSIM_WINDOW_PX, dtype=np.float64) - (SSIM_WINDOW_PX - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * SSIM_SIGMA_PX**2))
    return weights / weights.sum()


def _filter_valid(plane: np.ndarray, window_1d: np.ndarray) -> np.ndarray:
    margin = SSIM_WINDOW_PX // 2
    rows = ndimage.correlate1d(plane, window_1d, axis=0, mode="constant")
    both = ndimage.correlate1d(rows, window_1d, axis=1, mode="constant")
    return both[margin:-margin, margin:-margin]


def _ssim_plane(sr: np.ndarray, hr: np.ndarray) -> float:
    window_1d = _gaussian_window_1d()
    mu1 = _filter_valid(sr, window_1d)
    mu2 = _filter_valid(hr, window_1d)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = _filter_valid(sr**2, window_1d) - mu1_sq
    sigma2_sq = _filter_valid(hr**2, window_1d) - mu2_sq
    sigma12 = _filter_valid(sr * hr, window_1d) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + SSIM_C1) * (2 * sigma12 + SSIM_C2)) / (
        (mu1_sq + mu2_sq + SSIM_C1) * (sigma1_sq + sigma2_sq + SSIM_C2)
    )
    return float(ssim_map.mean())


def _ssim(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    sr64 = _crop(sr, border).astype(np.float64)
    hr64 = _crop(hr, border).astype(np.float64)
    if min(sr64.shape[:2]) < SSIM_WINDOW_PX:
        raise ValueError(f"cropped image {sr64.shape[:2]} is smaller than the 11x11 SSIM window")
    if sr64.ndim == 2:
        return _ssim_plane(sr64, hr64)
    return float(np.mean([_ssim_plane(sr64[..., c], hr64[..., c]) for c in range(sr64.shape[2])]))


def rgb_to_y(image_u8: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` Y of a uint8 HxWx3 RGB image: float64 HxW in [16, 235], unrounded."""
    return YCBCR_Y_OFFSET + image_u8.astype(np.float64) @ (YCBCR_Y_WEIGHTS / PIXEL_MAX)


def psnr_db(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int) -> float:
    """PSNR in dB over all RGB channels after cropping ``border`` pixels on every side."""
    _check_pair(sr_u8, hr_u8, border)
    return _psnr_db(sr_u8, hr_u8, border)


def ssim(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int) -> float:
    """Mean over R, G, B of MATLAB-style SSIM after cropping ``border`` pixels on every side."""
    _check_pair(sr_u8, hr_u8, border)
    return _ssim(sr_u8, hr_u8, border)


def psnr_y_db(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int) -> float:
    """PSNR in dB of the BT.601 luma (``rgb_to_y``) after cropping ``border`` pixels."""
    _check_pair(sr_u8, hr_u8, border)
    return _psnr_db(rgb_to_y(sr_u8), rgb_to_y(hr_u8), border)


def ssim_y(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int) -> float:
    """MATLAB-style SSIM of the BT.601 luma (``rgb_to_y``) after cropping ``border`` pixels."""
    _check_pair(sr_u8, hr_u8, border)
    return _ssim(rgb_to_y(sr_u8), rgb_to_y(hr_u8), border)


def score(sr_u8: np.ndarray, hr_u8: np.ndarray, scale: int, with_ssim: bool = True) -> QualityScores:
    """The metrics with border = ``scale``, as the challenge does.

    SSIM (RGB and Y) costs ~30x a PSNR on a 2K image; ``with_ssim=False`` leaves it ``None``,
    as the official script does unless asked (``--ssim``).
    """
    return QualityScores(
        psnr_db=psnr_db(sr_u8, hr_u8, scale),
        ssim=ssim(sr_u8, hr_u8, scale) if with_ssim else None,
        psnr_y_db=psnr_y_db(sr_u8, hr_u8, scale),
        ssim_y=ssim_y(sr_u8, hr_u8, scale) if with_ssim else None,
    )
