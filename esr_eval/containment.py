"""Containment of one submission's run (no root needed).

Contract
--------
The submission's code runs in its sandbox process (:mod:`esr_eval.sandbox_child`), which lowers
its own ``RLIMIT_DATA`` and restricts itself with Landlock before importing it; the evaluator
wraps the sandbox's whole life in :func:`contained(None) <contained>` for the subreaper and
records the sandbox's memory limit and signal isolation in the :class:`Containment`.
:func:`contained` is a context manager around everything a submission's code does:
* **Memory limit.** The soft ``RLIMIT_DATA`` of the process (its private writable memory: heap
  and anonymous maps, where tensors live, the evaluator's own decoded images included; address
  space merely reserved, as CUDA does, is not counted) is lowered to ``memory_limit_mb`` for the
  duration and restored after; an allocation past it fails inside the submission (an error row),
  not the node. ``None`` sets no limit.
* **Nothing it spawns outlives it.** The process becomes a child subreaper
  (``PR_SET_CHILD_SUBREAPER``) for the duration, so even double-forked daemons stay its
  descendants; on exit every descendant that did not exist on entry is killed (SIGKILL) and
  reaped (processes the host process already had, such as a local Ray instance, are left alone).
* The :class:`Containment` record says which protections were active, the limit, and what was
  killed, so every result row can state it. Signals: only Landlock's signal scope (Linux ≥ 6.12)
  keeps a process of the same user from signalling the evaluator's or Ray's processes; where it
  was not active the record says ``signals_isolated=False``.
Linux only for the subreaper; elsewhere that protection is reported as inactive.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
from dataclasses import dataclass, field
from typing import Iterator

import psutil

PR_SET_CHILD_SUBREAPER = 36
_MIB = 2 ** 20


@dataclass
class Containment:
    memory_limit_mb: int | None = None
    memory_limited: bool = False
    subreaper: bool = False
    signals_isolated: bool = False
    leftover_processes_killed: int = 0
    leftover_commands: list[str] = field(default_factory=list)

    def describe(self) -> str:
        active = [f"memory<={self.memory_limit_mb}MiB (RLIMIT_DATA)"] if self.memory_limited else []
        active += ["subreaper: spawned processes killed at the end"] if self.subreaper else []
        active += ["signals to outside processes refused"] if self.signals_isolated else \
            ["signals not isolated (same user)"]
        return "; ".join(active)


def _subreaper(on: bool) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _short(command: str, keep: int = 60) -> str:
    return command if len(command) <= 2 * keep else f"{command[:keep]}…{command[-keep:]}"


def _descendants() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def _kill_new_descendants(before: set[int], record: Containment) -> None:
    victims = [p for pid, p in _descendants().items() if pid not in before]
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            record.leftover_commands.append(_short(" ".join(proc.cmdline()) or proc.name()))
            proc.kill()
    psutil.wait_procs(victims, timeout=5)
    record.leftover_processes_killed += len(victims)


@contextlib.contextmanager
def contained(memory_limit_mb: int | None) -> Iterator[Containment]:
    """Run the body under the limits above; the yielded record is complete once the body exits."""
    record = Containment(memory_limit_mb=memory_limit_mb)
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if memory_limit_mb is not None:
        wanted = memory_limit_mb * _MIB
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (wanted, hard))
        record.memory_limited = True
    before = set(_descendants())
    record.subreaper = _subreaper(True)
    try:
        yield record
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        _kill_new_descendants(before, record)
        if record.subreaper:
            _subreaper(False)
