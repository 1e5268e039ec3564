"""Attributing repeated node losses: the submission alone in common to two losses is their cause;
its neighbours are not charged for them."""

from __future__ import annotations

from esr_eval.attribution import NodeLosses


def test_one_loss_attributes_nothing():
    losses = NodeLosses()
    losses.record("n1", "bad", {"bad", "a", "b"})
    assert not losses.culprit("bad") and losses.charged("bad") == 1


def test_the_submission_present_at_both_losses_is_the_culprit_and_neighbours_are_not_charged():
    losses = NodeLosses()
    for sid in ("a", "bad", "b"):  # node n1 (3 GPUs) dies with all three on it
        losses.record("n1", sid, {"a", "bad", "b"})
    for sid in ("bad", "c"):  # "bad" is retried on n2 beside "c"; n2 dies too
        losses.record("n2", sid, {"bad", "c"})
    assert losses.culprit("bad")
    assert not any(losses.culprit(sid) for sid in ("a", "b", "c"))
    assert losses.charged("bad") == 2
    assert losses.charged("a") == losses.charged("c") == 0  # every loss they saw had the culprit on board
    assert "only submission running on both lost nodes" in losses.describe("bad")


def test_two_submissions_lost_together_twice_are_not_told_apart():
    losses = NodeLosses()
    for node in ("n1", "n2"):
        for sid in ("x", "y"):
            losses.record(node, sid, {"x", "y"})
    assert not losses.culprit("x") and not losses.culprit("y")
    assert losses.charged("x") == losses.charged("y") == 2  # ordinary node losses: retried up to max_attempts


def test_a_submission_alone_on_its_node_twice_is_the_culprit():
    losses = NodeLosses()
    losses.record("n1", "solo", set())
    losses.record("n2", "solo", set())
    assert losses.culprit("solo")


def test_the_set_of_a_node_is_taken_once_however_late_its_jobs_are_seen():
    losses = NodeLosses()
    losses.record("n1", "a", {"a", "b"})
    losses.record("n1", "b", {"b"})  # "a" was already dropped when "b" was judged
    assert losses.events["n1"] == {"a", "b"}
