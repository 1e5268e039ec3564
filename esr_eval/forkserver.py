"""A fork server for sandboxes: the interpreter start and the imports paid once, not per submission.

Contract
--------
:class:`ForkServer` starts ``python -m esr_eval.sandbox_child --zygote`` (a fresh interpreter with
the sandbox's minimal environment, never a fork of the evaluator), which makes every import a
sandbox needs (torch, fvcore, the FLOP counter's ``torch._dynamo``) and runs no model or tensor
operation. :meth:`ForkServer.spawn` passes a sandbox's pipes and log over a Unix socket
(``SCM_RIGHTS``); the zygote forks, and the child becomes a sandbox exactly as a fresh one would
(own session, its log as stdout and stderr, its private folder and environment, no descriptor but
its own, dies with the zygote) before any submission code runs, so one submission never sees
another's process, files or descriptors. The zygote reaps each child and reports its exit status.

:class:`ForkedProcess` gives a child the part of :class:`subprocess.Popen` that
:class:`esr_eval.sandbox.Sandbox` uses (``pid``, ``poll``, ``wait``, ``kill``, ``returncode``);
it signals through a pidfd, never a bare pid that could have been reused.
:func:`available` says whether this system has what the server needs (Linux pidfds and
descriptor passing); callers fall back to fresh interpreters where it does not, or where
the server fails to start (:class:`ForkServerError`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

START_TIMEOUT_S = 120.0  # the zygote's imports on a loaded machine
SPAWN_TIMEOUT_S = 60.0
_MESSAGE_BYTES = 1 << 16


class ForkServerError(RuntimeError):
    """The fork server did not start, or stopped answering."""


def available() -> bool:
    """Pidfds and descriptor passing exist here (Linux ≥ 5.3, Python ≥ 3.9)."""
    return sys.platform == "linux" and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


class ForkedProcess:
    """One sandbox forked by the server, as much of ``subprocess.Popen`` as a sandbox needs."""

    def __init__(self, server: "ForkServer", pid: int):
        self.server, self.pid, self.args = server, pid, ["esr-sandbox-fork", str(pid)]
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already ended (and reaped): its status is on its way
            self._pidfd = None

    @property
    def returncode(self) -> int | None:
        """The exit status the server reported; once the server has ended without reporting it,
        -SIGKILL as soon as the process has ended (it dies with the server)."""
        status = self.server.exit_status(self.pid)
        if status is None and self.server.ended and self._ended_within(0):
            return -signal.SIGKILL
        return status

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.server.wait_exit(self.pid, timeout)
        if self.returncode is None and self.server.ended:
            self._ended_within(None if deadline is None else max(0.0, deadline - time.monotonic()))
        status = self.returncode
        if status is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return status

    def _ended_within(self, timeout: float | None) -> bool:
        """The process has ended (its pidfd is readable), waiting up to ``timeout``."""
        if self._pidfd is None:
            return True
        return bool(select.select([self._pidfd], [], [], timeout)[0])

    def kill(self) -> None:
        if self._pidfd is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    def __del__(self):
        self._close_pidfd()


class ForkServer:
    """The zygote process and the socket to it; one per evaluator process that runs many sandboxes."""

    def __init__(self, env: dict[str, str]):
        self.folder = Path(tempfile.mkdtemp(prefix="esr-forkserver-"))
        self.log_path = self.folder / "zygote.log"
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "esr_eval.sandbox_child", "--zygote", str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.folder, env={**env, "HOME": str(self.folder), "TMPDIR": str(self.folder)},
                start_new_session=True)
        theirs.close()
        self._spawn_lock = threading.Lock()
        self._changed = threading.Condition()
        self._spawned: list[int] = []
        self._exits: dict[int, int] = {}
        self._ended = False
        self._sock.settimeout(START_TIMEOUT_S)
        try:
            started = self._receive()
        except (OSError, ValueError, EOFError) as exc:
            self.close()
            raise ForkServerError(f"the fork server did not start ({type(exc).__name__}): {self._log_tail()}") from None
        if "started" not in started:
            self.close()
            raise ForkServerError(f"the fork server did not announce its start: {self._log_tail()}")
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="esr-forkserver", daemon=True)
        self._reader.start()

    def _receive(self) -> dict:
        data = self._sock.recv(_MESSAGE_BYTES)
        if not data:
            raise EOFError("the fork server closed its socket")
        return json.loads(data)

    def _read(self) -> None:
        """Collect the zygote's messages: spawned pids (for :meth:`spawn`) and exit statuses."""
        while True:
            try:
                message = self._receive()
            except (OSError, ValueError, EOFError):
                break
            with self._changed:
                if "spawned" in message:
                    self._spawned.append(int(message["spawned"]))
                elif "exited" in message:
                    self._exits[int(message["exited"])] = int(message["status"])
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def spawn(self, fds: list[int], folder: Path, env: dict[str, str]) -> ForkedProcess:
        """A new sandbox process on ``fds`` (request read end, reply write end, log, optional
        shared buffer), working in ``folder`` with ``env``; the caller still owns and closes ``fds``."""
        message = json.dumps(dict(folder=str(folder), env=env)).encode()
        with self._spawn_lock, self._changed:
            if self._ended:
                raise ForkServerError(f"the fork server has ended: {self._log_tail()}")
            socket.send_fds(self._sock, [message], fds)
            if not self._changed.wait_for(lambda: self._spawned or self._ended, SPAWN_TIMEOUT_S) or not self._spawned:
                raise ForkServerError(f"the fork server did not fork a sandbox: {self._log_tail()}")
            return ForkedProcess(self, self._spawned.pop(0))

    @property
    def ended(self) -> bool:
        """The server has stopped answering (its children die with it)."""
        with self._changed:
            return self._ended

    def exit_status(self, pid: int) -> int | None:
        """The child's exit status as the server reported it (negative: the signal); None before."""
        with self._changed:
            return self._exits.get(pid)

    def wait_exit(self, pid: int, timeout: float | None) -> None:
        """Until the server reports the child's end, or ends itself, or ``timeout`` passes."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._ended, timeout)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-2000:].decode("utf-8", "replace").strip() or "(empty log)"
        return "(no log)"

    def close(self) -> None:
        """End the zygote (its children die with it) and remove its folder."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
