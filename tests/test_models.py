"""Baseline zoo: fusion exactness, shipped checkpoints, and the demo training script.

Complexity against the published figures is tested over every manifest in test_complexity.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT

ZOO = {
    "team00_RLFN": "RLFN_Prune",
    "team01_IMDN": "IMDN",
    "team02_RFDN": "RFDN",
    "team03_EFDN": "EFDN",
    "team04_SPAN": "SPAN",
}
CHECKPOINT_LIMIT_BYTES = 2_000_000


def _import_file(path: Path, name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _model_module(submission_id: str):
    return _import_file(REPO_ROOT / "models" / f"{submission_id}.py", f"zoo_test_{submission_id}")


@pytest.fixture(scope="module")
def train_demo():
    return _import_file(REPO_ROOT / "model_zoo" / "train_demo.py", "zoo_test_train_demo")


def _manifest(submission_id: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "model_zoo" / f"{submission_id}.yaml").read_text())


def _randomise(model: torch.nn.Module, seed: int, std: float) -> None:
    """Non-trivial weights in every parameter, so that every branch shows in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _assert_fusion_exact(training, deployed, x):
    with torch.no_grad():
        expected, actual = training(x), deployed(x)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * scale)


def test_span_fusion_equals_training_form():
    span = _model_module("team04_SPAN")
    training = span.SPAN(deploy=False).eval()
    _randomise(training, seed=1, std=0.05)
    deployed = span.fuse_span(training)
    assert sum(p.numel() for p in deployed.parameters()) == 150_688
    assert sum(p.numel() for p in training.parameters()) > 4 * 150_688
    assert set(deployed.state_dict()) == set(span.SPAN().state_dict())
    _assert_fusion_exact(training, deployed, torch.rand(1, 3, 23, 17, generator=torch.Generator().manual_seed(2)))


def test_efdn_fusion_equals_training_form():
    efdn = _model_module("team03_EFDN")
    training = efdn.EFDN(deploy=False).eval()
    _randomise(training, seed=3, std=0.05)
    deployed = efdn.fuse_efdn(training)
    assert sum(p.numel() for p in deployed.parameters()) == 276_192
    assert set(deployed.state_dict()) == set(efdn.EFDN().state_dict())
    _assert_fusion_exact(training, deployed, torch.rand(1, 3, 21, 26, generator=torch.Generator().manual_seed(4)))


def test_efdn_each_edge_branch_fuses_exactly():
    """One EDBB alone, so an error in one branch is not hidden by the rest of the network."""
    efdn = _model_module("team03_EFDN")
    block = efdn.EDBB(5, 5, deploy=False).eval()
    _randomise(block, seed=5, std=0.5)
    weight, bias = block.fused_weight_and_bias()
    x = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = block(x)
        actual = block.act(torch.nn.functional.conv2d(x, weight, bias, padding=1))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("submission_id", sorted(ZOO))
def test_shipped_checkpoint_loads_strictly_and_matches_manifest(submission_id):
    manifest = _manifest(submission_id)
    checkpoint = manifest["checkpoint"]
    path = REPO_ROOT / checkpoint["path"]
    assert path.stat().st_size < CHECKPOINT_LIMIT_BYTES, f"{path} is over 2 MB"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == checkpoint["sha256"], (
        f"{path} does not match checkpoint.sha256 in model_zoo/{submission_id}.yaml; "
        f"retrain with model_zoo/train_demo.py or update the manifest"
    )
    assert checkpoint["strict"] is True and checkpoint.get("key") is None
    assert manifest["model"]["class"] == ZOO[submission_id]
    cls = getattr(_model_module(submission_id), ZOO[submission_id])
    model = cls(*manifest["model"]["args"], **manifest["model"]["kwargs"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(not torch.equal(model.state_dict()[k], torch.zeros_like(v)) for k, v in state.items()
               if k.endswith("weight"))


def test_float16_only_where_float32_would_exceed_the_limit(train_demo):
    imdn = _model_module("team01_IMDN").IMDN()
    rlfn = _model_module("team00_RLFN").RLFN_Prune()
    imdn_bytes, imdn_dtype = train_demo.serialise_state_dict(imdn)
    rlfn_bytes, rlfn_dtype = train_demo.serialise_state_dict(rlfn)
    assert (imdn_dtype, rlfn_dtype) == ("float16", "float32")
    assert len(imdn_bytes) < CHECKPOINT_LIMIT_BYTES and len(rlfn_bytes) < CHECKPOINT_LIMIT_BYTES


def test_random_batch_keeps_lr_and_hr_aligned(train_demo):
    pairs = train_demo.load_training_pairs()
    generator = torch.Generator().manual_seed(0)
    lr, hr = train_demo.random_batch(pairs, generator, batch_size=32, lr_patch_px=12)
    assert lr.shape == (32, 3, 12, 12) and hr.shape == (32, 3, 48, 48)
    downscaled = torch.nn.functional.avg_pool2d(hr, 4)
    aligned_error = (downscaled - lr).abs().mean()
    mirrored_error = (downscaled - lr.flip(3)).abs().mean()
    assert aligned_error < 0.5 * mirrored_error


def test_training_smoke_writes_a_loadable_checkpoint_and_record(train_demo, tmp_path):
    manifest_before = (REPO_ROOT / "model_zoo" / "team04_SPAN.yaml").read_bytes()
    code = train_demo.main([
        "--model", "team04_SPAN", "--steps", "3", "--lr-patch", "8", "--batch-size", "2",
        "--out", str(tmp_path), "--set5", str(tmp_path / "no_set5"),
    ])
    assert code == 0
    checkpoint = tmp_path / "team04_SPAN.pth"
    state = torch.load(checkpoint, weights_only=True)
    _model_module("team04_SPAN").SPAN().load_state_dict(state, strict=True)
    record = (tmp_path / "TRAINING.md").read_text()
    assert "3 of 3 steps" in record
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in record
    assert (REPO_ROOT / "model_zoo" / "team04_SPAN.yaml").read_bytes() == manifest_before
