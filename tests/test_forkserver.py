"""The fork server: a forked sandbox counts as a fresh one does, holds nothing of the server or of
another submission, reports how it ended, and dies with the server."""

from __future__ import annotations

import contextlib
import json

import psutil
import pytest

from esr_eval import forkserver
from esr_eval.forkserver import ForkedProcess, ForkServer
from esr_eval.manifest import parse_manifest
from esr_eval.sandbox import RemoteError, Sandbox, SandboxError, restrict, sandbox_env
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="needs Linux pidfds and descriptor passing")

# A constructor that reports, on stdout (the sandbox's log), what its process can see.
SNOOP = '''
import json, os, sys

def _snoop():
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    print("SNOOP " + json.dumps(dict(fds=fds, env=sorted(os.environ), cwd=os.getcwd(), ppid=os.getppid(),
                                     modules="torch._dynamo" in sys.modules)), flush=True)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ForkServer(sandbox_env(tmp_path_factory.mktemp("zygote"))) as running:
        yield running


def _counts(sub, server=None) -> dict:
    with Sandbox("cpu", 1, server) as sandbox:
        restrict(sandbox, sub, None)
        loaded = sandbox.request("load")
        counts = sandbox.request("complexity", shape=[1, 3, 32, 32], data_range=sub.data_range)
        assert isinstance(sandbox.process, ForkedProcess) == (server is not None)
        return {**loaded, **counts}


def test_a_forked_sandbox_counts_as_a_fresh_one_does(server):
    sub = parse_manifest(REPO_ROOT / "model_zoo" / "team04_SPAN.yaml", REPO_ROOT)
    forked, fresh = _counts(sub, server), _counts(sub)
    for key in ("params_before_forward", "params", "flops_fvcore", "flops_hook_2022", "flops_audit", "activations",
                "num_conv", "checkpoint_sha256", "flops_audit_per_px_probe"):
        assert forked[key] == fresh[key], key


def test_a_forked_sandbox_holds_only_its_own_descriptors_environment_and_folder(server, factory, monkeypatch):
    monkeypatch.setenv("ESR_EVALUATOR_SECRET", "not for submissions")
    path = factory.make(model_source={"prelude": SNOOP, "init_extra": "_snoop()"})
    sub = parse_manifest(path, factory.root)
    with Sandbox("cpu", 1, server) as sandbox:
        restrict(sandbox, sub, None)
        sandbox.request("load")
        sandbox.finish(10)
        line = next(text for text in sandbox.log_path.read_text().splitlines() if text.startswith("SNOOP "))
        seen = json.loads(line[len("SNOOP "):])
        folder = sandbox.folder
    assert not [target for target in seen["fds"].values() if target.startswith("socket:")]  # not the server's socket
    assert len(seen["fds"]) <= 7  # stdin, log twice, two pipes, the shared buffer, listdir's own
    assert "ESR_EVALUATOR_SECRET" not in seen["env"] and seen["cwd"] == str(folder)
    assert seen["ppid"] == server.process.pid and seen["modules"]  # forked by the server, imports inherited


def test_a_forked_sandbox_that_ends_itself_reports_its_status(server, factory):
    path = factory.make(model_source={"prelude": "import os\n", "init_extra": "os._exit(7)"})
    sub = parse_manifest(path, factory.root)
    with Sandbox("cpu", 1, server) as sandbox:
        restrict(sandbox, sub, None)
        with pytest.raises(SandboxError) as raised:
            sandbox.request("load")
    assert raised.value.exit_status == 7


def test_kill_ends_a_forked_sandbox_and_its_status_says_so(server):
    with Sandbox("cpu", 1, server) as sandbox:
        assert sandbox.process.poll() is None
        sandbox.process.kill()
        assert sandbox.process.wait(timeout=30) == -9


def test_a_failure_inside_a_forked_sandbox_is_reported_as_in_a_fresh_one(server, factory):
    path = factory.make(model_source={"init_extra": "raise ValueError('broken constructor')"})
    sub = parse_manifest(path, factory.root)
    with Sandbox("cpu", 1, server) as sandbox:
        restrict(sandbox, sub, None)
        with pytest.raises(RemoteError, match="broken constructor"):
            sandbox.request("load")
        assert sandbox.process.poll() is None  # the sandbox lives on, as a fresh one does


def test_closing_the_server_ends_every_sandbox_it_forked(tmp_path):
    server = ForkServer(sandbox_env(tmp_path))
    boxes = [Sandbox("cpu", 1, server) for _ in range(2)]
    pids = [box.process.pid for box in boxes]
    server.close()
    for box in boxes:
        assert box.process.wait(timeout=30) == -9
        box.close()
    for pid in pids:  # ended: gone, or a zombie until its new parent reaps it
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_summary_forks_its_sandboxes_from_one_server(monkeypatch):
    from esr_eval.summary import summarize

    spawned = []
    original = ForkServer.spawn

    def counting(self, *args, **kwargs):
        process = original(self, *args, **kwargs)
        spawned.append(process.pid)
        return process

    monkeypatch.setattr(ForkServer, "spawn", counting)
    subs = [parse_manifest(REPO_ROOT / "model_zoo" / f"{sid}.yaml", REPO_ROOT) for sid in ("team99_Bicubic", "team04_SPAN")]
    rows = summarize(subs, input_shape=(1, 3, 16, 16), jobs=2)
    assert [row.status for row in rows] == ["ok", "ok"] and len(set(spawned)) == 2
