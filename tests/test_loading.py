"""Safe loading: key paths, devices, extensions, strictness, refused pickles, isolation."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import pathlib
import textwrap
import zipfile

import pytest
import torch
import yaml

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


NTIRE_FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "ntire_repo"


def _fixture_submission(tmp_path, manifest: dict, sid: str = "team12_MergeNet"):
    """A manifest outside the fixture NTIRE checkout, whose files it names."""
    path = tmp_path / f"{sid}.yaml"
    path.write_text(yaml.safe_dump({"team_id": sid[4:6], "data_range": 1.0, **manifest}, sort_keys=False))
    return parse_manifest(path, NTIRE_FIXTURE)


def test_a_model_that_merges_its_layers_in_its_own_load_state_dict_loads_strictly(tmp_path):
    sub = _fixture_submission(tmp_path, {
        "model": {"file": "models/team12_MergeNet.py", "class": "MergeNet", "kwargs": {"channels": 4}},
        "checkpoint": {"path": "model_zoo/team12_mergenet.pth", "strict": True}})
    loaded = load_submission(sub)
    assert (loaded.info.missing_keys, loaded.info.unexpected_keys) == ((), ())
    assert _same_weights(loaded.model, torch.load(sub.checkpoint_path, weights_only=True))
    assert not hasattr(loaded.model, "conv3")


def test_strict_failure_inside_the_models_own_loader_names_the_keys(tmp_path):
    state = torch.load(NTIRE_FIXTURE / "model_zoo" / "team12_mergenet.pth", weights_only=True)
    state["extra"] = state.pop("merged.bias")
    (tmp_path / "root" / "models").mkdir(parents=True)
    (tmp_path / "root" / "model_zoo").mkdir()
    (tmp_path / "root" / "models" / "team12_MergeNet.py").write_text(
        (NTIRE_FIXTURE / "models" / "team12_MergeNet.py").read_text())
    torch.save(state, tmp_path / "root" / "model_zoo" / "merged.pth")
    path = tmp_path / "team12_MergeNet.yaml"
    path.write_text(yaml.safe_dump({"team_id": "12", "model": {"file": "models/team12_MergeNet.py",
                                                               "class": "MergeNet"},
                                    "checkpoint": {"path": "model_zoo/merged.pth"}}))
    with pytest.raises(SubmissionError, match=r"strict load failed; missing keys: merged\.bias; "
                                              r"unexpected keys: extra") as info:
        load_submission(parse_manifest(path, tmp_path / "root"))
    assert info.value.stage == "checkpoint"


def _with_methods(path: pathlib.Path, methods: str) -> None:
    """Append methods to the fixture's TinySR class (defined in its model file)."""
    path.write_text(path.read_text() + textwrap.dedent(methods) + "\n")


def test_after_load_calls_run_after_the_weights_in_order_and_are_recorded(factory):
    state = tiny_state_dict(seed=4)
    other = tiny_state_dict(seed=5)
    path = factory.make(checkpoint_obj=state, manifest_extra={"after_load": [
        {"method": "scale_tail", "args": [2.0]}, "count_calls",
        {"method": "load_weights", "path": "model_zoo/late.pth", "kwargs": {"key": "params"}}]})
    torch.save({"params": other}, factory.root / "model_zoo" / "late.pth")
    _with_methods(factory.root / "models" / "team10_Tiny.py", '''
        def _scale_tail(self, factor):
            self.scaled = self.tail.weight.detach().clone() * factor
        def _count_calls(self):
            self.calls = getattr(self, "calls", 0) + 1
        def _load_weights(self, path, key):
            self.loaded_from = path
            self.load_state_dict(torch.load(path, weights_only=True)[key])
        TinySR.scale_tail, TinySR.count_calls, TinySR.load_weights = _scale_tail, _count_calls, _load_weights
    ''')
    loaded = _load(factory, path)
    model = loaded.model
    assert torch.equal(model.scaled, state["tail.weight"] * 2.0)  # ran after the checkpoint loaded
    assert model.calls == 1 and _same_weights(model, other)
    assert model.loaded_from == str((factory.root / "model_zoo" / "late.pth").resolve())
    digest = hashlib.sha256((factory.root / "model_zoo" / "late.pth").read_bytes()).hexdigest()
    assert loaded.info.after_load == (
        "scale_tail(2.0)", "count_calls()",
        f"load_weights('model_zoo/late.pth', key='params') [file sha256 {digest}]")
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_after_load_on_every_module_that_has_the_method(tmp_path):
    sub = _fixture_submission(tmp_path, {
        "model": {"file": "models/team17_FSANet.py", "class": "FSANet", "kwargs": {"fea_ch": 4}},
        "checkpoint": {"path": "model_zoo/team17_fsanet.pth", "key": "params"},
        "after_load": [{"method": "switch_deploy", "each_module": True}]}, sid="team17_FSANet")
    unfused = load_submission(dataclasses.replace(sub, after_load=())).model
    fused = load_submission(sub)
    assert fused.info.after_load == ("switch_deploy() on every module that has it [2 modules]",)
    assert all(hasattr(block, "fused") and not hasattr(block, "conv3") for block in fused.model.blocks)
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(fused.model(x), unfused(x), atol=1e-5)


@pytest.mark.parametrize("entry, field, message, fix", [
    ("repa", "after_load[0]", "TinySR has no method 'repa'", "did you mean 'rep'?"),
    ({"method": "fuse", "each_module": True}, "after_load[0]", "no module of TinySR has a method 'fuse'",
     "(rep)"),
    ({"method": "rep", "args": [1, 2]}, "after_load[0]", "rep(1, 2) raised TypeError", "signature"),
])
def test_after_load_failures_name_the_entry_and_the_fix(factory, entry, field, message, fix):
    path = factory.make(manifest_extra={"after_load": [entry]})
    _with_methods(factory.root / "models" / "team10_Tiny.py", '''
        def _rep(self):
            pass
        TinySR.rep = _rep
    ''')
    with pytest.raises(SubmissionError) as info:
        _load(factory, path)
    assert (info.value.field_name, info.value.stage) == (field, "after_load")
    assert message in info.value.problem and fix in info.value.fix


def test_a_loader_that_catches_the_strict_failure_behaves_as_under_torch(factory):
    state = tiny_state_dict()
    state["extra.weight"] = state.pop("head.bias")
    path = factory.make(checkpoint_obj=state)
    _with_methods(factory.root / "models" / "team10_Tiny.py", '''
        def _tolerant_load(self, state_dict, strict=True):
            try:
                return nn.Module.load_state_dict(self, state_dict, strict=strict)
            except RuntimeError as error:
                assert "Missing key(s) in state_dict: \\"head.bias\\"" in str(error)
                return nn.Module.load_state_dict(self, state_dict, strict=False)
        TinySR.load_state_dict = _tolerant_load
    ''')
    loaded = _load(factory, path)
    assert (loaded.info.missing_keys, loaded.info.unexpected_keys) == (("head.bias",), ("extra.weight",))
