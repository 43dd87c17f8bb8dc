"""The daemon's memory ceiling (daemon/inbound.py): when a reset of its inbound sockets is due."""

from __future__ import annotations

from labd.daemon.inbound import Ceiling, resident_bytes


def test_a_reset_is_due_over_the_limit_once_per_cooldown_and_never_without_a_limit() -> None:
    """Over the limit a reset is due, then not again within the cooldown even while still over it (a ceiling below
    what the daemon legitimately uses must not reset every tick), then due again; memory is read at most every
    ``every`` seconds; no limit or an unreadable figure never resets."""
    rss = [100]
    c = Ceiling(1000, every=0.5, cooldown=30.0, read=lambda: rss[0])
    assert not c.due(0.0)
    rss[0] = 2000
    assert not c.due(0.2)  # read at most every 0.5 s
    assert c.due(0.6) and c.resets == 1 and c.last_rss == 2000
    assert not c.due(10.0) and not c.due(30.5)  # cooldown
    assert c.due(31.0) and c.resets == 2
    rss[0] = 500
    assert not c.due(62.0)
    assert not Ceiling(None, read=lambda: 10**12).due(1.0)
    assert not Ceiling(1000, read=lambda: None).due(1.0)


def test_resident_bytes_reads_this_process() -> None:
    """The figure is this process's RSS: a few MiB at least, and it grows by what is touched."""
    before = resident_bytes()
    assert before is not None and before > 4 << 20
    block = b"\1" * (64 << 20)  # written: every page touched
    after = resident_bytes()
    assert after is not None and after > before + (48 << 20)
    del block
