"""Safe loading: key paths, devices, extensions, strictness, refused pickles, isolation."""

from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import zipfile

import pytest
import torch

from esr_eval.loading import load_submission
from esr_eval.manifest import SubmissionError, parse_manifest
from tests.conftest import tiny_state_dict


def _load(factory, path):
    return load_submission(parse_manifest(path, factory.root))


def _same_weights(model, state):
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("wrap, key", [
    (lambda sd: sd, None),
    (lambda sd: {"params": sd}, "params"),
    (lambda sd: {"params_ema": sd}, "params_ema"),
    (lambda sd: {"params": tiny_state_dict(seed=9), "params_ema": sd}, "params_ema|params"),
    (lambda sd: {"params": sd}, "params_ema|params"),
    (lambda sd: {"state": {"model": sd}, "epoch": 3}, "state.model"),
])
def test_key_paths(factory, wrap, key):
    state = tiny_state_dict(seed=1)
    loaded = _load(factory, factory.make(checkpoint_obj=wrap(state), key=key))
    assert _same_weights(loaded.model, state)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl"])
def test_extensions(factory, suffix):
    loaded = _load(factory, factory.make(checkpoint_name=f"tiny{suffix}"))
    assert loaded.info.checkpoint_sha256 == hashlib.sha256(
        (factory.root / "model_zoo" / f"tiny{suffix}").read_bytes()).hexdigest()


def _retag_storages_as_cuda(path: pathlib.Path) -> None:
    """Rewrite a CPU checkpoint so its storages claim to live on cuda:0, as a GPU-saved file does."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data  # protocol-2 BINUNICODE
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            archive.writestr(info, data)
    path.write_bytes(buffer.getvalue())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks loading CUDA-saved tensors without CUDA")
def test_checkpoint_saved_on_cuda_loads_on_cpu(factory):
    state = tiny_state_dict(seed=2)
    path = factory.make(checkpoint_obj=state)
    ckpt = factory.root / "model_zoo" / "team10_Tiny.pth"
    _retag_storages_as_cuda(ckpt)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(ckpt, weights_only=True)  # what a loader without map_location does
    assert _same_weights(_load(factory, path).model, state)


def test_wrong_shape_names_the_key(factory):
    state = tiny_state_dict()
    state["tail.weight"] = torch.zeros(48, 4, 3, 3)
    expected = r"shape mismatch at tail\.weight: checkpoint \(48, 4, 3, 3\) vs model \(48, 8, 3, 3\)"
    with pytest.raises(SubmissionError, match=expected) as info:
        _load(factory, factory.make(checkpoint_obj=state))
    assert info.value.stage == "checkpoint"


def test_strict_reports_missing_and_unexpected_keys(factory):
    state = tiny_state_dict()
    state["extra.weight"] = state.pop("head.bias")
    with pytest.raises(SubmissionError, match=r"missing keys: head\.bias.*unexpected keys: extra\.weight"):
        _load(factory, factory.make(checkpoint_obj=state))


def test_non_strict_is_recorded(factory):
    state = tiny_state_dict()
    state["extra.weight"] = state.pop("head.bias")
    loaded = _load(factory, factory.make(checkpoint_obj=state, checkpoint_extra={"strict": False}))
    assert loaded.info.missing_keys == ("head.bias",) and loaded.info.unexpected_keys == ("extra.weight",)
    assert loaded.submission.strict is False


def test_key_not_found_lists_top_level(factory):
    with pytest.raises(SubmissionError, match=r"no state dict at key params.*\['model'\]"):
        _load(factory, factory.make(checkpoint_obj={"model": tiny_state_dict()}, key="params"))


class _RunsCode:
    """Unpickling this object touches a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_that_runs_code_is_refused_and_code_did_not_run(factory, tmp_path):
    marker = tmp_path / "pwned"
    path = factory.make(checkpoint_obj={"params": tiny_state_dict(), "payload": _RunsCode(marker)}, key="params")
    with pytest.raises(SubmissionError, match=r"needs full unpickling.*refused \(.*Unsupported global: GLOBAL getattr") as info:
        _load(factory, path)
    assert "trusted_pickle: true" in info.value.fix
    assert not marker.exists()


def test_trusted_pickle_opt_in_is_recorded(factory):
    obj = {"params": tiny_state_dict(seed=3), "args": argparse.Namespace(lr=1e-3)}
    with pytest.raises(SubmissionError, match="refused"):
        _load(factory, factory.make(checkpoint_obj=obj, key="params"))
    loaded = _load(factory, factory.make("team11_Trusted", team_id="11", checkpoint_obj=obj, key="params",
                                         checkpoint_extra={"trusted_pickle": True}))
    assert loaded.info.trusted_pickle_used is True
    assert _same_weights(loaded.model, obj["params"])


def test_plain_checkpoint_does_not_claim_trusted_pickle(factory):
    loaded = _load(factory, factory.make(checkpoint_extra={"trusted_pickle": True}))
    assert loaded.info.trusted_pickle_used is False


def test_truncated_checkpoint(factory):
    path = factory.make()
    ckpt = factory.root / "model_zoo" / "team10_Tiny.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    with pytest.raises(SubmissionError, match="truncated or corrupt"):
        _load(factory, path)


def test_sha256_verified(factory):
    good = hashlib.sha256()
    path = factory.make(checkpoint_extra={"sha256": "0" * 64})
    with pytest.raises(SubmissionError, match="checkpoint.sha256: file hash"):
        _load(factory, path)
    ckpt = factory.root / "model_zoo" / "team10_Tiny.pth"
    good.update(ckpt.read_bytes())
    path = factory.make("team11_Tiny", team_id="11", checkpoint_name="team10_Tiny.pth",
                        checkpoint_extra={"sha256": good.hexdigest()})
    ckpt.write_bytes((factory.root / "model_zoo" / "team10_Tiny.pth").read_bytes())
    assert _load(factory, path).info.checkpoint_sha256 is not None


def test_constructor_calling_cuda_loads_on_cpu(factory):
    path = factory.make(model_source={"init_extra": "self.cuda(); self.anchor = torch.zeros(1).cuda()"})
    loaded = _load(factory, path)
    assert loaded.info.cuda_calls_redirected == 2
    assert next(loaded.model.parameters()).device.type == "cpu"


def test_same_class_name_in_two_files_does_not_collide(factory):
    a = factory.make("team11_A", team_id="11", cls="Net", checkpoint_obj=tiny_state_dict(channels=8),
                     model_source={})
    b = factory.make("team12_B", team_id="12", cls="Net", checkpoint_obj=tiny_state_dict(scale=2),
                     model_source={"scale": 2})
    first, second = _load(factory, a), _load(factory, b)
    x = torch.rand(1, 3, 8, 8)
    assert first.model(x).shape == (1, 3, 32, 32)
    assert second.model(x).shape == (1, 3, 16, 16)
    assert type(first.model).__module__ != type(second.model).__module__


def test_import_error_names_missing_package(factory):
    path = factory.make(model_source={"prelude": "import not_a_real_package_xyz\n"})
    with pytest.raises(SubmissionError, match="not_a_real_package_xyz") as info:
        _load(factory, path)
    assert info.value.stage == "import" and "requirements" in info.value.fix


def test_missing_class_gets_did_you_mean(factory):
    path = factory.make()
    text = path.read_text().replace("class: TinySR", "class: TinySr")
    path.write_text(text)
    with pytest.raises(SubmissionError, match="did you mean 'TinySR'"):
        _load(factory, path)


def test_model_file_raising_systemexit_is_a_submission_error(factory):
    path = factory.make(model_source={"prelude": "raise SystemExit('team code exits')\n"})
    with pytest.raises(SubmissionError, match="SystemExit"):
        _load(factory, path)
