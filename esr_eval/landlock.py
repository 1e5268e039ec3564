"""Self-restriction of a process with Linux Landlock (ctypes and the standard library only).

A sandbox child calls :func:`restrict_self` *before* it imports a submission's code; the
restriction is irreversible and inherited by everything the process spawns afterwards.

Contract
--------
What an active :class:`Restriction` enforces (each only where the kernel's Landlock ABI has it;
the returned record says which are active, "best effort" as the kernel documentation
recommends):

* **Filesystem** (ABI >= 1). Files and directory listings can be read, and files executed
  or mapped executable, only beneath ``read_paths``; anything that writes to the file
  hierarchy (opening for writing, creating, removing or renaming files, directories, FIFOs,
  sockets, device nodes and symlinks, linking across directories, truncating) is allowed
  only beneath ``write_paths``. ``device_paths`` (``/dev/null``, GPU device nodes) may be
  opened for reading and writing and, from ABI 5, receive ioctls; ioctls on every other
  device node are refused. The check is made on the resolved object, so symlinks and
  ``/proc/self/root/...`` or ``/proc/<pid>/cwd/...`` paths do not lead out of the allowed
  trees. Mounting is refused to any restricted process, root included.
* **Network** (ABI >= 4). Every TCP ``bind`` and ``connect`` is refused (no port is allowed).
* **Signals** (ABI >= 6). Signals to processes outside the restricted process and its
  descendants are refused (``EPERM``); its own children can still be signalled.
* **Abstract unix sockets** (ABI >= 6). Connecting to abstract unix sockets created outside
  the sandbox is refused.
* Landlock itself also refuses ``ptrace`` (and so ``/proc/<pid>/mem``, ``environ``, ``fd/``,
  ``process_vm_readv``) of processes outside the sandbox.

What it does **not** cover:

* File descriptors the process already holds (inherited pipes, open files) keep working:
  close what the untrusted code must not use before restricting.
* UDP, raw and other non-TCP sockets; connecting to *pathname* unix sockets (for example a
  Ray raylet socket under ``/tmp/ray``) is not a filesystem access Landlock checks (ABI <= 7).
* Metadata: ``stat``, ``readlink``, ``chmod``, ``chown``, ``utime``, extended attributes and
  path lookup itself are not restricted, so file *names and sizes* outside the allowed
  trees can still be probed by exact path, and a root process can still ``chmod``/``chown``.
* Everything under the allowed read paths is readable: with the default paths that includes
  ``/proc`` (the process's own entries and world-readable ones like other processes'
  ``cmdline``), ``/sys`` and ``/etc``.
* Landlock is not a system-call filter and does not drop capabilities: a root process keeps
  its capabilities for anything that is not a filesystem, TCP, signal or ptrace operation.

Callers should point ``TMPDIR`` (or ``tempfile.tempdir``) at one of the write paths before
restricting: some libraries look for a usable temporary directory at import time (fvcore's
``iopath`` imports ``portalocker``, which calls ``tempfile.gettempdir()``) and fail with
"No usable temporary directory" when ``/tmp`` is not writable.

Where the kernel has no Landlock (not Linux, not x86_64/aarch64, disabled at boot)
:func:`restrict_self` changes nothing and returns a record with every protection ``False``.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import site
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# System call numbers: the same in the generic table (aarch64) and on x86_64.
_SYSCALLS = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}
_SUPPORTED_MACHINES = {"x86_64", "amd64", "aarch64", "arm64"}

PR_SET_NO_NEW_PRIVS = 38

# include/uapi/linux/landlock.h
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13       # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14    # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15   # ABI 5

ACCESS_NET_BIND_TCP = 1 << 0    # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1                # ABI 6

_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
# Rights that make sense on a regular file (or device node) rather than a directory.
_FILE_RIGHTS = (ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE
                | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV)
_READ_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
_WRITE_RIGHTS = (_READ_RIGHTS | ACCESS_FS_WRITE_FILE | ACCESS_FS_REMOVE_DIR | ACCESS_FS_REMOVE_FILE
                 | ACCESS_FS_MAKE_CHAR | ACCESS_FS_MAKE_DIR | ACCESS_FS_MAKE_REG | ACCESS_FS_MAKE_SOCK
                 | ACCESS_FS_MAKE_FIFO | ACCESS_FS_MAKE_BLOCK | ACCESS_FS_MAKE_SYM | ACCESS_FS_REFER
                 | ACCESS_FS_TRUNCATE)
_DEVICE_RIGHTS = (ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE
                  | ACCESS_FS_IOCTL_DEV | ACCESS_FS_READ_DIR)

_SYSTEM_READ_DIRS = ("/usr", "/lib", "/lib64", "/etc", "/bin", "/sbin", "/proc", "/sys", "/opt")
_DEVICE_FILES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True)
class Restriction:
    """Which Landlock protections became active for the calling process."""

    abi: int
    filesystem: bool
    network: bool
    signals: bool
    abstract_unix: bool

    def describe(self) -> str:
        active = [name for name, on in (("filesystem", self.filesystem), ("network", self.network),
                                         ("signals", self.signals),
                                         ("abstract unix sockets", self.abstract_unix)) if on]
        if self.abi <= 0 or not active:
            return "landlock unavailable"
        return f"landlock v{self.abi}: " + ", ".join(active)


_libc = None


def _syscall(*args: int) -> int:
    """``syscall(2)`` with every argument passed as a C long; raises OSError on -1."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    result = _libc.syscall(*(ctypes.c_long(a) for a in args))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _supported_platform() -> bool:
    return (sys.platform.startswith("linux") and platform.machine().lower() in _SUPPORTED_MACHINES
            and ctypes.sizeof(ctypes.c_void_p) == 8)


def abi_version() -> int:
    """Landlock ABI of the running kernel, 0 when unavailable (not Linux, disabled, unknown arch)."""
    if not _supported_platform():
        return 0
    try:
        return max(0, _syscall(_SYSCALLS["create_ruleset"], 0, 0, LANDLOCK_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0  # ENOSYS (too old), EOPNOTSUPP (disabled at boot), no syscall() in libc


def _handled(abi: int) -> tuple[int, int, int, int]:
    """(handled_access_fs, handled_access_net, scoped, size of the ruleset attr) for an ABI."""
    fs = _FS_ABI1
    if abi >= 2:
        fs |= ACCESS_FS_REFER
    if abi >= 3:
        fs |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        fs |= ACCESS_FS_IOCTL_DEV
    net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    return fs, net, scoped, size


def _add_path_rule(ruleset_fd: int, path: str | Path, rights: int, handled_fs: int) -> None:
    try:
        fd = os.open(os.fspath(path), os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        allowed = rights & handled_fs
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            allowed &= _FILE_RIGHTS
        if not allowed:
            return
        attr = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
        _syscall(_SYSCALLS["add_rule"], ruleset_fd, LANDLOCK_RULE_PATH_BENEATH,
                 ctypes.addressof(attr), 0)
    finally:
        os.close(fd)


def restrict_self(read_paths: Iterable[str | Path], write_paths: Iterable[str | Path] = (),
                  device_paths: Iterable[str | Path] = ()) -> Restriction:
    """Irreversibly restrict the calling process and everything it later spawns.

    It may read (files and directory listings, execute) only beneath ``read_paths``; read
    and write (create, remove, truncate, make directories...) only beneath ``write_paths``;
    ``device_paths`` are files (``/dev/null``, ``/dev/nvidia0``) that may be opened for
    reading and writing and receive ioctls. Nonexistent paths are skipped. Returns what
    became active; without Landlock returns an all-``False`` record without raising. Raises
    OSError only if the kernel has Landlock but a step fails unexpectedly.
    """
    abi = abi_version()
    if abi <= 0:
        return Restriction(abi=0, filesystem=False, network=False, signals=False, abstract_unix=False)
    handled_fs, handled_net, scoped, size = _handled(abi)

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")

    attr = _RulesetAttr(handled_access_fs=handled_fs, handled_access_net=handled_net, scoped=scoped)
    ruleset_fd = _syscall(_SYSCALLS["create_ruleset"], ctypes.addressof(attr), size, 0)
    try:
        for paths, rights in ((read_paths, _READ_RIGHTS), (write_paths, _WRITE_RIGHTS),
                              (device_paths, _DEVICE_RIGHTS)):
            for path in paths:
                _add_path_rule(ruleset_fd, path, rights, handled_fs)
        _syscall(_SYSCALLS["restrict_self"], ruleset_fd, 0)
    finally:
        os.close(ruleset_fd)
    return Restriction(abi=abi, filesystem=True, network=bool(handled_net),
                       signals=bool(scoped & SCOPE_SIGNAL),
                       abstract_unix=bool(scoped & SCOPE_ABSTRACT_UNIX_SOCKET))


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _dedupe(paths: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for path in paths:
        seen.setdefault(path, None)
    return list(seen)


def default_read_paths() -> list[str]:
    """What a Python process importing torch, numpy and fvcore needs to read.

    The interpreter's prefixes, its site-packages directories, every existing directory on
    ``sys.path`` that lies inside one of those (never other ``sys.path`` entries such as the
    working directory or a project root, which may hold results or data), the ``esr_eval``
    package directory itself (not its parent), the system directories ``/usr``, ``/lib``,
    ``/lib64``, ``/etc``, ``/bin``, ``/sbin``, ``/proc``, ``/sys``, ``/opt`` and
    ``/usr/local/cuda*``, each only when it exists. ``/tmp`` and ``/home`` are not included.
    """
    prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix,
                getattr(sys, "base_exec_prefix", sys.exec_prefix)]
    site_dirs: list[str] = []
    try:
        site_dirs += site.getsitepackages()
    except AttributeError:  # some virtualenv builds lack it
        pass
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site and site.ENABLE_USER_SITE:
        site_dirs.append(user_site)
    roots = [Path(p) for p in prefixes + site_dirs]
    roots += [root.resolve() for root in roots]
    on_path: list[str] = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        absolute = Path(os.path.abspath(entry))
        if _inside(absolute, roots) or _inside(absolute.resolve(), roots):
            on_path.append(str(absolute))
    package_dir = str(Path(__file__).resolve().parent)
    system = [d for d in _SYSTEM_READ_DIRS if os.path.isdir(d)]
    system += sorted(glob.glob("/usr/local/cuda*"))
    candidates = prefixes + site_dirs + on_path + [package_dir] + system
    # A prefix of "/" (an interpreter installed straight into the root) would allow everything.
    return _dedupe(str(p) for p in candidates if os.path.exists(p) and Path(p).resolve() != Path("/"))


def default_device_paths() -> list[str]:
    """``/dev/null``, ``/dev/zero``, ``/dev/urandom``, ``/dev/random`` and every existing
    ``/dev/nvidia*`` and ``/dev/dri/*`` (no terminal)."""
    devices = [d for d in _DEVICE_FILES if os.path.exists(d)]
    devices += sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri/*"))
    return _dedupe(devices)
