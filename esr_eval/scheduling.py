"""Order and bounds for scheduling submissions on identical devices (pure; no Ray, no torch).

Contract
--------
* :func:`expected_seconds` reads earlier runs under a results root and returns, per submission,
  the most recent successful ``wall_s``.
* :func:`lpt_order` sorts submissions longest-expected-first: unknown durations first (they
  may be long), then known ones by descending duration; ties by id, so the order is stable.
* :func:`lpt_makespan` is the makespan of the LPT list schedule of given durations on ``slots``
  identical machines — the "ideal" a scheduler is compared against.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TypeVar

T = TypeVar("T")


def expected_seconds(results_root: Path, exclude_run: str | None = None) -> dict[str, float]:
    """submission_id → wall seconds of its latest successful evaluation in earlier runs."""
    import pandas as pd

    frames = []
    for table in sorted(Path(results_root).glob("*/submissions")):
        if table.parent.name == exclude_run:
            continue
        try:
            frame = pd.read_parquet(table, columns=["submission_id", "status", "wall_s", "started_at_unix_s"])
        except (OSError, ValueError, KeyError):
            continue
        frames.append(frame[frame["status"] == "ok"])
    if not frames:
        return {}
    latest = pd.concat(frames).dropna(subset=["wall_s"]).sort_values("started_at_unix_s")
    return {sid: float(wall) for sid, wall in zip(latest["submission_id"], latest["wall_s"])}


def lpt_order(items: Iterable[T], key: callable, expected: Mapping[str, float]) -> list[T]:
    """Longest-expected-first; ``key(item)`` gives the submission id."""
    def rank(item):
        seconds = expected.get(key(item))
        return (0, 0.0, key(item)) if seconds is None else (1, -seconds, key(item))
    return sorted(items, key=rank)


def lpt_makespan(durations: Sequence[float], slots: int) -> float:
    """Makespan of the LPT list schedule (each job to the least-loaded machine, longest first)."""
    if slots < 1:
        raise ValueError("need at least one slot")
    loads = [0.0] * slots
    heapq.heapify(loads)
    for duration in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + duration)
    return max(loads) if durations else 0.0


def lower_bound(durations: Sequence[float], slots: int) -> float:
    """max(longest job, total / slots): no schedule can beat it."""
    return max(max(durations, default=0.0), math.fsum(durations) / slots)
