"""Test splits, image decoding and MATLAB-exact bicubic downscaling.

Contract
- Images are uint8 arrays, HxWx3 RGB (H = rows, W = columns), values 0..255.
- ``matlab_imresize`` reproduces MATLAB ``imresize(uint8_image, scale, 'bicubic')`` bit for bit
  for downscaling (0 < scale <= 1): the official DIV2K/LSDIR/Set5 LR images are made that way.
- A ``Split`` is an ordered tuple of HR/LR file pairs at one integer scale; ``Split.sha256`` is the
  content hash recorded in provenance (see its docstring for the exact definition).
- ``load_pair`` returns (lr, hr) with hr mod-cropped to a multiple of the scale and checks that the
  LR size is exactly the cropped HR size divided by the scale.
- Every problem with the data on disk raises ``SplitError`` naming the file(s) and the fix.
- ``embedded_split`` builds a small default split from photographs shipped inside scikit-image,
  cached on disk and created atomically, so a fresh install can run end to end without data.
- ``resolve_splits`` is what a run evaluates (given folders, or the embedded split), every file
  decoded once before any model runs; ``recheck_splits`` re-hashes them at the end of a run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from esr_eval.hashing import file_sha256

EMBEDDED_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
)
EMBEDDED_SPLIT_NAME = "embedded"
EMBEDDED_SCALE = 4
EMBEDDED_HR_SIZE_PX = 256
EMBEDDED_CACHE_SUBDIR = "embedded-v1"
CACHE_ENV_VAR = "ESR_EVAL_CACHE"

_CUBIC_SUPPORT_PX = 4.0
_DECODABLE_PIL_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})


class SplitError(ValueError):
    """A split on disk is incomplete, inconsistent or holds an unreadable image."""


@dataclass(frozen=True)
class ImagePair:
    """One test image: its name (HR file stem) and the two files on disk."""

    name: str
    hr_path: Path
    lr_path: Path


@dataclass(frozen=True)
class Split:
    """A named, ordered set of HR/LR pairs at one integer upscaling factor."""

    name: str
    scale: int
    pairs: tuple[ImagePair, ...]

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 over the files' bytes, independent of folder location and pair order.

        Digest of the lines ``"{name}\\t{sha256(hr bytes)}\\t{sha256(lr bytes)}\\n"`` for every
        pair, sorted by name. Computed on first access, then cached on the instance.
        """
        digest = hashlib.sha256()
        for pair in sorted(self.pairs, key=lambda p: p.name):
            line = f"{pair.name}\t{file_sha256(pair.hr_path)}\t{file_sha256(pair.lr_path)}\n"
            digest.update(line.encode("utf-8"))
        return digest.hexdigest()


# --- MATLAB imresize -----------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5, written exactly as MATLAB's ``imresize`` does."""
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


def _contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output sample: 0-based source indices and weights (out_length x taps)."""
    kernel_width = _CUBIC_SUPPORT_PX / scale
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left + np.arange(taps, dtype=np.float64)[None, :]
    weights = scale * _cubic(scale * (u - indices))
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    source = mirror[np.mod(indices.astype(np.int64) - 1, mirror.size)]
    used = np.any(weights != 0, axis=0)
    return source[:, used], weights[:, used]


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB double -> uint8: round half away from zero, saturate to 0..255.

    ``floor`` plus an exact fractional-part test avoids the ``floor(x + 0.5)`` error at
    0.49999999999999994; negative values only ever saturate to 0, so their halves do not matter.
    """
    whole = np.floor(values)
    rounded = whole + (values - whole >= 0.5)
    return np.clip(rounded, 0, 255).astype(np.uint8)


def _resize_axis(image: np.ndarray, axis: int, scale: float) -> np.ndarray:
    in_length = image.shape[axis]
    out_length = math.ceil(in_length * scale)
    source, weights = _contributions(in_length, out_length, scale)
    moved = np.moveaxis(image, axis, 0).astype(np.float64)
    accum = np.zeros((out_length,) + moved.shape[1:], dtype=np.float64)
    weight_shape = (out_length,) + (1,) * (moved.ndim - 1)
    for tap in range(weights.shape[1]):
        accum += weights[:, tap].reshape(weight_shape) * moved[source[:, tap]]
    return np.moveaxis(_round_to_uint8(accum), 0, axis)


def matlab_imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')`` for a uint8 HxW or HxWxC array, 0 < scale <= 1.

    Output size is ``ceil(scale * H) x ceil(scale * W)``. Antialiased Keys cubic, symmetric
    edge mirroring, height pass first, then width, each pass rounded to uint8 (as MATLAB does).
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"matlab_imresize needs a uint8 HxW or HxWxC array, got dtype {image.dtype} with "
            f"shape {image.shape}; convert with np.asarray(image, dtype=np.uint8) first"
        )
    if not 0 < scale <= 1:
        raise ValueError(
            f"matlab_imresize reproduces MATLAB only for downscaling (0 < scale <= 1), got "
            f"scale={scale}; pass e.g. 1/4 to make x4 LR images"
        )
    return _resize_axis(_resize_axis(image, 0, scale), 1, scale)


# --- decoding ------------------------------------------------------------------------------


def read_image_rgb(path: Path) -> np.ndarray:
    """Decode an 8-bit image file to uint8 HxWx3 RGB.

    Matches the official ``cv2.imread(path)[:, :, ::-1]``: EXIF orientation applied, grayscale
    replicated to three channels, palette expanded, alpha dropped. 16-bit and other modes are
    refused rather than silently truncated.
    """
    try:
        opened = Image.open(path)
        opened.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise SplitError(
            f"{path}: cannot read image ({error}); replace the file with a valid 8-bit PNG"
        ) from error
    with opened:
        if opened.mode not in _DECODABLE_PIL_MODES:
            raise SplitError(
                f"{path}: image mode {opened.mode!r} is not 8-bit gray/RGB; save it as an "
                f"8-bit RGB PNG"
            )
        ImageOps.exif_transpose(opened, in_place=True)
        rgb = opened if opened.mode == "RGB" else opened.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom rows and right columns so that H and W are multiples of ``scale``."""
    height, width = image.shape[:2]
    return image[: height - height % scale, : width - width % scale]


def load_pair(pair: ImagePair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair: (lr uint8 HxWx3, hr uint8 mod-cropped to ``scale``)."""
    lr = read_image_rgb(pair.lr_path)
    hr = mod_crop(read_image_rgb(pair.hr_path), scale)
    expected_lr_hw = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != expected_lr_hw:
        raise SplitError(
            f"{pair.lr_path}: LR is {lr.shape[1]}x{lr.shape[0]} (WxH) but {pair.hr_path} "
            f"mod-cropped is {hr.shape[1]}x{hr.shape[0]}, so x{scale} LR must be "
            f"{expected_lr_hw[1]}x{expected_lr_hw[0]}; regenerate the LR image at scale 1/{scale}"
        )
    return lr, hr


def validate_split(split: Split) -> None:
    """Decode every pair of ``split``; raise one ``SplitError`` naming every bad file."""
    problems = []
    for pair in split.pairs:
        try:
            load_pair(pair, split.scale)
        except SplitError as error:
            problems.append(str(error))
    if problems:
        raise SplitError(
            f"split {split.name!r}: {len(problems)} of {len(split.pairs)} pairs are unusable:\n  "
            + "\n  ".join(problems)
        )


# --- split discovery -----------------------------------------------------------------------


def _png_stems(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise SplitError(f"{folder}: folder not found; check the split root and name")
    stems = {
        path.stem: path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() == ".png" and not path.name.startswith(".")
    }
    if not stems:
        raise SplitError(f"{folder}: no .png images found")
    return stems


def _unmatched_error(split_name: str, hr_only: list[str], lr_only: list[str]) -> SplitError:
    parts = []
    if hr_only:
        parts.append(f"HR without LR: {', '.join(sorted(hr_only))}")
    if lr_only:
        parts.append(f"LR without HR: {', '.join(sorted(lr_only))}")
    return SplitError(
        f"split {split_name!r}: unmatched images ({'; '.join(parts)}); every HR image needs "
        f"exactly one LR image and vice versa"
    )


def folder_split(name: str, hr_dir: Path, lr_dir: Path, scale: int) -> Split:
    """Pair ``hr_dir/NAME.png`` with ``lr_dir/NAMEx{scale}.png`` or ``lr_dir/NAME.png``."""
    hr_files = _png_stems(Path(hr_dir))
    lr_files = _png_stems(Path(lr_dir))
    pairs, hr_only, ambiguous = [], [], []
    claimed: set[str] = set()
    for stem in sorted(hr_files):
        candidates = [c for c in (f"{stem}x{scale}", stem) if c in lr_files]
        if len(candidates) == 2:
            ambiguous.append(stem)
        elif candidates:
            claimed.add(candidates[0])
            pairs.append(ImagePair(stem, hr_files[stem], lr_files[candidates[0]]))
        else:
            hr_only.append(stem)
    if ambiguous:
        raise SplitError(
            f"split {name!r}: {lr_dir} holds both NAMEx{scale}.png and NAME.png for "
            f"{', '.join(ambiguous)}; keep one LR file per image"
        )
    lr_only = [stem for stem in lr_files if stem not in claimed]
    if hr_only or lr_only:
        raise _unmatched_error(name, hr_only, lr_only)
    return Split(name=name, scale=scale, pairs=tuple(pairs))


def official_split(root: Path, split: str, scale: int = 4) -> Split:
    """The challenge layout: ``root/<split>_HR/NAME.png`` with ``<split>_LR/NAMEx{scale}.png``."""
    hr_files = _png_stems(Path(root) / f"{split}_HR")
    lr_files = _png_stems(Path(root) / f"{split}_LR")
    suffix = f"x{scale}"
    hr_only = [stem for stem in hr_files if f"{stem}{suffix}" not in lr_files]
    lr_only = [
        stem
        for stem in lr_files
        if not (stem.endswith(suffix) and stem[: -len(suffix)] in hr_files)
    ]
    if hr_only or lr_only:
        raise _unmatched_error(split, hr_only, lr_only)
    pairs = tuple(
        ImagePair(stem, hr_files[stem], lr_files[f"{stem}{suffix}"]) for stem in sorted(hr_files)
    )
    return Split(name=split, scale=scale, pairs=pairs)


def discover_splits(root: Path, scale: int = 4) -> tuple[Split, ...]:
    """Every ``<split>_HR`` / ``<split>_LR`` folder pair directly under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise SplitError(f"{root}: data root not found")
    folders = {path.name for path in root.iterdir() if path.is_dir()}
    hr_names = {name[: -len("_HR")] for name in folders if name.endswith("_HR")}
    lr_names = {name[: -len("_LR")] for name in folders if name.endswith("_LR")}
    if hr_names != lr_names:
        lonely = sorted(f"{n}_HR" for n in hr_names - lr_names) + sorted(
            f"{n}_LR" for n in lr_names - hr_names
        )
        raise SplitError(f"{root}: folders without their HR/LR partner: {', '.join(lonely)}")
    if not hr_names:
        raise SplitError(f"{root}: no <split>_HR / <split>_LR folder pairs found")
    return tuple(official_split(root, name, scale) for name in sorted(hr_names))


# --- embedded default split ----------------------------------------------------------------


def embedded_source_paths() -> tuple[Path, ...]:
    """The full-size photographs in scikit-image's data folder that the embedded split uses."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise SplitError("scikit-image is not installed; pip install scikit-image")
    data_dir = Path(spec.origin).parent / "data"
    paths = tuple(data_dir / photo for photo in EMBEDDED_PHOTOS)
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SplitError(
            f"scikit-image data files missing: {', '.join(missing)}; reinstall scikit-image"
        )
    return paths


def _center_crop(image: np.ndarray, size_px: int) -> np.ndarray:
    top = (image.shape[0] - size_px) // 2
    left = (image.shape[1] - size_px) // 2
    return image[top : top + size_px, left : left + size_px]


def _write_embedded_files(split_root: Path) -> None:
    hr_dir = split_root / f"{EMBEDDED_SPLIT_NAME}_HR"
    lr_dir = split_root / f"{EMBEDDED_SPLIT_NAME}_LR"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir()
    for source in embedded_source_paths():
        hr = _center_crop(read_image_rgb(source), EMBEDDED_HR_SIZE_PX)
        lr = matlab_imresize(hr, 1 / EMBEDDED_SCALE)
        Image.fromarray(hr).save(hr_dir / f"{source.stem}.png")
        Image.fromarray(lr).save(lr_dir / f"{source.stem}x{EMBEDDED_SCALE}.png")


def default_cache_dir() -> Path:
    """``$ESR_EVAL_CACHE`` if set, else ``~/.cache/esr-eval``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured) if configured else Path.home() / ".cache" / "esr-eval"


def embedded_split(cache_dir: Path | None = None) -> Split:
    """Built-in x4 split: 256x256 centre crops of five scikit-image photos, LR by MATLAB bicubic.

    Stored as an official-layout split in ``<cache_dir>/embedded-v1``. The folder is built under a
    temporary name beside it and renamed into place, so concurrent callers never see a partial
    folder; whoever renames second discards its copy and uses the winner's.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    split_root = cache_root / EMBEDDED_CACHE_SUBDIR
    if not split_root.is_dir():
        cache_root.mkdir(parents=True, exist_ok=True)
        staging_prefix = f".{EMBEDDED_CACHE_SUBDIR}-"
        with tempfile.TemporaryDirectory(dir=cache_root, prefix=staging_prefix) as tmp:
            staging = Path(tmp) / EMBEDDED_CACHE_SUBDIR
            _write_embedded_files(staging)
            try:
                os.rename(staging, split_root)
            except OSError:
                if not split_root.is_dir():
                    raise
    try:
        return official_split(split_root, EMBEDDED_SPLIT_NAME, EMBEDDED_SCALE)
    except SplitError as error:
        raise SplitError(f"{error}; delete {split_root} to rebuild the embedded split") from error


def resolve_splits(data_root: Path | None, names: list[str] | None, pairs: list[tuple[str, str, str]] | None,
                   scale: int = 4) -> list[Split]:
    """The splits to evaluate, all decoded once here so bad files fail before any model runs.

    No data root and no pairs → the embedded default split.
    """
    splits: list[Split] = []
    if data_root is not None:
        if names:
            splits += [official_split(Path(data_root), name, scale) for name in names]
        else:
            splits += list(discover_splits(Path(data_root), scale))
    for name, hr_dir, lr_dir in pairs or []:
        splits.append(folder_split(name, Path(hr_dir), Path(lr_dir), scale))
    if not splits:
        splits = [embedded_split()]
    for split in splits:
        validate_split(split)
    return splits


def recheck_splits(splits: list[Split]) -> dict:
    """Re-hash every split's files now and compare with the digest taken at the start of the run.

    ``Split.sha256`` is cached on the instance, so each split is re-hashed through a fresh ``Split``
    of the same pairs (same definition). Returns ``run.json``'s ``splits_verified_at_end``:
    ``checked_at_unix_s``, ``ok`` and ``changed`` (name, sha256_start, sha256_end or the error).
    """
    changed = []
    for split in splits:
        try:
            now, error = Split(split.name, split.scale, split.pairs).sha256, None
        except OSError as exc:
            now, error = None, f"{type(exc).__name__}: {exc}"
        if now != split.sha256:
            changed.append({"name": split.name, "sha256_start": split.sha256, "sha256_end": now, "error": error})
    return {"checked_at_unix_s": time.time(), "ok": not changed, "changed": changed}
