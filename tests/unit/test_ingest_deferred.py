"""A runner's first frame may overtake its ``session.created`` inside one ingest pass (the daemon queued the
event before the launch, but the pass had already taken the daemon's items when the runner's frame came in).
Such a frame waits for one more pass instead of being dropped (its runner would only resend it after its
resend timeout); a frame whose session never appears is still dropped, once, and counted once.

These tests drive the real :class:`~labd.daemon.ingest.Ingest` thread over real ZeroMQ sockets and a real
SQLite file; the race is made deterministic by queueing ``session.created`` exactly while the pass handles
the runner's frame."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from labd.daemon.ingest import INGEST_IN, INGEST_NOTIFY, Ingest
from labd.ipc.signing import derive_key
from labd.ipc.wire import Codec, encode_json
from labd.store.db import migrate, open_engine
from labd.store.writer import BatchWriter
from tests.conftest import wait_until

KEY = b"k" * 32


@pytest.fixture()
def ingest() -> Iterator[tuple[Ingest, zmq.Context, Path]]:
    """A running ingest thread on a fresh SQLite store, with its own ZeroMQ context."""
    tmp = Path(tempfile.mkdtemp(prefix="labd-deferred-"))
    engine = open_engine(f"sqlite:///{tmp}/s.db")
    migrate(engine)
    z = zmq.Context()
    notify = z.socket(zmq.PULL)
    notify.bind(INGEST_NOTIFY)
    ing = Ingest(z, BatchWriter(engine), KEY, "inproc://runners", "inproc://events", {}, {}, 16 << 20, tmp)
    ing.start()
    assert ing.ready.wait(10)
    yield ing, z, tmp
    stop = z.socket(zmq.PUSH)
    stop.connect(INGEST_IN)
    stop.send_pyobj(("stop",))
    ing.join(10)
    stop.close(0)
    notify.close(0)
    z.term()


def _created(sid: str, tmp: Path) -> tuple[Any, ...]:
    return ("event", sid, "session.created",
            {"workflow": "demo.events", "name": sid, "params": {}, "limits": {}, "workdir": str(tmp)}, None, None)


def _runner(z: zmq.Context, sid: str) -> tuple[zmq.Socket, Codec]:
    s = z.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, f"{sid}:test".encode())
    s.connect("inproc://runners")
    return s, Codec(derive_key(KEY, sid))


def _stored(ing: Ingest, sid: str) -> list[tuple[Any, ...]]:
    """(seq, kind, src_seq) of the session's stored events, read on a connection of this thread."""
    with ing.writer.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT seq, kind, src_seq FROM events WHERE session_id = ? ORDER BY seq", (sid,)).fetchall()
    return [tuple(r) for r in rows]


def _created_with_spool(ing: Ingest, z: zmq.Context, tmp: Path, sid: str) -> tuple[zmq.Socket, Path]:
    """Session ``sid`` created (stored) through the daemon's side of ingest; that socket, and where its spool goes
    (its directory made)."""
    from labd.daemon.spools import spool_of

    daemon_side = z.socket(zmq.PUSH)
    daemon_side.connect(INGEST_IN)
    daemon_side.send_pyobj(_created(sid, tmp))
    wait_until(lambda: _stored(ing, sid), timeout=10)
    path = spool_of(tmp, sid)
    path.parent.mkdir(parents=True, exist_ok=True)
    return daemon_side, path


def _send_first_event(s: zmq.Socket, codec: Codec, sid: str) -> None:
    s.send_multipart(codec.pack_events(sid, [encode_json([1, time.time(), "custom", None, None, {"name": "first"}])]))


def test_a_runner_frame_that_overtakes_its_session_created_is_stored_not_dropped(ingest, monkeypatch) -> None:
    """The runner's first event arrives in the same pass as (and before) its session's ``session.created``: it
    is acknowledged without a resend, stored after ``session.created`` (seq 1, then seq 2), and nothing is
    counted as dropped."""
    ing, z, tmp = ingest
    sid = "a1b2c3d4e5f6"
    daemon_side = z.socket(zmq.PUSH)
    daemon_side.connect(INGEST_IN)
    original = ing._process_frames
    raced: list[bool] = []

    def racing(frames: list[bytes], batch: Any, *, seen: bool) -> None:
        if not seen and not raced:  # the daemon queues session.created while this pass handles the frame
            raced.append(True)
            daemon_side.send_pyobj(_created(sid, tmp))
            wait_until(lambda: ing.pull.poll(0), timeout=10)
        original(frames, batch, seen=seen)

    monkeypatch.setattr(ing, "_process_frames", racing)
    s, codec = _runner(z, sid)
    _send_first_event(s, codec, sid)
    assert s.poll(10_000), "no ack: the frame was dropped (its runner would wait for its resend timeout)"
    ack = codec.unpack(s.recv_multipart())
    assert ack.type == "ack" and ack.body["next"] == 2
    assert raced and ing.counters.get("runner.deferred") == 1
    assert not ing.counters.get("dropped.runner.unknown_session")
    assert _stored(ing, sid) == [(1, "session.created", 1), (2, "custom", 1)]
    s.close(0)
    daemon_side.close(0)


def test_a_frame_of_a_session_that_never_appears_is_dropped_once(ingest) -> None:
    """A signed frame for a session the store never gets waits one pass, then is dropped: counted once as
    deferred and once as dropped, never acknowledged, and the ingest thread goes on serving other sessions."""
    ing, z, tmp = ingest
    ghost = "0f0f0f0f0f0f"
    s, codec = _runner(z, ghost)
    _send_first_event(s, codec, ghost)
    wait_until(lambda: ing.counters.get("dropped.runner.unknown_session") == 1, timeout=10)
    assert ing.counters.get("runner.deferred") == 1
    assert not s.poll(300), "a frame of an unknown session must not be acknowledged"
    # still serving: a session created the normal way gets its runner's events acknowledged
    sid = "0123456789ab"
    daemon_side = z.socket(zmq.PUSH)
    daemon_side.connect(INGEST_IN)
    daemon_side.send_pyobj(_created(sid, tmp))
    wait_until(lambda: _stored(ing, sid), timeout=10)
    s2, codec2 = _runner(z, sid)
    _send_first_event(s2, codec2, sid)
    assert s2.poll(10_000) and codec2.unpack(s2.recv_multipart()).body["next"] == 2
    assert ing.counters.get("dropped.runner.unknown_session") == 1
    for sock in (s, s2, daemon_side):
        sock.close(0)


def test_a_runner_of_a_session_the_store_does_not_have_is_said_once_how_to_stop(ingest, monkeypatch) -> None:
    """A runner whose session the store does not have (an older store served, as the refusal allowed) goes on
    sending: every frame is counted, and the log says once (not every second, for as long as it runs) that its
    output is not recorded and how to stop it (admin review)."""
    ing, z, _tmp = ingest
    lines: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def warning(self, event: str, **fields: Any) -> None:
            lines.append((event, fields))

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

    monkeypatch.setattr(ing, "log", Recorder())
    ghost = "0e0e0e0e0e0e"
    s, codec = _runner(z, ghost)
    for n in range(1, 6):
        s.send_multipart(codec.pack_events(ghost, [encode_json([n, time.time(), "custom", None, None, {}])]))
    wait_until(lambda: ing.counters.get("dropped.runner.unknown_session") == 5, timeout=10)
    said = [fields for event, fields in lines if "store does not have" in event]
    assert len(said) == 1 and said[0]["session_id"] == ghost, lines
    assert any(f"pkill -f ' #{ghost}$'" in event for event, _ in lines), lines
    s.close(0)


def test_a_monitor_sample_arriving_after_the_session_ended_is_not_recorded(ingest) -> None:
    """The monitor reaches ingest on a socket of its own, so a `resource.sample` taken while the runner still ran
    can arrive after the main loop's `session.ended`: recorded, it became an event after the end, which every
    follower (`labd logs -f`, the dashboard's stream) stops at and so never delivers (a suite run caught it: sent
    15 events, stored 16). Ingest drops it; a sample before the end is kept."""
    from sqlalchemy import text

    ing, z, tmp = ingest
    push = z.socket(zmq.PUSH)
    push.connect(INGEST_IN)
    sid, marker = "sampled00001", "marker000001"
    sample = {"rss": 1, "rss_sum": 1, "cpu_percent": 0.0, "num_procs": 1, "peak_rss": 1, "peak_cpu_percent": 0.0}

    def kinds(session: str) -> list[str]:
        with ing.writer.engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT kind FROM events WHERE session_id = :s ORDER BY seq"),
                                               {"s": session})]
    try:
        push.send_pyobj(_created(sid, tmp))
        push.send_pyobj(("event", sid, "resource.sample", sample, None, None))
        push.send_pyobj(("event", sid, "session.ended", {"status": "cancelled", "reason": "test", "ended_by": "queue"},
                         None, None))
        push.send_pyobj(("event", sid, "resource.sample", sample, None, None))
        push.send_pyobj(_created(marker, tmp))  # one socket keeps its order: once this is stored, the sample was seen
        wait_until(lambda: kinds(marker) == ["session.created"], timeout=10, what="the marker session recorded")
        assert kinds(sid) == ["session.created", "resource.sample", "session.ended"]
    finally:
        push.close(0)


def test_a_gap_its_runner_cannot_fill_is_filled_from_the_sessions_spool(ingest, monkeypatch) -> None:
    """The store lacks events its runner had acknowledged (a store restored from a backup taken while the session
    ran): the runner's frames go on past a gap it cannot fill, whatever ingest asks. Once the gap has lasted
    ``LABD_GAP_SPOOL_S``, ingest takes the missing events from the session's spool on disk, each once and in order,
    and the frames after them are stored (before, nothing more was stored until the session ended, with no word)."""
    import orjson

    from labd.runner.spool import Spool

    monkeypatch.setenv("LABD_GAP_SPOOL_S", "0.3")
    ing, z, tmp = ingest
    sid = "9a8b7c6d5e4f"
    daemon_side, path = _created_with_spool(ing, z, tmp, sid)
    events = [[i, time.time(), "custom", None, None, {"name": f"e{i}"}] for i in range(1, 11)]
    spool = Spool(path)  # what the runner wrote, every event, before it sent any
    for ev in events:
        spool.append(ev[0], orjson.dumps(ev))
    spool.close()
    s, codec = _runner(z, sid)

    def send_the_rest() -> bool:  # the runner goes on from what it last had acknowledged: 6 onwards
        s.send_multipart(codec.pack_events(sid, [encode_json(ev) for ev in events[5:]]))
        return len(_stored(ing, sid)) == 11

    try:
        wait_until(send_the_rest, timeout=30, interval=0.2, what=f"the gap filled ({ing.counters})")
        assert _stored(ing, sid) == [(1, "session.created", 1)] + [(i + 1, "custom", i) for i in range(1, 11)]
        assert ing.counters.get("gaps_filled_from_spool") == 1
    finally:
        s.close(0)
        daemon_side.close(0)


def test_a_gap_the_spool_cannot_fill_is_tried_again_less_and_less_often(ingest, monkeypatch) -> None:
    """A gap the session's spool cannot fill either (a session's code can make both: attack review) is not read
    for again every ``LABD_GAP_SPOOL_S`` for as long as frames come: each fill that filled nothing doubles the wait
    before the next. The session's later events are still not stored past the gap (nothing is made up)."""
    monkeypatch.setenv("LABD_GAP_SPOOL_S", "0.1")
    ing, z, tmp = ingest
    sid = "7a6b5c4d3e2f"
    daemon_side, path = _created_with_spool(ing, z, tmp, sid)
    path.write_bytes(b"")  # a spool holding nothing
    tries: list[float] = []
    original = ing._ingest_spool

    def counted(cur: Any, b: Any, **kw: Any) -> bool:
        tries.append(time.monotonic())
        return original(cur, b, **kw)

    monkeypatch.setattr(ing, "_ingest_spool", counted)
    s, codec = _runner(z, sid)
    began = time.monotonic()
    seq = 5  # events 1-4 never arrive: a gap
    try:
        while time.monotonic() - began < 3.0:
            s.send_multipart(codec.pack_events(sid, [encode_json([seq, time.time(), "custom", None, None, {}])]))
            seq += 1
            s.poll(50)
            while s.poll(0):
                s.recv_multipart()
        # waits of 0.1, 0.2, 0.4, 0.8, 1.6 s: five tries at most in 3 s, against about 30 without the doubling
        assert 2 <= len(tries) <= 6, tries
        gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
        assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
        assert _stored(ing, sid) == [(1, "session.created", 1)]
    finally:
        s.close(0)
        daemon_side.close(0)


def test_a_store_lost_while_a_refused_batch_is_written_event_by_event_records_each_daemon_item_once(
        ingest, monkeypatch) -> None:
    """The store refuses a batch of three daemon items, so ingest writes it event by event (safe mode), and goes
    away at the second: the batch is processed again once it is back. Each item is recorded once: the first was
    recorded a second time (the daemon's items have no numbers to tell), and the second was recorded as
    ``event.rejected``, lost, when the store answered again at once (as after a PostgreSQL restart)."""
    import threading

    import sqlalchemy.exc as sa_exc

    ing, z, tmp = ingest
    sid = "5e4d3c2b1a09"
    daemon_side, _path = _created_with_spool(ing, z, tmp, sid)
    real_commit = ing.writer.commit
    holding, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def commit(*args: Any, **kwargs: Any) -> Any:
        if not release.is_set():  # the pass before: held until the three items wait together
            holding.set()
            release.wait(10)
            return real_commit(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the batch of three: refused
            raise sa_exc.IntegrityError("INSERT", {}, Exception("refused"))
        if len(calls) == 3:  # the second item's own commit: the connection dropped
            raise sa_exc.OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(ing.writer, "commit", commit)
    monkeypatch.setattr(ing.writer, "reconnect", lambda: None)
    try:
        daemon_side.send_pyobj(("event", sid, "custom", {"name": "before", "data": {}}, None, None))
        assert holding.wait(10)
        for n in range(3):
            daemon_side.send_pyobj(("event", sid, "custom", {"name": f"d{n}", "data": {}}, None, None))
        wait_until(lambda: ing.pull.poll(0), timeout=10)  # (inproc: all three are queued once sent)
        release.set()
        wait_until(lambda: len(_stored(ing, sid)) >= 5 and len(calls) >= 5, timeout=30,
                   what=f"the items written ({len(calls)} commits)")
        kinds = [k for _seq, k, _src in _stored(ing, sid)]
        assert kinds == ["session.created"] + ["custom"] * 4, _stored(ing, sid)
        assert ing.counters.get("store_refused_batches") == 1 and not ing.counters.get("store_rejected")
    finally:
        daemon_side.close(0)
