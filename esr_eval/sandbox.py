"""The evaluator's side of a submission's sandbox process.

Contract
--------
:class:`Sandbox` starts ``python -m esr_eval.sandbox_child`` (a fresh interpreter, never a fork of
the evaluator) with a minimal environment (no Ray addresses, ``HOME``/``TMPDIR`` in a private
folder), its own session, stdout and stderr into a private log, and two pipes. It is the only
route between the evaluator and the submission's code: requests carry LR inputs; replies are
read with :func:`esr_eval.wire.receive` (no pickle, bounded) and must echo the request's random
nonce. What comes back is untrusted and checked by the caller.

* :meth:`Sandbox.forward` times each call with the evaluator's own clock (request sent → output
  received) beside the sandbox's figures (:class:`esr_eval.timing.CallTiming`).
* A reply that breaks the protocol, a wrong nonce, or the process ending raise
  :class:`SandboxError` (with the exit status and the tail of the sandbox's log); a failure
  inside the sandbox raises :class:`RemoteError` with the sandbox's type name, message, stage and
  traceback.
* :meth:`Sandbox.close` ends the process (SIGKILL). Processes the submission spawned are the
  caller's to reap (:func:`esr_eval.containment.contained`, which makes the evaluator a subreaper).
* ``forkserver``: the sandbox is forked by an :class:`esr_eval.forkserver.ForkServer` (a process
  that made the imports once) instead of a fresh interpreter; it is the same sandbox otherwise.
* :func:`prestart` starts a sandbox before its device is known (a Ray actor does, while it starts
  up); :func:`obtain` takes it, or starts one. Each sandbox serves one submission.
* :class:`RemoteAdapter` gives the sandboxed model the interface of
  :class:`esr_eval.adapter.ForwardAdapter` (``__call__``, ``to_input``, ``to_uint8``,
  ``data_range``, ``scale``, ``with_data_range``) for the hygiene checks, which run in the evaluator.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import esr_eval
from esr_eval import landlock
from esr_eval.forkserver import ForkedProcess, ForkServer, ForkServerError
from esr_eval.quality import to_uint8
from esr_eval.timing import CallTiming
from esr_eval.wire import WireError, read_shared, receive, send

EXIT_WAIT_S = 5.0
SHARED_BYTES = 256 << 20  # the largest output passed through shared memory (a 4x 8K image: 400 MB goes by pipe)
LOG_TAIL_BYTES = 2000
_KEPT_ENV = ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH",
             "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")


def sandbox_env(folder: Path) -> dict[str, str]:
    """A sandbox's whole environment: a few of the evaluator's variables (no Ray addresses, no
    credentials) and its private folder as ``HOME`` and ``TMPDIR``."""
    env = {key: os.environ[key] for key in _KEPT_ENV if key in os.environ}
    env.update(HOME=str(folder), TMPDIR=str(folder), MPLCONFIGDIR=str(folder),
               PYTHONPATH=str(Path(esr_eval.__file__).resolve().parent.parent), PYTHONDONTWRITEBYTECODE="1")
    return env


class SandboxError(RuntimeError):
    """The sandbox process died, hung up or broke the protocol; ``exit_status`` when it ended."""

    def __init__(self, message: str, exit_status: int | None = None):
        self.exit_status = exit_status
        super().__init__(message)


class SandboxTimeout(SandboxError):
    """The sandbox did not answer a request within its time limit (and was killed)."""


class RemoteError(RuntimeError):
    """A failure inside the sandbox, as it reported it."""

    def __init__(self, error: dict):
        self.type_name = str(error.get("type", "Exception"))[:100]
        self.stage = error.get("stage") if isinstance(error.get("stage"), str) else None
        self.field_name, self.problem, self.fix = (str(error[key]) if isinstance(error.get(key), str) else None
                                                   for key in ("field", "problem", "fix"))
        self.remote_traceback = str(error.get("traceback", ""))
        self.memory = bool(error.get("memory"))
        super().__init__(str(error.get("message", "")))


@dataclass(frozen=True)
class Loaded:
    """What the sandbox reported about loading the submission."""

    fields: dict
    protections: str


def read_paths_for(root: Path, checkpoint: Path | None) -> list[str]:
    """What the sandboxed submission may read: the Python installation and system folders
    (:func:`esr_eval.landlock.default_read_paths`, without esr_eval's own folder, whose modules
    the sandbox has imported already), its submission root and its checkpoint file."""
    own = Path(esr_eval.__file__).resolve().parent
    paths = [p for p in landlock.default_read_paths() if Path(p).resolve() != own]
    return paths + [str(root)] + ([str(checkpoint)] if checkpoint is not None else [])


def restrict(sandbox: "Sandbox", sub, memory_limit_mb: int | None, use_landlock: bool = True) -> dict:
    """Have the sandbox read ``sub``'s manifest, then limit its memory and restrict itself (before
    any of the submission's code runs); the reply says which protections are active."""
    return sandbox.request("restrict", manifest_path=str(sub.manifest_path), root=str(sub.root),
                           memory_limit_mb=memory_limit_mb, landlock=use_landlock,
                           read_paths=read_paths_for(sub.root, sub.checkpoint_path))


class Sandbox:
    """One sandbox process for one submission (see the module docstring)."""

    def __init__(self, device: str | None = "cpu", torch_threads: int | None = None,
                 forkserver: ForkServer | None = None):
        self.device = None
        self.folder = Path(tempfile.mkdtemp(prefix="esr-sandbox-"))
        self.log_path = self.folder / "sandbox.log"
        request_read, self._request_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        self._shared, shared_fd = _shared_buffer()
        env = sandbox_env(self.folder)
        with open(self.log_path, "wb") as log:
            self.process: subprocess.Popen | ForkedProcess | None = None
            if forkserver is not None:
                with contextlib.suppress(ForkServerError):  # a server that stopped: a fresh interpreter instead
                    self.process = forkserver.spawn(
                        [fd for fd in (request_read, reply_write, log.fileno(), shared_fd) if fd >= 0], self.folder, env)
            if self.process is None:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "esr_eval.sandbox_child", str(request_read), str(reply_write),
                     str(os.getpid()), str(shared_fd)],
                    pass_fds=tuple(fd for fd in (request_read, reply_write, shared_fd) if fd >= 0),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    cwd=self.folder, env=env, start_new_session=True)
        for fd in (request_read, reply_write, shared_fd):
            if fd >= 0:
                os.close(fd)
        self._requests = os.fdopen(self._request_write, "wb")
        self._replies = os.fdopen(self._reply_read, "rb")
        self.expired = False
        self._started = False
        if device is not None:
            self.hello(device, torch_threads)

    def wait_started(self) -> None:
        """Wait until the sandbox has made its imports (it says so once, unasked)."""
        if self._started:
            return
        try:
            announced, _ = receive(self._replies)
        except (EOFError, WireError) as exc:
            raise self._died(f"did not start ({type(exc).__name__})") from None
        if announced.get("nonce") != "started":
            raise SandboxError("the sandbox process did not announce its start")
        self._started = True

    def hello(self, device: str, torch_threads: int | None = None) -> dict:
        """Tell the started sandbox its device and thread count."""
        self.wait_started()
        self.device = device
        return self.request("hello", device=device, torch_threads=torch_threads)

    def _died(self, what: str) -> SandboxError:
        try:
            status = self.process.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            status = None
        tail = self.log_tail()
        said = f"; its last output: {tail}" if tail else ""
        how = "is still running" if status is None else f"exited with status {status}"
        return SandboxError(f"the submission's process {what} and {how}{said}", status)

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                return log.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def request(self, op: str, arrays: list[np.ndarray] | tuple = (), timeout_s: float | None = None,
                **header) -> dict:
        """Send one request, return the reply header (arrays in ``self.last_arrays``); with
        ``timeout_s``, a sandbox that has not answered by then is killed (:class:`SandboxTimeout`)."""
        reply, self.last_arrays = self._exchange(op, arrays, header, timeout_s)
        return reply

    def _expire(self) -> None:
        self.expired = True
        self.process.kill()

    def _exchange(self, op: str, arrays, header: dict, timeout_s: float | None = None) -> tuple[dict, list[np.ndarray]]:
        nonce = secrets.token_hex(8)
        watchdog = threading.Timer(timeout_s, self._expire) if timeout_s else None
        try:
            if watchdog is not None:
                watchdog.start()
            send(self._requests, dict(header, op=op, nonce=nonce), arrays)
            reply, out = receive(self._replies)
        except (EOFError, BrokenPipeError) as exc:
            if self.expired:
                raise SandboxTimeout(f"the submission's process gave no answer within {timeout_s:g} s during "
                                     f"'{op}' and was stopped") from None
            raise self._died(f"ended during '{op}' ({type(exc).__name__})") from None
        except WireError as exc:
            raise SandboxError(f"the submission's process broke the protocol during '{op}': {exc}") from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
        if reply.get("nonce") != nonce:
            raise SandboxError(f"the submission's process answered '{op}' with a reply to another request "
                               "(forged or stale reply)")
        if isinstance(reply.get("error"), dict):
            raise RemoteError(reply["error"])
        return reply, out

    def forward(self, x: np.ndarray, *, data_range: float, output: str = "uint8", null_scale: int | None = None,
                check_mutation: bool = False, timeout_s: float | None = None) -> tuple[CallTiming, dict, list[np.ndarray]]:
        """One call, timed by this process too: (timing with the output, reply, extra arrays)."""
        header = dict(output=output, data_range=data_range, check_mutation=check_mutation)
        if null_scale is not None:
            header.update(null=True, scale=null_scale)
        started = time.perf_counter_ns()
        reply, out = self._exchange("forward", [x], header, timeout_s)
        if "shared" in reply and self._shared is not None:
            try:
                out = [read_shared(self._shared, reply["shared"]), *out]
            except WireError as exc:
                raise SandboxError(f"the submission's process broke the protocol during 'forward': {exc}") from None
        external_ms = (time.perf_counter_ns() - started) / 1e6
        if not out:
            raise SandboxError("the submission's process answered 'forward' without an output")
        timing = CallTiming(out[0], _number(reply, "latency_ms"), _number(reply, "wall_ms"), external_ms)
        return timing, reply, out[1:]

    def finish(self, wait_s: float) -> None:
        """Close the request pipe: the process leaves its request loop and exits as Python does,
        flushing what the submission buffered; wait for it up to ``wait_s`` (then :meth:`close` kills it)."""
        self._requests.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=wait_s)

    def close(self) -> None:
        """End the process (SIGKILL: it holds nothing to save) and remove its private folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self._requests, self._replies, self._shared):
            try:
                if stream is not None:
                    stream.close()
            except (OSError, BufferError):
                pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_spare: Sandbox | None = None


def _shared_buffer() -> tuple[mmap.mmap | None, int]:
    """A shared memory buffer (memfd) for the sandbox's outputs, and its fd (-1 where memfd is missing)."""
    try:
        fd = os.memfd_create("esr-sandbox-outputs")
        os.ftruncate(fd, SHARED_BYTES)
        return mmap.mmap(fd, SHARED_BYTES), fd
    except (AttributeError, OSError):
        return None, -1


def prestart(wait: bool = False) -> None:
    """Start a sandbox now, before its device is known, so that its interpreter and imports are
    paid while the caller starts up (a Ray actor), not inside a submission's measurement; the next
    :func:`obtain` takes it. Nothing of a submission is in it yet. ``wait``: until its imports are done."""
    global _spare
    if _spare is None or _spare.process.poll() is not None:
        _spare = Sandbox(device=None)
    if wait:
        _spare.wait_started()


def obtain(device: str, torch_threads: int | None = None) -> Sandbox:
    """The prestarted sandbox if there is one (each is used once), else a new one; ready on ``device``."""
    global _spare
    box, _spare = _spare, None
    if box is None or box.process.poll() is not None:
        return Sandbox(device, torch_threads)
    box.hello(device, torch_threads)
    return box


def _number(reply: dict, key: str) -> float:
    value = reply.get(key)
    if type(value) not in (int, float):
        raise SandboxError(f"the submission's process sent a non-numeric {key!r}: {str(value)[:100]}")
    return float(value)


def to_input(lr_u8: np.ndarray, data_range: float) -> np.ndarray:
    """LR uint8 H×W×3 → float32 1×3×H×W divided by 255/data_range (as ``ForwardAdapter.to_input``)."""
    array = np.ascontiguousarray(lr_u8.transpose(2, 0, 1), dtype=np.float32)[None]
    return array / np.float32(255.0 / data_range)


class RemoteAdapter:
    """The sandboxed model behind the ``ForwardAdapter`` interface (float outputs, mutation reported)."""

    def __init__(self, sandbox: Sandbox, scale: int, data_range: float):
        self.sandbox, self.scale, self.data_range = sandbox, scale, data_range

    def with_data_range(self, data_range: float) -> "RemoteAdapter":
        return RemoteAdapter(self.sandbox, self.scale, data_range)

    def to_input(self, lr_u8: np.ndarray, device=None) -> torch.Tensor:
        return torch.from_numpy(to_input(lr_u8, self.data_range))

    def to_uint8(self, sr: torch.Tensor) -> np.ndarray:
        return to_uint8(sr, self.data_range)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        timing, reply, extra = self.sandbox.forward(x.detach().cpu().numpy().astype(np.float32, copy=False),
                                                    data_range=self.data_range, output="float32", check_mutation=True)
        if reply.get("mutated") is True and extra and extra[0].size == x.numel():
            x.copy_(torch.from_numpy(extra[0]).reshape(x.shape))
        return torch.from_numpy(timing.output)
