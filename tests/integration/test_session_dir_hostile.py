"""A session's directory (``<home>/sessions/<id>``: its spool, checkpoint objects, seed) is writable by its runner,
i.e. by the workflow's own code, which is trusted with its own session only. What the daemon reads or writes
there (a spool, a resume's seed) must neither hang it nor reach outside the session."""

from __future__ import annotations


def test_a_fifo_in_place_of_a_spool_does_not_stop_the_record(shared_daemon) -> None:
    """A workflow puts a FIFO in place of its runner's spool and its runner dies (SIGKILL: nothing removes the
    spool). The session ends ``failed`` and other sessions start and complete. Before, the daemon's ingest thread
    opened the FIFO (the spool of an ended runner) and blocked for good: that session never ended, no other
    session could start (every `labd run` timed out), nothing more was recorded, and `labd shutdown` hung."""
    with shared_daemon.client(timeout=30) as c:
        sid = c.start("labd_testflows:fifo_spool")
        final = c.wait(sid, timeout=60)
        assert final["status"] == "failed", final
        other = c.start("demo.count", params={"n": 3, "delay": 0})
        assert c.wait(other, timeout=60)["status"] == "completed"
        assert c.status()["counters"].get("spool_unreadable", 0) >= 1
