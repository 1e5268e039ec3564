"""Landlock self-restriction: a restricted child can still run torch but cannot read data it was
not given, write outside its private directory, signal or connect out, and passes all of it on
to what it spawns. Every restriction happens in a subprocess, never in the pytest process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from esr_eval.landlock import abi_version, default_device_paths, default_read_paths

REPO_ROOT = Path(__file__).resolve().parents[1]
ABI = abi_version()


def needs_abi(version: int, what: str):
    return pytest.mark.skipif(ABI < version, reason=f"{what} needs Landlock ABI >= {version}; "
                                                     f"this kernel has {ABI or 'no Landlock'}")


# Restricts the child like the sandbox does: default read and device paths, one private
# writable directory (also its TMPDIR). ARGS is a JSON object passed as argv[1].
PRELUDE = textwrap.dedent('''
    import json, os, sys
    ARGS = json.loads(sys.argv[1])
    from esr_eval.landlock import default_device_paths, default_read_paths, restrict_self
    READ_PATHS = default_read_paths()

    def attempt(fn):
        """'ok' when fn() succeeds, else the exception's class name."""
        try:
            fn()
            return "ok"
        except Exception as exc:
            return type(exc).__name__

    def restrict():
        r = restrict_self(READ_PATHS, [ARGS["private"]], default_device_paths())
        assert r.filesystem, r
        return r
''')


def run_child(code: str, args: dict, tmp_path: Path, timeout: float = 180) -> dict:
    """Runs PRELUDE + code in a fresh interpreter; the code prints one JSON object last."""
    private = tmp_path / "private"
    private.mkdir(exist_ok=True)
    args = {"private": str(private), **args}
    env = {**os.environ, "TMPDIR": str(private),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code), json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """Stands in for HR ground truth the submission must never see."""
    path = tmp_path / "data" / "0801_HR.png"
    path.parent.mkdir()
    path.write_bytes(b"\x89PNG ground truth")
    return path


def _is_within(path: Path, root: str) -> bool:
    root_path = Path(root).resolve()
    return path == root_path or root_path in path.parents


def test_default_read_paths_exclude_tmp_and_project_root(tmp_path):
    paths = default_read_paths()
    assert all(os.path.isabs(p) and os.path.exists(p) for p in paths)
    package_dir = str(REPO_ROOT / "esr_eval")
    assert package_dir in paths
    for path in paths:
        assert not _is_within(tmp_path.resolve(), path), f"{path} would expose {tmp_path}"
        assert not _is_within(REPO_ROOT / "results", path), f"{path} would expose the project root"
        assert Path(path).resolve() not in (Path("/"), Path("/tmp"), REPO_ROOT, Path.home())
    devices = default_device_paths()
    assert "/dev/null" in devices and all(p.startswith("/dev/") for p in devices)
    assert not any(p.startswith("/dev/tty") or p.startswith("/dev/pts") for p in devices)


@needs_abi(1, "filesystem restriction")
def test_restricted_child_runs_torch_but_cannot_reach_data_or_run_folder(tmp_path, data_file):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run_child('''
        data, data_dir = ARGS["data"], os.path.dirname(ARGS["data"])
        before = attempt(lambda: open(data, "rb").read())  # control: readable before restricting
        r = restrict()
        import io
        import fvcore.nn, numpy, torch
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.PixelShuffle(2))
        x = torch.randn(1, 3, 16, 16)
        y = model(x)
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.trace(model, x), buffer)
        flops = fvcore.nn.FlopCountAnalysis(model, x).total()
        out = {
            "describe": r.describe(), "read_paths": READ_PATHS, "before": before,
            "shape": list(y.shape), "jit_bytes": len(buffer.getvalue()), "flops": flops,
            "read": attempt(lambda: open(data, "rb").read()),
            "read_via_proc": attempt(lambda: open("/proc/self/root" + data, "rb").read()),
            "listdir": attempt(lambda: os.listdir(data_dir)),
            "write_run": attempt(lambda: open(os.path.join(ARGS["run"], "result.csv"), "w").write("x")),
            "mkdir_run": attempt(lambda: os.mkdir(os.path.join(ARGS["run"], "sub"))),
            "remove_data": attempt(lambda: os.unlink(data)),
            "write_private": attempt(lambda: open(os.path.join(ARGS["private"], "scratch.txt"), "w").write("ok")),
            "dev_null": attempt(lambda: open("/dev/null", "w").write("x")),
        }
        print(json.dumps(out))
    ''', {"data": str(data_file), "run": str(run_dir)}, tmp_path)
    assert result["describe"].startswith(f"landlock v{ABI}: filesystem")
    assert not any(_is_within(data_file, p) or _is_within(run_dir, p) for p in result["read_paths"])
    assert result["before"] == "ok"
    assert result["shape"] == [1, 2, 32, 32] and result["jit_bytes"] > 0 and result["flops"] > 0
    for key in ("read", "read_via_proc", "listdir", "write_run", "mkdir_run", "remove_data"):
        assert result[key] == "PermissionError", (key, result[key])
    assert result["write_private"] == "ok" and result["dev_null"] == "ok"
    assert (tmp_path / "private" / "scratch.txt").read_text() == "ok"
    assert list(run_dir.iterdir()) == [] and data_file.exists()


@needs_abi(6, "signal scoping")
def test_restricted_child_cannot_signal_outside_but_can_signal_its_own_children(tmp_path):
    sleep = shutil.which("sleep")
    assert sleep
    victim = subprocess.Popen([sleep, "60"])
    try:
        result = run_child('''
            import signal, subprocess
            victim = ARGS["victim"]
            before = attempt(lambda: os.kill(victim, 0))  # control: permitted before restricting
            restrict()
            outside = attempt(lambda: os.kill(victim, signal.SIGKILL))
            own = subprocess.Popen([ARGS["sleep"], "60"])
            inside = attempt(lambda: os.kill(own.pid, signal.SIGKILL))
            print(json.dumps({"before": before, "outside": outside, "inside": inside,
                              "own_returncode": own.wait(timeout=30)}))
        ''', {"victim": victim.pid, "sleep": sleep}, tmp_path)
        assert result["before"] == "ok"
        assert result["outside"] == "PermissionError"
        assert victim.poll() is None, "the victim outside the sandbox was killed"
        assert result["inside"] == "ok" and result["own_returncode"] == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


@needs_abi(4, "TCP restriction")
@pytest.mark.parametrize("restricted", [True, False], ids=["restricted", "control"])
def test_tcp_connect_refused_only_when_restricted(tmp_path, restricted):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        result = run_child('''
            import socket
            if ARGS["restricted"]:
                restrict()
            def connect():
                socket.create_connection(("127.0.0.1", ARGS["port"]), timeout=10).close()
            def bind():
                socket.socket().bind(("127.0.0.1", 0))
            print(json.dumps({"connect": attempt(connect), "bind": attempt(bind)}))
        ''', {"port": listener.getsockname()[1], "restricted": restricted}, tmp_path)
    expected = "PermissionError" if restricted else "ok"
    assert result == {"connect": expected, "bind": expected}


# Run by the restricted child's own child with the data path as argv[1].
GRANDCHILD = textwrap.dedent('''
    import json, sys
    from esr_eval.landlock import restrict_self

    def attempt(fn):
        try:
            fn()
            return "ok"
        except Exception as exc:
            return type(exc).__name__

    inherited = attempt(lambda: open(sys.argv[1], "rb").read())
    restrict_self(["/"], ["/"])  # a second, wider layer cannot lift the first one
    widened = attempt(lambda: open(sys.argv[1], "rb").read())
    print(json.dumps({"inherited": inherited, "widened": widened}))
''')


@needs_abi(1, "filesystem restriction")
def test_restriction_is_inherited_and_cannot_be_widened(tmp_path, data_file):
    result = run_child('''
        import subprocess
        restrict()
        proc = subprocess.run([sys.executable, "-c", ARGS["grandchild"], ARGS["data"]],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        print(proc.stdout.strip().splitlines()[-1])
    ''', {"data": str(data_file), "grandchild": GRANDCHILD}, tmp_path)
    assert result == {"inherited": "PermissionError", "widened": "PermissionError"}


def test_abi_version_and_fallback_without_landlock(tmp_path, data_file):
    assert isinstance(ABI, int) and ABI >= 0
    result = run_child('''
        import esr_eval.landlock as landlock
        torch_imported = "torch" in sys.modules
        landlock.abi_version = lambda: 0  # as on a kernel without Landlock
        r = landlock.restrict_self(["/nonexistent"], [], [])
        with open("/proc/self/status") as status:
            no_new_privs = [line.split()[1] for line in status if line.startswith("NoNewPrivs:")]
        print(json.dumps({"fields": [r.abi, r.filesystem, r.network, r.signals, r.abstract_unix],
                          "describe": r.describe(), "torch_imported": torch_imported,
                          "no_new_privs": no_new_privs, "read": attempt(lambda: open(ARGS["data"], "rb").read())}))
    ''', {"data": str(data_file)}, tmp_path)
    assert result["fields"] == [0, False, False, False, False]
    assert "unavailable" in result["describe"]
    assert result["read"] == "ok" and result["no_new_privs"] in ([], ["0"])  # nothing was applied
    assert result["torch_imported"] is False  # the module (and its PRELUDE import) stays torch-free


@needs_abi(1, "filesystem restriction")
@pytest.mark.parametrize("simulated", range(1, 8))
def test_older_abis_get_a_matching_ruleset(tmp_path, data_file, simulated):
    """The best-effort pattern: on an older kernel (simulated by claiming a lower ABI than the
    running one) the ruleset only handles what that ABI knows, and the record says so."""
    if simulated > ABI:
        pytest.skip(f"cannot simulate ABI {simulated} on a kernel with ABI {ABI}")
    result = run_child('''
        import esr_eval.landlock as landlock
        landlock.abi_version = lambda: ARGS["simulated"]
        r = restrict()
        print(json.dumps({"fields": [r.abi, r.filesystem, r.network, r.signals, r.abstract_unix],
                          "read": attempt(lambda: open(ARGS["data"], "rb").read()),
                          "write_private": attempt(lambda: open(os.path.join(ARGS["private"], "f"), "w").write("x"))}))
    ''', {"data": str(data_file), "simulated": simulated}, tmp_path)
    assert result["fields"] == [simulated, True, simulated >= 4, simulated >= 6, simulated >= 6]
    assert result["read"] == "PermissionError" and result["write_private"] == "ok"
