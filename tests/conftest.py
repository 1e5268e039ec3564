"""Shared fixtures: the repo root, ../shared paths, and a factory of fixture submissions."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ESR_EVAL_SHARED", REPO_ROOT.parent / "shared"))
SHARED_DATA = Path(os.environ.get("ESR_EVAL_SHARED_DATA", SHARED / "data"))

TINY_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class {cls}(nn.Module):
        """Two convs and a pixel shuffle: a tiny x{scale} SR network."""

        def __init__(self, channels=8, upscale={scale}{extra_args}):
            super().__init__()
            self.head = nn.Conv2d(3, channels, 3, padding=1)
            self.tail = nn.Conv2d(channels, 3 * upscale * upscale, 3, padding=1)
            self.shuffle = nn.PixelShuffle(upscale)
            {init_extra}

        def forward(self, x):
            {forward_body}
''')


def write_model_file(path: Path, cls: str = "TinySR", scale: int = 4, extra_args: str = "",
                     init_extra: str = "pass", forward_body: str = "return self.shuffle(self.tail(torch.relu(self.head(x))))",
                     prelude: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prelude + TINY_MODEL.format(cls=cls, scale=scale, extra_args=extra_args,
                                                init_extra=init_extra, forward_body=forward_body))
    return path


def tiny_state_dict(channels: int = 8, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "head.weight": torch.randn(channels, 3, 3, 3, generator=generator) * 0.1,
        "head.bias": torch.zeros(channels),
        "tail.weight": torch.randn(3 * scale * scale, channels, 3, 3, generator=generator) * 0.1,
        "tail.bias": torch.zeros(3 * scale * scale),
    }


class SubmissionFactory:
    """Writes a model file, a checkpoint and a manifest under one submissions root."""

    def __init__(self, root: Path):
        self.root = root
        self.manifests = root / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)

    def make(self, sid: str = "team10_Tiny", *, team_id: str = "10", cls: str = "TinySR",
             checkpoint_obj=None, checkpoint_name: str | None = None, key: str | None = None,
             model_source: dict | None = None, manifest_extra: dict | None = None,
             checkpoint_extra: dict | None = None, with_checkpoint: bool = True) -> Path:
        model_file = self.root / "models" / f"{sid}.py"
        write_model_file(model_file, cls=cls, **(model_source or {}))
        manifest = {"team_id": team_id, "name": sid.split("_", 1)[-1],
                    "model": {"file": f"models/{sid}.py", "class": cls},
                    "data_range": 1.0, "scale": 4}
        if with_checkpoint:
            ckpt = self.root / "model_zoo" / (checkpoint_name or f"{sid}.pth")
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(tiny_state_dict() if checkpoint_obj is None else checkpoint_obj, ckpt)
            manifest["checkpoint"] = {"path": f"model_zoo/{ckpt.name}", **({"key": key} if key else {}),
                                      **(checkpoint_extra or {})}
        manifest.update(manifest_extra or {})
        path = self.manifests / f"{sid}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        return path


@pytest.fixture
def factory(tmp_path) -> SubmissionFactory:
    return SubmissionFactory(tmp_path / "subs")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
