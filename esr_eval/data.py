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
- Scales: a split is at one scale; one source of images gives one split per scale, named by
  ``scaled_name`` (``NAME`` at x4, ``NAME_x2`` at x2). The official layout keeps each scale's LR
  images in ``<split>_LR/X{scale}/NAMEx{scale}.png`` (x4 also flat ``<split>_LR/NAMEx4.png``).
- ``folder_split`` (``--pair``) pairs two plain folders by the stem the names share once the usual
  markers are removed (``common_stem``: ``_HR``/``_LR``, ``x4``, ``_SRF_4``, ``LRBI_x4``,
  ``_bicubic``), or by ``--hr-glob``/``--lr-glob``; a clash or a file without partner is an error
  naming the file and the rule; the scale is read from the image sizes.
- ``embedded_split`` builds a small default split at any scale from photographs shipped inside
  scikit-image, cached on disk and created atomically, so a fresh install can run end to end
  without data.
- ``resolve_splits`` is what a run evaluates at the scales of its submissions (given folders, or
  the embedded split), every file decoded once before any model runs; ``scale_gap`` says why a
  submission has no split of its scale; ``recheck_splits`` re-hashes them at the end of a run.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Collection
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
MAX_LISTED = 8  # file names a pairing error lists before "... and N more"
MAX_SCALE = 8  # largest scale read from a --pair folder's image sizes

_CUBIC_SUPPORT_PX = 4.0
_DECODABLE_PIL_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})
_SCALE_FOLDER = re.compile(r"[xX]([1-9][0-9]*)")
_SEP = r"[_\-. ]"


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


def scaled_name(base: str, scale: int) -> str:
    """A split's name at ``scale``: ``base`` at x4 (the challenge's scale), ``base_x{scale}`` otherwise."""
    return base if scale == EMBEDDED_SCALE else f"{base}_x{scale}"


def _bounded(lines: list[str]) -> str:
    """The first ``MAX_LISTED`` lines, indented, then how many more there are."""
    more = len(lines) - MAX_LISTED
    return "\n  ".join(lines[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else []))


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


def _unmatched_error(split_name: str, hr_only: list[str], lr_only: list[str], scale: int) -> SplitError:
    parts = [f"{len(names)} {what}: {', '.join(sorted(names)[:MAX_LISTED])}" + (" ..." if len(names) > MAX_LISTED else "")
             for what, names in (("HR without LR", hr_only), ("LR without HR", lr_only)) if names]
    place = f"<split>_LR/X{scale}/NAMEx{scale}.png" + (" (or <split>_LR/NAMEx4.png)" if scale == EMBEDDED_SCALE else "")
    return SplitError(
        f"split {split_name!r}: unmatched images ({'; '.join(parts)}). Fix: every <split>_HR/NAME.png needs "
        f"exactly one x{scale} LR image {place} and vice versa (LR images of another scale go in "
        f"<split>_LR/X2/, X3/, ...)"
    )


def lr_folders(root: Path, split: str) -> dict[int, Path]:
    """scale → the folder of ``split``'s LR images at that scale: ``<split>_LR/X{scale}/`` (``x`` also
    accepted), and for x4 also ``<split>_LR/`` itself when it holds the images directly."""
    lr_root = Path(root) / f"{split}_LR"
    if not lr_root.is_dir():
        raise SplitError(f"{lr_root}: folder not found; check the split root and name")
    folders: dict[int, Path] = {}
    for path in sorted(lr_root.iterdir()):
        match = _SCALE_FOLDER.fullmatch(path.name)
        if match and path.is_dir():
            scale = int(match[1])
            if scale in folders:
                raise SplitError(f"{lr_root}: both {folders[scale].name}/ and {path.name}/ hold x{scale} LR images. "
                                 "Fix: keep one of them")
            folders[scale] = path
    if any(path.is_file() and path.suffix.lower() == ".png" for path in lr_root.iterdir()):
        if EMBEDDED_SCALE in folders:
            raise SplitError(f"{lr_root}: x4 LR images lie both directly in it and in {folders[EMBEDDED_SCALE].name}/. "
                             f"Fix: keep one of them")
        folders[EMBEDDED_SCALE] = lr_root
    if not folders:
        raise SplitError(f"{lr_root}: no LR images (neither NAMEx4.png files nor X2/, X3/, X4/ folders). Fix: put "
                         f"the x4 LR images there as NAMEx4.png, other scales in X2/NAMEx2.png, X3/NAMEx3.png")
    return folders


def official_split(root: Path, split: str, scale: int = 4) -> Split:
    """The challenge layout: ``root/<split>_HR/NAME.png`` with ``<split>_LR/X{scale}/NAMEx{scale}.png``
    (x4 also ``<split>_LR/NAMEx4.png``); named :func:`scaled_name` (``split`` itself at x4)."""
    root = Path(root)
    hr_files = _png_stems(root / f"{split}_HR")
    folders = lr_folders(root, split)
    if scale not in folders:
        have = ", ".join(f"x{s}" for s in sorted(folders))
        raise SplitError(f"{root / f'{split}_LR'}: no x{scale} LR images (it has {have}). Fix: put them in "
                         f"{split}_LR/X{scale}/NAMEx{scale}.png")
    lr_files = _png_stems(folders[scale])
    suffix = f"x{scale}"
    hr_only = [stem for stem in hr_files if f"{stem}{suffix}" not in lr_files]
    lr_only = [
        stem
        for stem in lr_files
        if not (stem.endswith(suffix) and stem[: -len(suffix)] in hr_files)
    ]
    if hr_only or lr_only:
        raise _unmatched_error(scaled_name(split, scale), hr_only, lr_only, scale)
    pairs = tuple(
        ImagePair(stem, hr_files[stem], lr_files[f"{stem}{suffix}"]) for stem in sorted(hr_files)
    )
    return Split(name=scaled_name(split, scale), scale=scale, pairs=pairs)


def discover_splits(root: Path, scales: Collection[int] | None = None) -> tuple[Split, ...]:
    """Every ``<split>_HR`` / ``<split>_LR`` folder pair directly under ``root``, at each scale it has
    (only those in ``scales`` when given), sorted by name then scale."""
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
    return tuple(split for name in sorted(hr_names) for split in _official_splits(root, name, scales))


def _official_splits(root: Path, split: str, scales: Collection[int] | None) -> tuple[Split, ...]:
    _png_stems(root / f"{split}_HR")  # a missing HR folder is named first
    return tuple(official_split(root, split, scale) for scale in sorted(lr_folders(root, split))
                 if scales is None or scale in scales)


# --- pairing plain folders (--pair) -----------------------------------------------------------


@dataclass(frozen=True)
class _Named:
    """A file of a ``--pair`` folder, the common stem found in its name, and the rule that found it."""

    path: Path
    stem: str
    rule: str


def _marker_pattern(*tokens: str) -> re.Pattern:
    """The tokens as separated words: at the start (with the separator after) or after a separator."""
    body = "|".join(tokens)
    return re.compile(rf"^(?:{body})(?:{_SEP}|$)|{_SEP}(?:{body})(?={_SEP}|$)", re.IGNORECASE)


_MARKERS = {
    "HR": _marker_pattern(r"HR", r"SRF[_-]?\d+", r"x\d+"),
    "LR": _marker_pattern(r"LR(?:BI|BD|DN)[_-]?x?\d+", r"LR(?:x?\d+)?", r"SRF[_-]?\d+", r"x\d+", r"bicubic"),
}
_LR_ATTACHED_SCALE = re.compile(rf"(?<!{_SEP})(?<=.)x\d+$", re.IGNORECASE)


def common_stem(stem: str, side: str) -> tuple[str, tuple[str, ...]]:
    """(``stem`` without its usual markers, the markers removed, rightmost first) for an ``HR`` or ``LR`` file.

    Both sides drop the separated words ``SRF_4`` and ``x4``/``X4`` (any number); HR files also ``HR``;
    LR files also ``LR`` (``LR4``, ``LRx4``), ``LRBI_x4`` (``LRBD``, ``LRDN``), ``bicubic``, and then one
    ``x4`` glued to the end (``babyx4``). Words are separated by ``_ - .`` or a space; case is ignored.
    """
    pattern, removed = _MARKERS[side], []
    while found := [match[0] for match in pattern.finditer(stem)]:
        removed += reversed(found)
        stem = pattern.sub("", stem)
    if side == "LR" and (glued := _LR_ATTACHED_SCALE.search(stem)):
        removed.append(glued[0])
        stem = stem[: glued.start()]
    return stem, tuple(removed)


def _glob_parts(glob: str, option: str) -> tuple[str, str]:
    if glob.count("*") != 1 or any(char in glob for char in "?[]/"):
        raise SplitError(f"{option} {glob!r}: needs exactly one * (it stands for the stem the HR and LR names share) "
                         f"and no other wildcard or /. Fix: e.g. {option} '*{'_HR' if option == '--hr-glob' else '_LR'}.png'")
    prefix, suffix = glob.split("*")
    return prefix, suffix


def _named_files(split_name: str, folder: Path, side: str, glob: str | None) -> dict[str, _Named]:
    """common stem → the one file of ``folder`` (side ``HR`` or ``LR``) that has it."""
    option = f"--{side.lower()}-glob"
    if not folder.is_dir():
        raise SplitError(f"{folder}: folder not found. Fix: check the {side}_DIR of --pair {split_name}")
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    named = []
    if glob is not None:
        prefix, suffix = _glob_parts(glob, option)
        rule = f"the * of {option} {glob!r}"
        named = [_Named(path, path.name[len(prefix): len(path.name) - len(suffix)], rule) for path in files
                 if path.name.startswith(prefix) and path.name.endswith(suffix)
                 and len(path.name) > len(prefix) + len(suffix)]
    else:
        for path in files:
            if path.suffix.lower() == ".png":
                stem, removed = common_stem(path.stem, side)
                named.append(_Named(path, stem, f"after removing {', '.join(removed)}" if removed
                                    else "no marker to remove"))
    if not named:
        what = f"file matches {option} {glob!r}" if glob is not None else ".png image"
        raise SplitError(f"{folder}: no {what} found. Fix: check the {side}_DIR of --pair {split_name}"
                         + (f" and {option}" if glob is not None else ""))
    by_stem: dict[str, list[_Named]] = {}
    for entry in named:
        by_stem.setdefault(entry.stem, []).append(entry)
    clashes = [f"{', '.join(e.path.name for e in group)} all have stem {stem!r} ({group[0].rule})"
               for stem, group in sorted(by_stem.items()) if len(group) > 1]
    if clashes:
        example = "'*x4.png'" if side == "LR" else "'*_HR.png'"
        raise SplitError(f"split {split_name!r}: {len(clashes)} stem(s) in {folder} name more than one {side} file:\n  "
                         f"{_bounded(clashes)}\nFix: keep one {side} file per image there (one scale per LR folder), "
                         f"or select the files with {option}, e.g. {option} {example}")
    return {stem: group[0] for stem, group in by_stem.items()}


def _unpaired_lines(files: dict[str, _Named], others: dict[str, _Named], other_side: str) -> list[str]:
    lonely_others = [stem for stem in others if stem not in files]
    lines = []
    for stem, entry in sorted(files.items()):
        if stem not in others:
            nearest = difflib.get_close_matches(stem, lonely_others, n=1)
            hint = f"; nearest unpaired {other_side} stem: {nearest[0]!r}" if nearest else ""
            lines.append(f"{entry.path.name}: stem {stem!r} ({entry.rule}) has no {other_side} file with that stem{hint}")
    return lines


def _infer_scale(name: str, pairs: list[ImagePair]) -> int:
    """The scale most pairs' image sizes agree on (LR = HR mod-cropped, divided); header reads only."""
    votes: Counter[int] = Counter()
    for pair in pairs:
        hr_wh, lr_wh = _size_px(pair.hr_path), _size_px(pair.lr_path)
        if hr_wh and lr_wh:
            votes.update(s for s in range(1, MAX_SCALE + 1) if (hr_wh[0] // s, hr_wh[1] // s) == lr_wh)
    if not votes:
        first = pairs[0]
        sizes = " and ".join(f"{path.name} is {'x'.join(map(str, size)) if size else 'unreadable'}"
                             for path, size in ((first.hr_path, _size_px(first.hr_path)),
                                                (first.lr_path, _size_px(first.lr_path))))
        raise SplitError(f"split {name!r}: no LR image is its HR image divided by a whole scale ({sizes}, WxH). "
                         f"Fix: pass LR images made by downscaling the HR images by 2, 3 or 4")
    return min(votes, key=lambda scale: (-votes[scale], scale))


def _size_px(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def folder_split(name: str, hr_dir: Path, lr_dir: Path, scale: int | None = None, *,
                 hr_glob: str | None = None, lr_glob: str | None = None) -> Split:
    """Pair the images of two plain folders by the stem their names share (``--pair``).

    The stem is a file's name without the usual markers (:func:`common_stem`): ``img_001_SRF_4_HR.png`` ↔
    ``img_001_SRF_4_LR.png``, ``baby.png`` ↔ ``babyx4.png``, ``0801.png`` ↔ ``0801x4.png``; or, with
    ``hr_glob``/``lr_glob`` (one ``*``, matched against file names), the part the ``*`` covers. Two files of a
    side with one stem, or a file without its partner, raise a :class:`SplitError` that names the files and
    the rule. ``ImagePair.name`` is the HR file's stem. ``scale`` None: read from the image sizes.
    """
    hr_dir, lr_dir = Path(hr_dir), Path(lr_dir)
    if hr_dir.resolve() == lr_dir.resolve() and (hr_glob is None or lr_glob is None):
        raise SplitError(f"split {name!r}: HR_DIR and LR_DIR are the same folder ({hr_dir}). Fix: tell its files "
                         "apart with --hr-glob and --lr-glob, e.g. --hr-glob '*_HR.png' --lr-glob '*_LR.png'")
    hr_files = _named_files(name, hr_dir, "HR", hr_glob)
    lr_files = _named_files(name, lr_dir, "LR", lr_glob)
    unpaired = _unpaired_lines(hr_files, lr_files, "LR") + _unpaired_lines(lr_files, hr_files, "HR")
    if unpaired:
        raise SplitError(
            f"split {name!r}: {len(unpaired)} file(s) without a partner ({len(hr_files)} HR stems in {hr_dir}, "
            f"{len(lr_files)} LR stems in {lr_dir}):\n  {_bounded(unpaired)}\nFix: make each HR and LR name differ "
            "only by the markers (_HR/_LR, x4, _SRF_4, LRBI_x4, _bicubic), or say where the shared stem is with "
            "--hr-glob and --lr-glob, e.g. --hr-glob '*_HR.png' --lr-glob '*_LR.png'")
    pairs = sorted((ImagePair(hr_files[stem].path.stem, hr_files[stem].path, lr_files[stem].path) for stem in hr_files),
                   key=lambda pair: pair.name)
    return Split(name=name, scale=scale or _infer_scale(name, pairs), pairs=tuple(pairs))


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


def _write_embedded_files(split_root: Path, scale: int = EMBEDDED_SCALE) -> None:
    hr_dir = split_root / f"{EMBEDDED_SPLIT_NAME}_HR"
    lr_dir = split_root / f"{EMBEDDED_SPLIT_NAME}_LR"
    if scale != EMBEDDED_SCALE:
        lr_dir = lr_dir / f"X{scale}"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    for source in embedded_source_paths():
        hr = _center_crop(read_image_rgb(source), EMBEDDED_HR_SIZE_PX)
        lr = matlab_imresize(mod_crop(hr, scale), 1 / scale)
        Image.fromarray(hr).save(hr_dir / f"{source.stem}.png")
        Image.fromarray(lr).save(lr_dir / f"{source.stem}x{scale}.png")


def default_cache_dir() -> Path:
    """``$ESR_EVAL_CACHE`` if set, else ``~/.cache/esr-eval``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured) if configured else Path.home() / ".cache" / "esr-eval"


def embedded_split(cache_dir: Path | None = None, scale: int = EMBEDDED_SCALE) -> Split:
    """Built-in split: 256x256 centre crops of five scikit-image photos, LR by MATLAB bicubic at 1/``scale``
    of the crop mod-cropped to ``scale``.

    Stored as an official-layout split in ``<cache_dir>/embedded-v1`` (x4, named ``embedded``) or
    ``<cache_dir>/embedded-v1-x{scale}`` (named ``embedded_x{scale}``, LR in ``embedded_LR/X{scale}/``).
    The folder is built under a temporary name beside it and renamed into place, so concurrent callers
    never see a partial folder; whoever renames second discards its copy and uses the winner's.
    """
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    subdir = EMBEDDED_CACHE_SUBDIR if scale == EMBEDDED_SCALE else f"{EMBEDDED_CACHE_SUBDIR}-x{scale}"
    split_root = cache_root / subdir
    if not split_root.is_dir():
        cache_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_root, prefix=f".{subdir}-") as tmp:
            staging = Path(tmp) / subdir
            _write_embedded_files(staging, scale)
            try:
                os.rename(staging, split_root)
            except OSError:
                if not split_root.is_dir():
                    raise
    try:
        return official_split(split_root, EMBEDDED_SPLIT_NAME, scale)
    except SplitError as error:
        raise SplitError(f"{error}; delete {split_root} to rebuild the embedded split") from error


def resolve_splits(data_root: Path | None, names: list[str] | None, pairs: list[tuple[str, str, str]] | None,
                   scales: Collection[int] = (EMBEDDED_SCALE,), hr_glob: str | None = None,
                   lr_glob: str | None = None) -> list[Split]:
    """The splits to evaluate at ``scales`` (those of the selected submissions; none: x4), all decoded once
    here so bad files fail before any model runs.

    No data root and no pairs → the embedded split at each scale. Otherwise the official splits under
    ``data_root`` (the named ones, else all found) at each of ``scales`` they have, and the ``--pair`` splits
    (:func:`folder_split`, scale read from the image sizes) at one of ``scales``. A scale the data lacks gives
    no split; :func:`scale_gap` words it for the submissions of that scale. Split names must be distinct.
    """
    wanted = set(scales) or {EMBEDDED_SCALE}
    if (hr_glob is not None or lr_glob is not None) and not pairs:
        raise SplitError("--hr-glob/--lr-glob select the files of --pair folders, and no --pair was given. Fix: add "
                         "--pair NAME HR_DIR LR_DIR, or drop --hr-glob/--lr-glob")
    splits: list[Split] = []
    if data_root is None and not pairs:
        splits = [embedded_split(scale=scale) for scale in sorted(wanted)]
    elif data_root is not None:
        root = Path(data_root)
        splits = ([split for name in names for split in _official_splits(root, name, wanted)] if names
                  else list(discover_splits(root, wanted)))
    for name, hr_dir, lr_dir in pairs or []:
        split = folder_split(name, Path(hr_dir), Path(lr_dir), hr_glob=hr_glob, lr_glob=lr_glob)
        splits += [split] if split.scale in wanted else []
    repeated = sorted(name for name, count in Counter(split.name for split in splits).items() if count > 1)
    if repeated:
        raise SplitError(f"more than one split is named {', '.join(repeated)}. Fix: give each --pair its own NAME, "
                         "and each --split once")
    for split in splits:
        validate_split(split)
    return splits


def scale_gap(scale: int, splits: list[Split], data_root: Path | None = None,
              pairs: list | None = None) -> tuple[str, str] | None:
    """(problem, fix) when none of ``splits`` is at ``scale`` (a submission of that scale cannot be
    evaluated on this data), else None; the fix names the folders or options that would add one."""
    if any(split.scale == scale for split in splits):
        return None
    have: dict[int, list[str]] = {}
    for split in splits:
        have.setdefault(split.scale, []).append(split.name)
    listed = "; ".join(f"{', '.join(names)} at x{s}" for s, names in sorted(have.items())) or "none"
    fixes = []
    if data_root is not None:
        fixes.append(f"add <split>_LR/X{scale}/NAMEx{scale}.png under {data_root} (each HR image mod-cropped to "
                     f"{scale} and downscaled 1/{scale}, MATLAB bicubic)")
    if pairs:
        fixes.append(f"add --pair NAME HR_DIR LR_DIR whose LR images are x{scale}")
    if have:
        fixes.append(f"declare scale {' or '.join(map(str, sorted(have)))} if the network upscales by that")
    return (f"the data has no x{scale} split (splits: {listed})",
            ", or ".join(fixes) or f"evaluate it on data with x{scale} LR images")


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
