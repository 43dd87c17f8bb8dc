"""Ack pacing (daemon/acks.py): which acks leave at once, which wait for the interval, and bounded memory."""

from __future__ import annotations

from labd.daemon.acks import PRUNE_AT, AckPacer


def test_the_first_ack_leaves_at_once_and_later_ones_within_the_interval_are_owed_once() -> None:
    """A session's first ack (or its first after a quiet interval) is sent at once; frames within the interval
    after it share one owed ack, due when the interval since the last ack has passed, and only once."""
    p = AckPacer(interval=0.25)
    assert p.now_or_later("s", 10.0, prompt=False)
    assert not p.now_or_later("s", 10.05, prompt=False)
    assert not p.now_or_later("s", 10.10, prompt=False)
    assert p.owed(10.20) == []
    assert p.owed(10.25) == ["s"]
    assert p.owed(10.30) == []  # sent: not owed twice
    assert p.now_or_later("s", 10.60, prompt=False)  # a quiet interval since: at once again


def test_a_prompt_ack_leaves_at_once_and_settles_what_was_owed() -> None:
    """An ack the runner asked for (closing, a full backlog), a hello's or a resend request's is sent at once even
    within the interval, and it covers the owed one (which is then not sent again)."""
    p = AckPacer(interval=0.25)
    assert p.now_or_later("s", 1.0, prompt=False)
    assert not p.now_or_later("s", 1.1, prompt=False)
    assert p.now_or_later("s", 1.2, prompt=True)
    assert p.owed(5.0) == []


def test_the_loop_waits_no_longer_than_the_next_owed_ack() -> None:
    """The ingest loop's poll timeout is its usual one with nothing owed, else the time to the earliest owed ack
    (rounded up, never negative), so an owed ack is not late by a whole idle poll."""
    p = AckPacer(interval=0.25)
    assert p.timeout_ms(0.0, 200) == 200
    p.now_or_later("a", 0.0, prompt=False)
    p.now_or_later("a", 0.1, prompt=False)  # owed at 0.25
    assert 150 <= p.timeout_ms(0.1, 200) <= 151
    assert p.timeout_ms(0.3, 200) == 0
    assert p.timeout_ms(0.1, 20) == 20


def test_sessions_are_paced_independently_and_forgotten_when_they_end() -> None:
    """One session's ack does not delay another's; an ended session leaves no state and owes nothing."""
    p = AckPacer(interval=0.25)
    assert p.now_or_later("a", 0.0, prompt=False)
    assert p.now_or_later("b", 0.01, prompt=False)
    assert not p.now_or_later("a", 0.02, prompt=False)
    p.forget("a")
    assert p.owed(1.0) == []
    assert p.now_or_later("a", 1.0, prompt=False)


def test_memory_stays_bounded_however_many_sessions_come_and_go() -> None:
    """Sessions whose end ingest never sees (a runner gone without one) do not grow the pacer for ever: entries
    older than the interval, which mean the same as none, are dropped."""
    p = AckPacer(interval=0.25)
    now = 0.0
    for i in range(100_000):
        now += 0.001
        p.now_or_later(f"s{i}", now, prompt=False)
    assert len(p._acked_at) <= 2 * PRUNE_AT  # noqa: SLF001 - the bound is the point
