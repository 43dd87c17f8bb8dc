"""The record bound (``[daemon] max_session_record``) and the output cap's backstop count what a session's current
run recorded; those counts are kept with the session (``sessions.record_bytes``, ``sessions.output_chars``), so a
daemon restart goes on from them. Before, they lived in ingest's memory only: a session that writes to its
channel itself could record its whole bound again after every restart of the daemon. A resumed session is a new
run and counts from nothing. Real ingest thread, real ZeroMQ sockets, a real SQLite file (tests/support/ingest_rig.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import wait_until
from tests.support.ingest_rig import SID, Rig


@pytest.fixture()
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(getattr(request, "param", 1 << 20))
    yield r
    r.close()


def _record_notes(rig: Rig, wait: float) -> list[object]:
    return [n for n in rig.notes(wait=wait) if n[0] == "record"]


@pytest.mark.parametrize("rig", [10_000], indirect=True)
def test_the_record_bound_goes_on_counting_after_a_restart(rig: Rig) -> None:
    """7 KB of step names, a daemon restart, 7 KB more under a 10 KB bound: the second half crosses the bound, so
    the supervisor is told once (before, the restarted count began at 0 and the session was never stopped)."""
    rig.create({})
    rig.send([("step.started", "n1", {"name": "a" * 7000})])
    assert _record_notes(rig, 0.5) == []
    rig.restart()
    rig.send([("step.started", "n2", {"name": "b" * 7000})])
    notes = _record_notes(rig, 3.0)
    assert len(notes) == 1 and notes[0][1] == SID, notes
    used, bound = notes[0][2], notes[0][3]
    assert bound == 10_000 and used > 14_000, notes  # both halves counted


def test_the_output_backstop_goes_on_counting_after_a_restart(rig: Rig) -> None:
    """A runner that ignores its 4 KiB output cap sends 900 KB of output, the daemon restarts, and it sends 900 KB
    more: together they are past the backstop (cap + 1 MiB), so the daemon drops the rest and records its own
    ``output.truncated`` (before, the restart allowed another 1 MiB, any number of times)."""
    rig.create({"output": 4096})
    rig.send([("output", None, {"stream": "stdout", "text": "o" * 100_000})] * 9)
    assert "output.truncated" not in [r[1] for r in rig.stored()]
    rig.restart()
    rig.send([("output", None, {"stream": "stdout", "text": "p" * 100_000})] * 9)
    kinds = [r[1] for r in rig.stored()]
    assert "output.truncated" in kinds, kinds
    assert kinds.count("output") < 18, kinds.count("output")


@pytest.mark.parametrize("rig", [10_000], indirect=True)
def test_a_resumed_session_counts_from_nothing(rig: Rig) -> None:
    """A run records 7 KB of its 10 KB bound and fails; the daemon restarts; the session is resumed (a new run)
    and records 7 KB again: under the bound for this run, so nothing is told and its steps are stored."""
    rig.create({})
    rig.send([("step.started", "n1", {"name": "a" * 7000})])
    rig.end({"ended_by": "runner", "exit_code": 1})
    wait_until(lambda: any(r[1] == "session.ended" for r in rig.stored()), timeout=10, what="session.ended")
    rig.restart()
    rig.continue_run()
    rig.send([("step.started", "n2", {"name": "b" * 7000})])
    assert _record_notes(rig, 1.0) == []
    assert [r[1] for r in rig.stored()].count("step.started") == 2
