"""Which key ingest verifies a resumed run's runner with, also after a restart: the run's own (the seq of the
``session.continued`` that began it), or, for a runner a labd before per-run keys launched, the session's first.
Real ingest thread, real ZeroMQ sockets, a real SQLite file (tests/support/ingest_rig.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labd.ipc.signing import derive_key
from labd.ipc.wire import Codec
from tests.conftest import wait_until
from tests.support.ingest_rig import KEY, SID, Rig


@pytest.fixture()
def rig() -> Iterator[Rig]:
    r = Rig(None)
    yield r
    r.close()


def _resumed_and_launched(rig: Rig, **launched: object) -> int:
    """The session's first run ends; it is resumed and its new runner launched; the daemon restarts. The run."""
    rig.create({})
    rig.send([("output", None, {"stream": "stdout", "text": "first run\n"})])
    rig.end({"ended_by": "runner", "exit_code": 1})
    wait_until(lambda: any(r[1] == "session.ended" for r in rig.stored()), timeout=10, what="session.ended")
    rig.continue_run()
    rig.daemon_side.send_pyobj(("event", SID, "session.launched",
                                {"pid": 4242, "create_time": 1.0, "launcher": "template", **launched}, None, None))
    wait_until(lambda: any(r[1] == "session.launched" for r in rig.stored()), timeout=10, what="session.launched")
    run = next(r[0] for r in rig.stored() if r[1] == "session.continued")
    rig.restart()
    return run


def _dropped(rig: Rig, codec: Codec) -> None:
    """A frame signed with ``codec`` is dropped as bad_signature and stores nothing."""
    before, rows = rig.ing.counters.get("dropped.runner.bad_signature", 0), len(rig.stored())
    rig.seq += 1
    rig.runner.send_multipart(codec.pack("events", {"session": SID, "events": [
        [rig.seq, 1.0, "output", None, None, {"stream": "stdout", "text": "not this\n"}]]}))
    wait_until(lambda: rig.ing.counters.get("dropped.runner.bad_signature", 0) == before + 1, timeout=10,
               what="the frame dropped")
    rig.seq -= 1
    assert len(rig.stored()) == rows


def test_a_restarted_daemon_verifies_a_resumed_run_with_its_own_key(rig: Rig) -> None:
    """After a restart (ingest's memory gone), the resumed run's runner, launched with its run's key, is heard:
    its frames are stored; a frame signed with the first run's key is dropped."""
    run = _resumed_and_launched(rig, run_key=True)
    _dropped(rig, Codec(derive_key(KEY, SID)))
    rig.codec = Codec(derive_key(KEY, SID, run))
    rig.send([("output", None, {"stream": "stdout", "text": "second run\n"})])
    assert [r[1] for r in rig.stored()][-1] == "output"


def test_a_runner_launched_before_per_run_keys_is_still_heard_after_an_upgrade(rig: Rig) -> None:
    """A resumed run whose runner a labd before 2026-12-06 launched (its ``session.launched`` has no ``run_key``)
    signs with the session's first key; the upgraded daemon verifies it with that key (it dropped every frame of
    such a runner, which then could not be stopped either)."""
    run = _resumed_and_launched(rig)
    _dropped(rig, Codec(derive_key(KEY, SID, run)))
    rig.codec = Codec(derive_key(KEY, SID))
    rig.send([("output", None, {"stream": "stdout", "text": "second run\n"})])
    assert [r[1] for r in rig.stored()][-1] == "output"
