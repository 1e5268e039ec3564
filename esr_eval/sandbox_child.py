"""The sandbox process: the only process that runs a submission's code.

Contract
--------
Started by :class:`esr_eval.sandbox.Sandbox` as ``python -m esr_eval.sandbox_child REQ_FD
REPLY_FD PARENT_PID SHARED_FD``; it talks only through those two pipes (:mod:`esr_eval.wire`, no
pickle) and a shared output buffer (a memfd; -1: none) where it leaves uint8 outputs
and sees only what a request carries: LR inputs (float tensors) and probe inputs. It never
receives HR images, their paths, the run folder or anything that writes results. It dies with
its parent (``PR_SET_PDEATHSIG``). Everything it needs is imported before any submission code
runs, then, on ``restrict``, it limits its own memory (``RLIMIT_DATA``) and restricts itself with
Landlock (:mod:`esr_eval.landlock`: reads beneath the Python installation, the system folders,
the submission's root and checkpoint only; writes only in its private folder; no TCP; no signals
to processes outside the sandbox) before importing the model file.

Requests (``op``) and replies:
* ``forward`` [x]: one call of the adapter under the in-process clock (:mod:`esr_eval.timing`),
  output must be a plain dense tensor; returns ``latency_ms``/``wall_ms`` as the sandbox measured
  them (untrusted: the evaluator bounds them by its own clock) and the output as uint8 H×W×3
  (``output: "uint8"``, NaN/Inf refused) or float32. ``null: true`` answers with a zero image of
  the output size instead of calling the model (calibration of the path, before ``load``).
* ``restrict``: the manifest path and root; reads the manifest, then applies the memory limit and
  Landlock (the read paths come with the request; writes only in the working folder).
* ``construct`` / ``load``: builds the model / loads the submission (:mod:`esr_eval.loading`).
* ``complexity``: the official counts on the probe and the audit FLOPs per output pixel.
* ``trace`` [x]: the adapter traced on ``x`` (``torch.jit.trace``), saved as a TorchScript archive
  (uint8 array), for the evaluator to count and check in its own process.
* ``reset_peak`` / ``peak``: CUDA peak memory of this process (MiB).
It serves until its request pipe closes or its parent kills it.
Every reply echoes the request's ``nonce``; a failure replies ``error`` with the exception's
type, message (clipped), traceback and, for a :class:`SubmissionError`, its stage.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import mmap
import os
import resource
import signal
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
from fvcore.nn import FlopCountAnalysis  # noqa: F401 (imported before any submission code runs)
from torch import nn

from esr_eval import landlock
from esr_eval.adapter import ForwardAdapter
from esr_eval.complexity import measure_complexity, per_pixel_audit
from esr_eval.loading import construct_model, load_submission
from esr_eval.manifest import SubmissionError, parse_manifest
from esr_eval.quality import to_uint8
from esr_eval.timing import cpu_call, cuda_call, require_plain
from esr_eval.wire import receive, send

PR_SET_PDEATHSIG = 1
_MIB = 2 ** 20
MESSAGE_CHARS = 4000
TRACEBACK_CHARS = 8000


def _null_model(scale: int):
    """The calibration stand-in: zeros of the output's shape, no model work."""
    def zeros(t: torch.Tensor) -> torch.Tensor:
        return t.new_zeros(t.shape[0], 3, t.shape[-2] * scale, t.shape[-1] * scale)
    return zeros


class _Traced(nn.Module):
    """The adapter as a module, so that ``torch.jit.trace`` can save what it records."""

    def __init__(self, adapter: ForwardAdapter):
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter

    def forward(self, x):
        return self._adapter(x)


class _Child:
    def __init__(self, device: torch.device, threads: int | None, shared: mmap.mmap | None = None):
        self.device = device
        self.shared = shared
        self.adapter: ForwardAdapter | None = None
        self.sub = None
        self.scale = 4
        if threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = False

    def _call(self, fn, x):
        return (cuda_call if self.device.type == "cuda" else cpu_call)(fn, x)

    def forward(self, header: dict, arrays: list[np.ndarray]):
        x = torch.from_numpy(arrays[0]).to(self.device)
        fn = _null_model(int(header["scale"])) if header.get("null") else self.adapter
        pristine = x.clone() if header.get("check_mutation") else None
        with torch.inference_mode():
            out, latency_ms, wall_ms = self._call(fn, x)
        require_plain(out)
        data_range = float(header["data_range"])
        result = (to_uint8(out, data_range, reject_inf=True) if header["output"] == "uint8"
                  else out.detach().float().cpu().numpy())
        mutated = pristine is not None and not torch.equal(x, pristine)
        extra = [x.cpu().numpy()] if mutated else []
        reply = dict(latency_ms=latency_ms, wall_ms=wall_ms, mutated=mutated)
        if self.shared is not None and result.nbytes <= len(self.shared):
            np.frombuffer(self.shared, dtype=result.dtype, count=result.size)[:] = result.reshape(-1)
            return dict(reply, shared=[result.dtype.name, list(result.shape)]), extra
        return reply, [result, *extra]

    def restrict(self, header: dict, arrays):
        """Read the manifest, then limit memory and restrict with Landlock: before any submission code."""
        self.sub = parse_manifest(Path(header["manifest_path"]), Path(header["root"]), check_files=False)
        limit_mb = header.get("memory_limit_mb")
        if limit_mb is not None:
            soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
            wanted = limit_mb * _MIB if hard == resource.RLIM_INFINITY else min(limit_mb * _MIB, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (wanted, hard))
        restriction = landlock.Restriction(0, False, False, False, False)
        if header.get("landlock", True):
            restriction = landlock.restrict_self(header["read_paths"], [os.getcwd()], landlock.default_device_paths())
        return dict(memory_limited=limit_mb is not None, landlock=restriction.describe(),
                    landlock_filesystem=restriction.filesystem, landlock_signals=restriction.signals,
                    landlock_network=restriction.network), []

    def construct(self, header: dict, arrays):
        model, redirects = construct_model(self.sub, self.device)
        return dict(class_name=type(model).__name__, params=sum(p.numel() for p in model.parameters())), []

    def load(self, header: dict, arrays):
        loaded = load_submission(self.sub, self.device)
        self.adapter = ForwardAdapter(loaded.model, self.sub.adapter, self.sub.scale, self.sub.data_range)
        self.scale = self.sub.scale
        info = loaded.info
        return dict(checkpoint_sha256=info.checkpoint_sha256, missing_keys=list(info.missing_keys),
                    unexpected_keys=list(info.unexpected_keys), cuda_calls_redirected=info.cuda_calls_redirected,
                    trusted_pickle_used=info.trusted_pickle_used, after_load=list(info.after_load),
                    params_before_forward=sum(p.numel() for p in loaded.model.parameters())), []

    def complexity(self, header: dict, arrays):
        shape = tuple(header["shape"])
        data_range = float(header["data_range"])
        c = measure_complexity(self.adapter.model, shape, data_range, self.device)
        spec = self.adapter.spec
        if spec.tile_size or spec.pad_to_multiple:  # the adapter adds work around the model: count it as called
            probe = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * data_range
            probe_px = per_pixel_audit(self.adapter, probe.to(self.device), self.scale)
        else:  # the adapter is the model itself: its audit count on the same probe
            probe_px = c.flops_audit / (shape[0] * shape[-2] * shape[-1] * self.scale ** 2)
        return dict(params=c.params, flops_fvcore=c.flops_fvcore, flops_hook_2022=c.flops_hook_2022,
                    flops_audit=c.flops_audit, activations=c.activations, num_conv=c.num_conv,
                    zero_counted_ops=[[op.op, op.calls, op.category] for op in c.zero_counted_ops],
                    float_buffer_elements=c.float_buffer_elements, flops_audit_per_px_probe=probe_px), []

    def trace(self, header: dict, arrays):
        x = torch.from_numpy(arrays[0]).to(self.device)
        with torch.no_grad():
            traced = torch.jit.trace(_Traced(self.adapter), x, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        return {}, [np.frombuffer(buffer.getvalue(), dtype=np.uint8)]

    def reset_peak(self, header, arrays):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return {}, []

    def peak(self, header, arrays):
        peak = torch.cuda.max_memory_allocated(self.device) / _MIB if self.device.type == "cuda" else None
        return dict(peak_mb=peak), []


def _error(exc: BaseException) -> dict:
    return dict(error=dict(type=type(exc).__name__, message=str(exc)[:MESSAGE_CHARS],
                           traceback=traceback.format_exc()[-TRACEBACK_CHARS:],
                           stage=exc.stage if isinstance(exc, SubmissionError) else None,
                           field=exc.field_name if isinstance(exc, SubmissionError) else None,
                           problem=exc.problem if isinstance(exc, SubmissionError) else None,
                           fix=exc.fix if isinstance(exc, SubmissionError) else None,
                           memory=isinstance(exc, (MemoryError, torch.OutOfMemoryError))
                           or "can't allocate memory" in str(exc)))


def serve(requests, replies, child: _Child) -> None:
    """Answer requests until the end of the request stream."""
    handlers = dict(forward=child.forward, restrict=child.restrict, construct=child.construct, load=child.load,
                    complexity=child.complexity, trace=child.trace, reset_peak=child.reset_peak, peak=child.peak)
    while True:
        try:
            header, arrays = receive(requests)
        except EOFError:
            return
        op, nonce = header.get("op"), header.get("nonce")
        try:
            reply, out = handlers[op](header, arrays)
        except (Exception, SystemExit) as exc:  # the submission's fault is reported, never fatal here
            reply, out = _error(exc), []
        send(replies, dict(reply, nonce=nonce), out)
        del header, arrays, reply, out  # keep no input or output of one call into the next


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent ends; exit now if the parent already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str]) -> None:
    if argv[1] == "--zygote":
        zygote(int(argv[2]), int(argv[3]))
        return
    request_fd, reply_fd, parent_pid, shared_fd = int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    _die_with_parent(parent_pid)
    run(request_fd, reply_fd, shared_fd)


def run(request_fd: int, reply_fd: int, shared_fd: int) -> None:
    """Announce the start, take the device, serve (what a sandbox does once its imports are made)."""
    requests, replies = os.fdopen(request_fd, "rb"), os.fdopen(reply_fd, "wb")
    send(replies, dict(nonce="started", pid=os.getpid()))  # imports done: ready for its device
    header, _ = receive(requests)
    shared = mmap.mmap(shared_fd, 0) if shared_fd >= 0 else None
    child = _Child(torch.device(header["device"]), header.get("torch_threads"), shared)
    send(replies, dict(nonce=header.get("nonce"), pid=os.getpid(), torch=torch.__version__))
    serve(requests, replies, child)


def _forked_sandbox(message: dict, fds: list[int], zygote_pid: int) -> None:
    """In a fresh fork of the zygote: become a sandbox exactly as a fresh interpreter would be
    (own session, log as stdout/stderr, private folder and environment, only its three descriptors
    open), serve, and exit without running anything of the zygote's."""
    status = 1
    try:
        request_fd, reply_fd, log_fd, *rest = fds
        shared_fd = rest[0] if rest else -1
        os.setsid()
        _die_with_parent(zygote_pid)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        keep = {0, 1, 2, request_fd, reply_fd, shared_fd}
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        os.chdir(message["folder"])
        os.environ.clear()
        os.environ.update(message["env"])
        sys.dont_write_bytecode = True
        run(request_fd, reply_fd, shared_fd)
        status = 0
    except BaseException:  # noqa: BLE001 (the fork must never return into the zygote's loop)
        traceback.print_exc()
    finally:  # flush what Python and C stdio buffered, as an interpreter's exit does
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)
        os._exit(status)


def zygote(sock_fd: int, parent_pid: int) -> None:
    """The fork server (:class:`esr_eval.forkserver.ForkServer`): imports made once, then one fork
    per sandbox asked for on the socket; each child's exit status is reported back. It never runs
    a submission's code itself and ends when the socket closes (its children die with it)."""
    import select
    import socket

    import torch._dynamo  # noqa: F401 (what FlopCounterMode imports on first use: inherited by every fork)

    _die_with_parent(parent_pid)
    sock = socket.socket(fileno=sock_fd)
    children: dict[int, int] = {}  # pidfd -> pid

    def tell(message: dict) -> None:
        sock.send(json.dumps(message).encode())

    tell(dict(started=os.getpid()))
    while True:
        ready, _, _ = select.select([sock, *children], [], [])
        for handle in ready:
            if handle is not sock:
                pid = children.pop(handle)
                _, status = os.waitpid(pid, 0)
                os.close(handle)
                tell(dict(exited=pid, status=os.waitstatus_to_exitcode(status)))
                continue
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 8)
            if not data:
                return
            sys.stdout.flush()
            sys.stderr.flush()
            zygote_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                _forked_sandbox(json.loads(data), fds, zygote_pid)
            for fd in fds:
                os.close(fd)
            children[os.pidfd_open(pid)] = pid
            tell(dict(spawned=pid))


if __name__ == "__main__":
    main(sys.argv)
