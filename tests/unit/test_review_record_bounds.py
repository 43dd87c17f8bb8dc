"""Review of ``[daemon] max_session_record`` and the daemon's output-cap backstop, on the real ingest thread over
real ZeroMQ sockets and a real SQLite file (as tests/unit/test_ingest_deferred.py).

1. An ``output`` event is sized by the backstop by its ``text`` alone, and the record bound does not count the
   output kinds at all: a runner writing ``output`` events with a huge extra field (or a huge ``stream``) stored
   any number of bytes.
2. A batch the store could not take is processed again from its frames: the record bound counted its events a
   second time (an honest session stopped early) and, when the first pass had crossed the bound, the note to the
   supervisor was lost with that batch (the session was never stopped, its later events silently dropped).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.ingest_rig import SID, Rig


@pytest.fixture()
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(getattr(request, "param", 1 << 20))
    yield r
    r.close()


# ---- 1. output events with extra fields ---------------------------------------------------------------------------
@pytest.mark.parametrize("rig", [1 << 20], indirect=True)
def test_output_events_with_extra_fields_are_bounded(rig: Rig) -> None:
    """A runner that ignores its cap sends 12 ``output`` events whose text is empty but which carry 500 KB in an
    extra field (which the schema allows), and 12 whose ``stream`` is 500 KB: under a 64 KiB output cap and a
    1 MiB record bound, the daemon must not store 12 MB of them (it counted the text only: 0 bytes each)."""
    rig.create({"output": 64 * 1024})
    pad = "x" * 500_000
    for _ in range(12):
        rig.send([("output", None, {"stream": "stdout", "text": "", "pad": pad}),
                  ("output", None, {"stream": pad, "text": "y"})])
    total = sum(r[2] for r in rig.stored())
    assert total < 4 * (1 << 20), f"{total:,} bytes stored under a 64 KiB output cap and a 1 MiB record bound"


@pytest.mark.parametrize("rig", [1 << 20], indirect=True)
def test_invalid_output_events_are_bounded(rig: Rig) -> None:
    """Invalid ``output`` events whose text is empty each became an ``event.rejected`` row (~76 bytes), sized 0 by
    the backstop and, being of an output kind, never dropped by the record bound even past it: 20,000 of them
    stored ~1.5 MB of rejections under a 1 MiB record bound (and any number could be sent)."""
    rig.create({"output": 1024})
    for _ in range(20):
        rig.send([("output", None, {"stream": 1, "text": ""})] * 1000)
    rejected = sum(r[2] for r in rig.stored() if r[1] == "event.rejected")
    assert rejected < (1 << 20) + 1000, f"{rejected:,} bytes of rejections stored past a 1 MiB record bound"
    assert [n[0] for n in rig.notes(wait=1.0)].count("record") == 1


def test_honest_output_is_still_counted_by_its_text(rig: Rig) -> None:
    """What an honest runner sends (``stdout``/``stderr`` and a text) is still sized by its text: 3,000 one-
    character outputs under a 4 KiB cap are all stored (the backstop allows cap + 1 MiB)."""
    rig.create({"output": 4096})
    for _ in range(3):
        rig.send([("output", None, {"stream": "stderr", "text": "z"})] * 1000)
    assert sum(1 for r in rig.stored() if r[1] == "output") == 3000


# ---- 2. a batch processed again ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rig", [10_000], indirect=True)
def test_a_batch_processed_again_is_not_counted_twice(rig: Rig) -> None:
    """7 KB of step names under a 10 KB bound, in a batch the store could not take at first: the session is
    under its bound and must not be stopped (the events were counted once per try: 14 KB)."""
    rig.create({})
    failed = rig.fail_next_commits(1)
    rig.send([("step.started", "n1", {"name": "a" * 7000})])
    assert failed == [1]
    assert [n for n in rig.notes(wait=1.0) if n[0] == "record"] == []
    assert any(r[1] == "step.started" for r in rig.stored())


@pytest.mark.parametrize("rig", [10_000], indirect=True)
def test_the_crossing_is_told_even_when_its_batch_is_processed_again(rig: Rig) -> None:
    """The event that crosses the bound arrives in a batch the store could not take at first: the supervisor must
    still be told (else the session is never stopped, and all its later steps are silently dropped)."""
    rig.create({})
    failed = rig.fail_next_commits(1)
    rig.send([("step.started", "n1", {"name": "a" * 12_000})])
    assert failed == [1]
    notes = [n for n in rig.notes(wait=3.0) if n[0] == "record"]
    assert len(notes) == 1 and notes[0][1] == SID, notes


def test_honest_output_in_a_batch_tried_again_is_not_dropped_by_the_backstop(rig: Rig) -> None:
    """900 KB of honest output (under its 1 MiB cap) in a batch the store could not take three times (a disk full
    or a lock held for a few seconds): the backstop counted it once per try (3.6 MB > cap + 1 MiB) and dropped
    output the runner had rightly sent, recording a daemon ``output.truncated``."""
    rig.create({"output": 1 << 20})
    failed = rig.fail_next_commits(3)
    rig.send([("output", None, {"stream": "stdout", "text": "o" * 100_000})] * 9)
    assert failed == [1, 1, 1]
    kinds = [r[1] for r in rig.stored()]
    assert kinds.count("output") == 9 and "output.truncated" not in kinds, kinds


@pytest.mark.parametrize("rig", [10_000], indirect=True)
def test_the_crossing_is_told_even_when_the_store_refuses_the_crossing_event(rig: Rig) -> None:
    """The event that crosses the bound is one the store refuses (a second ``step.started`` of the same node: a
    primary-key violation), so the batch is written event by event: the note made while staging the refused event
    went with it, and the session, past its bound, was never stopped (its later steps silently dropped)."""
    rig.create({})
    rig.send([("step.started", "n1", {"name": "first"}), ("step.started", "n1", {"name": "a" * 12_000})])
    assert any(r[1] == "event.rejected" for r in rig.stored())
    notes = [n for n in rig.notes(wait=2.0) if n[0] == "record"]
    assert len(notes) == 1 and notes[0][1] == SID, notes
