"""A run: its folder, its single writer, resume bookkeeping, and the inputs every stage shares.

Contract
--------
* ``results/<run_id>/`` is written by exactly one driver at a time: :meth:`RunFolder.lock`
  creates ``driver.lock`` exclusively and refuses while another live driver holds it (a lock
  left by a dead process on this host is taken over).
* Each finished submission is written as one part file per table named after the submission
  (``<table>/<submission_id>.parquet``): samples, then splits, then the submission row last,
  so a submission counts as done only once all its rows are on disk. Re-writing a submission
  replaces its parts; nothing else is touched, so a killed driver loses at most what was in
  flight.
* A submission's *fingerprint* hashes its manifest, checkpoint, timing protocol and the hashes
  of the splits at its scale; :meth:`RunFolder.completed` returns the fingerprints already
  finished (status ``ok`` or ``error``, measured on the run's device kind and GPU model;
  ``timeout``, ``startup_timeout`` and ``crashed`` are retried on resume).
* Integrity: the folder keeps ``ledger.json`` (``esr_eval.records``, "Integrity"): every part file
  and ``run.json`` this writer puts there, with its sha256, size and time, rewritten atomically
  after each write from the copy held in memory (the authoritative one). A re-written submission's
  entries follow its parts (replaced, or dropped with a part that has no rows). ``run.json`` says
  ``"ledger": "ledger.json"``, so a deleted ledger reads as tampering, not as an old run.
  :meth:`RunFolder.completed` reads only recorded, unchanged parts, so a forged row never makes a
  resumed driver skip a submission. Reopening a run written before the ledger adopts its files
  (marked ``adopted``). :func:`recheck_splits` re-hashes the split files at the end of a run
  (``run.json`` ``splits_verified_at_end``); :meth:`RunFolder.closing_lines` is what the driver
  prints last, the ledger's digest among it.
* Every file is written through ``esr_eval.records`` (its one atomic writer; ``run.json``'s keys are
  ``records.RUN_JSON_KEYS``). Importing this module loads neither torch, Ray nor the input pipeline:
  which splits a run reads and their end-of-run re-check live in ``esr_eval.data``; what
  ``run.json`` says about the environment comes from ``esr_eval.provenance.run_metadata`` (torch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from esr_eval.hashing import file_sha256
from esr_eval.records import (
    LEDGER_NAME,
    RUN_JSON_NAME,
    RunIntegrity,
    file_entry,
    is_ledger_path,
    ledger_payload,
    read_parts,
    read_verified,
    table_files,
    verify_run,
    write_json,
    write_part,
)

if TYPE_CHECKING:
    from esr_eval.data import Split
    from esr_eval.manifest import Submission

__all__ = ["RunFolder", "RunIntegrity", "RunLockedError", "fingerprint", "new_run_id", "read_verified",
           "summary_frame", "verify_run"]

LOCK_NAME = "driver.lock"
RESUMABLE_STATUSES = ("ok", "error", "skipped")


class RunLockedError(RuntimeError):
    """Another driver is writing this run."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def fingerprint(sub: Submission, protocol_id: str, splits: list[Split]) -> str:
    """What must match for an earlier result to stand: manifest, checkpoint, the files the after_load
    calls read, protocol, and the data of the splits at the submission's scale (the only ones it is
    measured on)."""
    checkpoint = sub.checkpoint_path
    after_load_files = [(sub.root / call.path).resolve() for call in sub.after_load if call.path is not None]
    parts = [sub.manifest_sha256,
             file_sha256(checkpoint) if checkpoint is not None and checkpoint.is_file() else "no-checkpoint",
             *(file_sha256(path) if path.is_file() else f"missing:{path}" for path in after_load_files),
             protocol_id, *sorted(f"{s.name}:{s.sha256}" for s in splits if s.scale == sub.scale)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass
class RunFolder:
    path: Path
    created: bool = False
    _ledger: dict | None = field(default=None, init=False, repr=False, compare=False)
    _ledger_sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def create(cls, results_root: Path, run_id: str) -> "RunFolder":
        path = Path(results_root) / run_id
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, created)

    @classmethod
    def open(cls, results_root: Path, run_id: str) -> "RunFolder":
        """Create (or reopen, to resume) and lock a run folder; a refused lock leaves nothing new behind."""
        folder = cls.create(results_root, run_id)
        try:
            folder.lock()
        except RunLockedError:
            folder.close(discard_if_empty=True, locked=False)
            raise
        return folder

    def close(self, discard_if_empty: bool = False, locked: bool = True) -> None:
        """Release the lock; with ``discard_if_empty``, remove a folder this driver created and
        never wrote a row into (a run that failed to start leaves no empty folder)."""
        if locked:
            self.unlock()
        if discard_if_empty and self.created and not any(p.is_dir() for p in self.path.iterdir()):
            (self.path / RUN_JSON_NAME).unlink(missing_ok=True)
            (self.path / LEDGER_NAME).unlink(missing_ok=True)
            if not any(self.path.iterdir()):
                self.path.rmdir()

    @property
    def run_id(self) -> str:
        return self.path.name

    def lock(self) -> None:
        lock = self.path / LOCK_NAME
        me = {"hostname": socket.gethostname(), "pid": os.getpid(), "since_unix_s": time.time()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder(lock)
                if holder is not None:
                    raise RunLockedError(
                        f"run {self.run_id} is being written by another driver ({holder}); "
                        f"wait for it or remove {lock} if that driver is gone") from None
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            return
        raise RunLockedError(f"could not take {lock}")

    @staticmethod
    def _holder(lock: Path) -> str | None:
        """Description of a live lock holder, or None when the lock is stale."""
        try:
            holder = json.loads(lock.read_text())
        except (OSError, ValueError):
            return "an unreadable lock"
        if holder.get("hostname") != socket.gethostname():
            return f"pid {holder.get('pid')} on {holder.get('hostname')}"
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"pid {holder['pid']} on this host"

    def unlock(self) -> None:
        (self.path / LOCK_NAME).unlink(missing_ok=True)

    def write_run_json(self, payload: dict) -> None:
        files = self._files()
        files[RUN_JSON_NAME] = write_json(self.path / RUN_JSON_NAME, {**payload, "ledger": LEDGER_NAME})
        self._write_ledger()

    def write_result(self, result, fingerprint: str | None, attempts: int = 1) -> None:
        """Write one submission's rows; the submission row goes last (the commit point).

        The ledger is rewritten once, after all of the submission's parts are on disk; a table with no
        rows drops the submission's earlier part and its entry."""
        sid = result.submission.submission_id
        row = dataclasses.replace(result.submission, fingerprint=fingerprint, attempts=attempts)
        files = self._files()
        for table, rows in (("samples", result.samples), ("splits", result.splits), ("submissions", [row])):
            relpath = f"{table}/{sid}.parquet"
            written = write_part(self.path, table, list(rows), sid)
            if written is None:
                (self.path / relpath).unlink(missing_ok=True)
                if files.pop(relpath, None) is None:
                    continue
            else:
                files[relpath] = written[1]
        self._write_ledger()

    # --- the ledger (module doc, "Integrity") -------------------------------------------------

    def _files(self) -> dict:
        """The ledger's entries (relative path → sha256, size, written_at_unix_s), loaded once."""
        if self._ledger is None:
            self._ledger = self._load_ledger()
        return self._ledger

    def _load_ledger(self) -> dict:
        """Entries of the ledger on disk (a resumed run), else of a run written before ledgers
        (its files adopted, marked so), else none (a new run, or one whose ledger is gone: what is
        on disk then stays unrecorded, and readers report it)."""
        path = self.path / LEDGER_NAME
        if path.is_file():
            try:
                files = json.loads(path.read_text())["files"]
                if isinstance(files, dict):
                    self._ledger_sha256 = file_sha256(path)
                    return {k: v for k, v in files.items() if is_ledger_path(k) and isinstance(v, dict)}
            except (OSError, ValueError, KeyError, TypeError):
                pass
            return {}
        run_json = self.path / RUN_JSON_NAME
        try:
            declared = run_json.is_file() and json.loads(run_json.read_text()).get("ledger") == LEDGER_NAME
        except (OSError, ValueError, AttributeError):
            declared = True
        if declared:
            return {}
        adopted = {}
        for relpath in table_files(self.path) + ([RUN_JSON_NAME] if run_json.is_file() else []):
            if is_ledger_path(relpath):
                adopted[relpath] = {**file_entry((self.path / relpath).read_bytes()), "adopted": True}
        return adopted

    def _write_ledger(self) -> None:
        entry = write_json(self.path / LEDGER_NAME, ledger_payload(self.run_id, self._files()), indent=None)
        self._ledger_sha256 = entry["sha256"]

    def read_table(self, table: str):
        """One table from the parts this writer recorded and that still match (nothing else is read)."""
        return read_parts(self.path, table, self._files())

    @property
    def ledger_sha256(self) -> str | None:
        """sha256 of ``ledger.json`` as this writer last wrote it (None before its first write)."""
        return self._ledger_sha256

    def verify(self) -> RunIntegrity:
        """The folder checked against the ledger on disk, with a finding if that ledger is not the one
        this writer last wrote (its digest differs)."""
        integrity = verify_run(self.path)
        if self._ledger_sha256 is not None and integrity.ledger_sha256 != self._ledger_sha256:
            problem = (f"{LEDGER_NAME} on disk (sha256 {str(integrity.ledger_sha256)[:12]}…) is not the one the driver "
                       f"wrote (sha256 {self._ledger_sha256[:12]}…)")
            integrity = dataclasses.replace(integrity, ledger_problem=integrity.ledger_problem or problem)
        return integrity

    def closing_lines(self, split_check: dict | None = None) -> list[str]:
        """What the driver prints last: the split re-check, the folder's own check, and the ledger
        digest for the organiser to keep (``rank`` and ``report`` print the digest they verified)."""
        lines = []
        if split_check is not None:
            if split_check["changed"]:
                names = ", ".join(c["name"] for c in split_check["changed"])
                lines.append(f"WARNING: SPLIT CHANGED MID-RUN: the files of split(s) {names} are not those hashed "
                             "at the start; entries measured after the change were scored on other data "
                             "(recorded in run.json splits_verified_at_end)")
            else:
                lines.append("splits: every split file re-hashed at the end of the run, unchanged")
        integrity = self.verify()
        if integrity.tampered:
            lines.append(f"WARNING: {integrity.banner()}")
        lines.append(f"ledger: {self.path / LEDGER_NAME} sha256 {self._ledger_sha256} — keep this line; "
                     "`esr-eval rank` and `report` print the digest they verified against")
        return lines

    def completed(self, device_kind: str | None = None, gpu_models: set[str] | None = None) -> dict[str, str]:
        """submission_id → fingerprint of results that need not run again.

        With ``device_kind``, only rows measured on that kind of device count (a CPU-timed row never
        completes a GPU run); with ``gpu_models`` (Ray accelerator types such as ``A10G``), a GPU row
        counts only if its device name contains one of them.
        """
        table = self.read_table("submissions")
        done = table[table["status"].isin(RESUMABLE_STATUSES)]
        if device_kind is not None:
            done = done[done["device_kind"] == device_kind]
        known = {m.lower() for m in gpu_models or ()} - {"unknown"}
        if known:
            names = done["device_name"].fillna("").astype(str).str.lower()
            done = done[names.map(lambda name: any(model in name for model in known)).astype(bool)]
        return dict(zip(done["submission_id"], done["fingerprint"]))



def summary_frame(run_dir: Path):
    """One line per submission and split: status, PSNR, runtime, params, FLOPs, error (for printing);
    from the recorded part files only (``records.verify_run``)."""
    integrity = verify_run(run_dir, read=("submissions", "splits"))
    subs, splits = integrity.tables["submissions"], integrity.tables["splits"]
    merged = subs[["submission_id", "status", "params", "flops_fvcore", "error"]].merge(
        splits[["submission_id", "split", "psnr_db", "psnr_y_db", "runtime_ms", "runtime_p90_ms", "peak_mem_mb"]],
        on="submission_id", how="left")
    merged["error"] = merged["error"].fillna("").str.slice(0, 100)
    columns = ["submission_id", "status", "split", "psnr_db", "psnr_y_db", "runtime_ms", "runtime_p90_ms",
               "peak_mem_mb", "params", "flops_fvcore", "error"]
    return merged[columns].sort_values(["status", "submission_id"]).reset_index(drop=True)
