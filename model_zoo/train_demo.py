"""Train the demo weights of the baseline zoo on the five scikit-image photos, and score them.

Contract
- Training data: the full-size photos the embedded split is cut from
  (`esr_eval.data.embedded_source_paths()`), each mod-cropped to a multiple of 4 and downscaled
  once with `esr_eval.data.matlab_imresize(hr, 1/4)`; aligned LR/HR patches (LR `lr_patch_px`
  square, HR 4x that) are drawn with a seeded torch.Generator, images picked in proportion to
  their LR area, each patch flipped/transposed at random (the 8 dihedral transforms).
- Optimisation: L1 loss, Adam, cosine learning-rate decay from `learning_rate` to
  `learning_rate * FINAL_LR_FRACTION`; steps and base rate default to the model's RECIPES entry.
  Progress along the cosine is max(step / steps,
  elapsed / time limit), so a run slowed by a busy machine still ends its schedule within
  `--minutes`; without contention the run is exactly `--steps` steps and reproducible.
  `torch.set_num_threads(2)`. Every model trains in its deployed (shipped) form; EFDN and SPAN
  skip their re-parameterisable training forms, which cost 2.6x and 4.3x more per step on the
  CPU (their fusion code lives in their model files and is tested in tests/test_models.py).
- Input-scale compensation: SPAN multiplies its input by 255 before `conv_1`. Trained as is,
  Adam moves that conv 255x too fast and the result generalises badly; so its weight starts
  divided by 255 and trains at 1/255 of the learning rate: the same trajectory (up to Adam's
  epsilon) as a network fed [0, 1] input, while the model keeps the published input scaling.
- Output: `<out>/<submission_id>.pth`, a plain state dict of the deployed model, float32 unless
  that file would reach CHECKPOINT_LIMIT_BYTES, then float16 (load_state_dict copies it into the
  float32 model). When the manifest's `checkpoint.path` is that file, its `sha256:` line is
  rewritten. A record is appended to `<out>/TRAINING.md`.
- `--eval-set5` prints, for every zoo manifest, Set5 x4 RGB PSNR (dB, border 4, official
  uint8 rounding, via `esr_eval.quality`) of the shipped checkpoint, of bicubic
  (torch `interpolate(..., mode="bicubic", align_corners=False)`), and the gain in dB.

Run from the repository root: `.venv/bin/python model_zoo/train_demo.py --all`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from esr_eval.data import (  # noqa: E402  (the repo root must be importable first)
    embedded_source_paths,
    folder_split,
    load_pair,
    matlab_imresize,
    mod_crop,
    read_image_rgb,
)
from esr_eval.loading import import_model_module, load_submission  # noqa: E402
from esr_eval.manifest import Submission, parse_manifest  # noqa: E402
from esr_eval.quality import psnr_db, to_uint8  # noqa: E402

ZOO_IDS = ("team00_RLFN", "team01_IMDN", "team02_RFDN", "team03_EFDN", "team04_SPAN")
SCALE = 4
TORCH_THREADS = 2
CHECKPOINT_LIMIT_BYTES = 2_000_000
FINAL_LR_FRACTION = 0.01
DEFAULT_MANIFESTS = REPO_ROOT / "model_zoo"
DEFAULT_SET5 = REPO_ROOT.parent / "shared" / "data" / "Set5"
SET5_BORDER_PX = SCALE


@dataclass(frozen=True)
class InputScaleCompensation:
    """The model multiplies its input by `gain` before the conv whose weight is `weight_name`."""

    weight_name: str
    gain: float


INPUT_SCALE_COMPENSATION = {
    "team04_SPAN": InputScaleCompensation(weight_name="conv_1.eval_conv.weight", gain=255.0),
}

@dataclass(frozen=True)
class Recipe:
    """Per-model defaults: optimiser steps (~10 minutes on 2 idle AMD EPYC cores at batch 16,
    LR patch 32 px) and Adam's base learning rate."""

    steps: int
    learning_rate: float


# SPAN diverged at 4e-3 (loss spike after ~1800 steps), so it trains at 2e-3.
RECIPES = {
    "team00_RLFN": Recipe(steps=5000, learning_rate=4e-3),
    "team01_IMDN": Recipe(steps=2300, learning_rate=4e-3),
    "team02_RFDN": Recipe(steps=2600, learning_rate=4e-3),
    "team03_EFDN": Recipe(steps=4500, learning_rate=4e-3),
    "team04_SPAN": Recipe(steps=8000, learning_rate=2e-3),
}


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    time_limit_s: float
    seed: int
    batch_size: int
    lr_patch_px: int
    learning_rate: float


@dataclass(frozen=True)
class TrainingRun:
    submission_id: str
    steps_done: int
    wall_s: float
    final_loss: float
    checkpoint_path: Path
    checkpoint_bytes: int
    checkpoint_sha256: str
    stored_dtype: str


@dataclass(frozen=True)
class Set5Score:
    submission_id: str
    psnr_db: float
    bicubic_psnr_db: float

    @property
    def gain_db(self) -> float:
        return self.psnr_db - self.bicubic_psnr_db


@dataclass(frozen=True)
class TrainingPair:
    """One training photo: LR and mod-cropped HR as float32 3xHxW tensors in [0, 1]."""

    lr: torch.Tensor
    hr: torch.Tensor


def load_training_pairs() -> tuple[TrainingPair, ...]:
    """The embedded split's source photos at full size, each with its MATLAB-bicubic x4 LR."""
    pairs = []
    for path in embedded_source_paths():
        hr = mod_crop(read_image_rgb(path), SCALE)
        lr = matlab_imresize(hr, 1 / SCALE)
        pairs.append(TrainingPair(lr=_to_chw_float(lr), hr=_to_chw_float(hr)))
    return tuple(pairs)


def _to_chw_float(image_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image_u8.transpose(2, 0, 1))).float() / 255.0


def random_batch(
    pairs: tuple[TrainingPair, ...], generator: torch.Generator, batch_size: int, lr_patch_px: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random patches: LR Bx3xPxP and HR Bx3x(4P)x(4P), randomly flipped/transposed."""
    areas = torch.tensor([float(p.lr.shape[1] * p.lr.shape[2]) for p in pairs])
    picks = torch.multinomial(areas, batch_size, replacement=True, generator=generator)
    hr_patch_px = lr_patch_px * SCALE
    lr_patches, hr_patches = [], []
    for index in picks.tolist():
        pair = pairs[index]
        top = int(torch.randint(pair.lr.shape[1] - lr_patch_px + 1, (1,), generator=generator))
        left = int(torch.randint(pair.lr.shape[2] - lr_patch_px + 1, (1,), generator=generator))
        lr = pair.lr[:, top : top + lr_patch_px, left : left + lr_patch_px]
        hr_top, hr_left = top * SCALE, left * SCALE
        hr = pair.hr[:, hr_top : hr_top + hr_patch_px, hr_left : hr_left + hr_patch_px]
        flip_h, flip_v, transpose = torch.randint(2, (3,), generator=generator).tolist()
        if flip_h:
            lr, hr = lr.flip(2), hr.flip(2)
        if flip_v:
            lr, hr = lr.flip(1), hr.flip(1)
        if transpose:
            lr, hr = lr.transpose(1, 2), hr.transpose(1, 2)
        lr_patches.append(lr)
        hr_patches.append(hr)
    return torch.stack(lr_patches), torch.stack(hr_patches)


def zoo_submission(submission_id: str, manifests_dir: Path) -> Submission:
    """Parse a zoo manifest (the checkpoint may not exist yet)."""
    path = Path(manifests_dir) / f"{submission_id}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: zoo manifest not found; pass --manifests DIR holding it")
    return parse_manifest(path, REPO_ROOT, check_files=False)


def build_model(sub: Submission) -> nn.Module:
    """The manifest's architecture with its constructor arguments."""
    cls = getattr(import_model_module(sub), sub.model.class_name)
    return cls(*sub.model.args, **dict(sub.model.kwargs))


def parameter_groups(sub: Submission, model: nn.Module) -> list[dict]:
    """Adam groups, each with an `lr_factor`; applies INPUT_SCALE_COMPENSATION to the weights."""
    compensation = INPUT_SCALE_COMPENSATION.get(sub.submission_id)
    if compensation is None:
        return [{"params": list(model.parameters()), "lr_factor": 1.0}]
    named = dict(model.named_parameters())
    if compensation.weight_name not in named:
        raise KeyError(
            f"{sub.submission_id}: INPUT_SCALE_COMPENSATION names {compensation.weight_name!r}, "
            f"which the model does not have; correct it in model_zoo/train_demo.py"
        )
    scaled = named.pop(compensation.weight_name)
    with torch.no_grad():
        scaled.div_(compensation.gain)
    return [
        {"params": list(named.values()), "lr_factor": 1.0},
        {"params": [scaled], "lr_factor": 1.0 / compensation.gain},
    ]


def learning_rate_at(progress: float, settings: TrainSettings) -> float:
    """Cosine decay from the base rate to FINAL_LR_FRACTION of it over progress 0..1."""
    floor = settings.learning_rate * FINAL_LR_FRACTION
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return floor + (settings.learning_rate - floor) * cosine


def serialise_state_dict(model: nn.Module) -> tuple[bytes, str]:
    """torch.save bytes of the state dict: float32, or float16 when float32 reaches the limit."""
    state = {key: value.detach().cpu().float() for key, value in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if buffer.tell() < CHECKPOINT_LIMIT_BYTES:
        return buffer.getvalue(), "float32"
    buffer = io.BytesIO()
    torch.save({key: value.half() for key, value in state.items()}, buffer)
    if buffer.tell() >= CHECKPOINT_LIMIT_BYTES:
        raise ValueError(
            f"state dict is {buffer.tell()} bytes even in float16, over CHECKPOINT_LIMIT_BYTES="
            f"{CHECKPOINT_LIMIT_BYTES}; raise the limit in model_zoo/train_demo.py"
        )
    return buffer.getvalue(), "float16"


def update_manifest_sha256(sub: Submission, checkpoint_path: Path, sha256: str) -> bool:
    """Rewrite the manifest's `sha256:` line if its checkpoint is `checkpoint_path`."""
    if sub.checkpoint_path != checkpoint_path.resolve():
        return False
    text = sub.manifest_path.read_text()
    updated, count = re.subn(r'(?m)^([ \t]+sha256:[ \t]*)"?[0-9a-fA-F]*"?[ \t]*$', rf'\g<1>"{sha256}"', text)
    if count != 1:
        raise ValueError(
            f"{sub.manifest_path}: expected exactly one `sha256:` line under `checkpoint:`, "
            f"found {count}; add `sha256: \"\"` there and run again"
        )
    sub.manifest_path.write_text(updated)
    return True


def train(sub: Submission, settings: TrainSettings, out_dir: Path, log_every: int = 100) -> TrainingRun:
    """Train one zoo model, save its deployed state dict to `<out_dir>/<id>.pth`."""
    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    pairs = load_training_pairs()
    model = build_model(sub).train()
    optimizer = torch.optim.Adam(parameter_groups(sub, model), lr=settings.learning_rate)
    start = time.monotonic()
    step, loss_value = 0, math.nan
    while step < settings.steps:
        elapsed_s = time.monotonic() - start
        progress = max(step / settings.steps, elapsed_s / settings.time_limit_s)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(progress, settings) * group["lr_factor"]
        lr, hr = random_batch(pairs, generator, settings.batch_size, settings.lr_patch_px)
        loss = F.l1_loss(model(lr), hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        step += 1
        if step % log_every == 0:
            print(f"{sub.submission_id} step {step}/{settings.steps} L1 {loss_value:.4f} "
                  f"{time.monotonic() - start:.0f} s", flush=True)
    wall_s = time.monotonic() - start
    payload, dtype = serialise_state_dict(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / f"{sub.submission_id}.pth"
    checkpoint_path.write_bytes(payload)
    return TrainingRun(
        submission_id=sub.submission_id,
        steps_done=step,
        wall_s=wall_s,
        final_loss=loss_value,
        checkpoint_path=checkpoint_path,
        checkpoint_bytes=len(payload),
        checkpoint_sha256=hashlib.sha256(payload).hexdigest(),
        stored_dtype=dtype,
    )


def bicubic_upscale(lr: torch.Tensor) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)


@torch.no_grad()
def set5_score(submission_id: str, model: nn.Module, set5_dir: Path) -> Set5Score:
    """Mean Set5 x4 RGB PSNR (dB, border 4) of `model` and of bicubic, float32 on the CPU."""
    split = folder_split("Set5", set5_dir / "HR", set5_dir / "LR_x4", SCALE)
    model_db, bicubic_db = [], []
    for pair in split.pairs:
        lr_u8, hr_u8 = load_pair(pair, SCALE)
        lr = _to_chw_float(lr_u8)[None]
        model_db.append(psnr_db(to_uint8(model(lr), 1.0), hr_u8, SET5_BORDER_PX))
        bicubic_db.append(psnr_db(to_uint8(bicubic_upscale(lr), 1.0), hr_u8, SET5_BORDER_PX))
    return Set5Score(submission_id, float(np.mean(model_db)), float(np.mean(bicubic_db)))


def cpu_model_name() -> str:
    """The `model name` line of /proc/cpuinfo, else platform.processor()."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def training_record(run: TrainingRun, settings: TrainSettings, command: str, score: Set5Score | None) -> str:
    """The Markdown section appended to TRAINING.md for one run."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stopped = "" if run.steps_done == settings.steps else " (stopped by the time limit)"
    try:
        shown_path = run.checkpoint_path.resolve().relative_to(REPO_ROOT)
    except ValueError:
        shown_path = run.checkpoint_path
    lines = [
        f"### {run.submission_id} ({when})",
        "",
        f"- command: `{command}`",
        f"- seed {settings.seed}; {run.steps_done} of {settings.steps} steps{stopped}; batch "
        f"{settings.batch_size}; LR patch {settings.lr_patch_px} px; Adam, lr "
        f"{settings.learning_rate:g} cosine to {settings.learning_rate * FINAL_LR_FRACTION:g}; "
        f"final L1 {run.final_loss:.4f}",
        f"- wall time {run.wall_s:.0f} s (limit {settings.time_limit_s:.0f} s); "
        f"machine: {cpu_model_name()}, {TORCH_THREADS} torch threads; torch {torch.__version__}",
        f"- checkpoint `{shown_path}`: {run.stored_dtype}, {run.checkpoint_bytes} bytes, "
        f"sha256 `{run.checkpoint_sha256}`",
    ]
    if score is not None:
        lines.append(
            f"- Set5 x4 RGB PSNR (border 4): {score.psnr_db:.2f} dB; bicubic "
            f"{score.bicubic_psnr_db:.2f} dB; gain {score.gain_db:+.2f} dB"
        )
    return "\n".join(lines) + "\n\n"


def format_set5_table(scores: list[Set5Score]) -> str:
    rows = ["| model | Set5 PSNR (dB) | bicubic (dB) | gain (dB) |", "|---|---|---|---|"]
    rows += [
        f"| {s.submission_id} | {s.psnr_db:.2f} | {s.bicubic_psnr_db:.2f} | {s.gain_db:+.2f} |"
        for s in scores
    ]
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=ZOO_IDS, help="train one zoo model")
    which.add_argument("--all", action="store_true", help="train every zoo model in turn")
    which.add_argument("--eval-set5", action="store_true",
                       help="print Set5 PSNR of the shipped checkpoints vs bicubic")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: per model, RECIPES)")
    parser.add_argument("--minutes", type=float, default=12.0, help="wall-time limit per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr-patch", type=int, default=32, help="LR patch side in pixels")
    parser.add_argument("--learning-rate", type=float,
                        help="Adam base learning rate (default: per model, RECIPES)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MANIFESTS,
                        help="folder for <id>.pth and TRAINING.md (default: model_zoo)")
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS)
    parser.add_argument("--set5", type=Path, default=DEFAULT_SET5,
                        help="Set5 folder with HR/ and LR_x4/ (skipped when absent)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(TORCH_THREADS)
    set5_available = (args.set5 / "HR").is_dir()
    if args.eval_set5:
        if not set5_available:
            print(f"{args.set5}/HR not found; pass --set5 DIR", file=sys.stderr)
            return 2
        scores = []
        for submission_id in ZOO_IDS:
            loaded = load_submission(zoo_submission(submission_id, args.manifests))
            scores.append(set5_score(submission_id, loaded.model, args.set5))
        print(format_set5_table(scores))
        return 0
    command = shlex.join([Path(sys.executable).name, "model_zoo/train_demo.py", *sys.argv[1:]])
    for submission_id in ZOO_IDS if args.all else (args.model,):
        sub = zoo_submission(submission_id, args.manifests)
        recipe = RECIPES[submission_id]
        settings = TrainSettings(
            steps=args.steps or recipe.steps,
            time_limit_s=args.minutes * 60.0,
            seed=args.seed,
            batch_size=args.batch_size,
            lr_patch_px=args.lr_patch,
            learning_rate=args.learning_rate or recipe.learning_rate,
        )
        run = train(sub, settings, args.out)
        if update_manifest_sha256(sub, run.checkpoint_path, run.checkpoint_sha256):
            print(f"updated checkpoint.sha256 in {sub.manifest_path}")
        score = None
        if set5_available:
            trained = build_model(sub).eval()
            trained.load_state_dict(torch.load(run.checkpoint_path, weights_only=True), strict=True)
            score = set5_score(submission_id, trained, args.set5)
            print(format_set5_table([score]))
        with open(args.out / "TRAINING.md", "a") as record:
            record.write(training_record(run, settings, command, score))
        print(f"{submission_id}: {run.steps_done} steps in {run.wall_s:.0f} s -> {run.checkpoint_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
