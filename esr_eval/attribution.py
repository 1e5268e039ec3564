"""Which submission a repeated node loss belongs to (pure; no Ray).

Contract
--------
:class:`NodeLosses` keeps, per submission, the lost nodes it was running on and who else ran
there at the time (the set of submissions on the node when its loss was first seen).
* :meth:`NodeLosses.record` adds one loss for one submission (the set is taken once per node, so
  every submission of that node sees the same set).
* :meth:`NodeLosses.culprit` is true when the submission's last two losses share no other
  submission: it was the only one present both times a node died under it, so the loss is
  attributed to it (a model that takes its node down, e.g. by exhausting the host) rather than
  to whoever ran beside it or was scheduled next.
* :meth:`NodeLosses.charged` counts the losses that count against a submission's attempts:
  losses of a node on which an attributed culprit ran are not charged to the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeLosses:
    events: dict[str, frozenset[str]] = field(default_factory=dict)  # node id → submissions on it when lost
    history: dict[str, list[str]] = field(default_factory=dict)  # submission id → lost node ids, in order
    culprits: set[str] = field(default_factory=set)

    def record(self, node_id: str, submission_id: str, running_on_node: set[str] | frozenset[str]) -> None:
        present = self.events.setdefault(node_id, frozenset(running_on_node) | {submission_id})
        if submission_id not in present:  # seen late on a node already recorded: it was there too
            self.events[node_id] = present | {submission_id}
        self.history.setdefault(submission_id, []).append(node_id)

    def culprit(self, submission_id: str) -> bool:
        """The submission was alone in common to its last two node losses (then it is remembered)."""
        lost = self.history.get(submission_id, [])
        if len(lost) < 2:
            return False
        if self.events[lost[-2]] & self.events[lost[-1]] == {submission_id}:
            self.culprits.add(submission_id)
        return submission_id in self.culprits

    def charged(self, submission_id: str) -> int:
        """Losses that count against this submission: those with no attributed culprit beside it."""
        return sum(1 for node in self.history.get(submission_id, [])
                   if not (self.events[node] & self.culprits - {submission_id}))

    def describe(self, submission_id: str) -> str:
        lost = self.history.get(submission_id, [])
        return (f"its node was lost in each of its last {min(len(lost), 2)} attempts ({', '.join(n[:12] for n in lost)}) "
                "and it was the only submission running on both lost nodes, so the losses are attributed to it")
