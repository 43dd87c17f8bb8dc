"""The relay of forked children's events (labd.runner.forked.Relay), with real forks and a real socket pair."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from labd.runner import forked
from labd.runner.forked import Relay


class Recorder:
    """Stands in for Channel.emit: numbers events 1, 2, ... and keeps them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, str | None, int | None, float | None]] = []

    def emit(self, kind: str, payload: Any, node_id: str | None = None, parent: int | None = None,
             ts: float | None = None) -> int:
        self.events.append((kind, payload, node_id, parent, ts))
        return len(self.events)


def fork_and_run(relay: Relay, body: Any) -> None:
    """Fork a child that runs ``body(emit)`` with the child's relay emit, then wait for it."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body(relay.child_emit())
        except BaseException:  # noqa: BLE001 - the exit code says it
            code = 1
        os._exit(code)
    relay.start()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_children_events_arrive_in_order_with_parent_links_mapped(tmp_path: Path) -> None:
    """Two children's events all arrive; each child's own order is kept, a negative ``parent`` (the reference
    the child's emit returned) becomes the runner's number for that event, a ``parent`` >= 0 passes as it is,
    and the child's time stamp is kept."""
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)

    def child(emit: Any) -> None:
        before = time.time()
        req = emit("llm.request", {"who": os.getpid()}, "n1")
        assert req == -(os.getpid() << 32 | 1)
        emit("llm.response", {"who": os.getpid()}, "n1", req)
        emit("custom", {"name": "x", "data": before}, None, 7)

    fork_and_run(relay, child)
    fork_and_run(relay, child)
    relay.close()
    assert len(rec.events) == 6
    by_child: dict[int, list[int]] = {}
    for i, (_kind, payload, _node, _parent, _ts) in enumerate(rec.events, start=1):
        if "who" in payload:
            by_child.setdefault(payload["who"], []).append(i)
    for seqs in by_child.values():
        req_seq, resp_seq = seqs
        assert rec.events[resp_seq - 1][3] == req_seq
    customs = [e for e in rec.events if e[0] == "custom"]
    assert [c[3] for c in customs] == [7, 7]
    assert all(c[4] is not None and c[4] >= c[1]["data"] for c in customs)


def test_a_bad_message_is_reported_and_the_next_one_still_arrives(tmp_path: Path) -> None:
    """Bytes that are not a child's event (session code writing to the socket) are reported as a log event and do
    not stop the relay; a file name outside the session's directory is refused, not read."""
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)
    outside = tmp_path.parent / "secret.txt"
    outside.write_text("not for the relay")

    def child(emit: Any) -> None:
        sock = relay._send  # noqa: SLF001 - what session code holding the inherited fd could do
        sock.send(b"[1, 2")
        sock.send(orjson.dumps({"not": "a list"}))
        sock.send(b"F../secret.txt")
        emit("custom", {"name": "fine"})

    fork_and_run(relay, child)
    relay.close()
    logs = [e[1]["event"] for e in rec.events if e[0] == "log"]
    assert len(logs) == 3 and all("was not recorded" in m for m in logs)
    assert rec.events[-1][0] == "custom" and rec.events[-1][1] == {"name": "fine"}
    assert outside.read_text() == "not for the relay"


def test_a_child_whose_runner_is_gone_neither_blocks_nor_fails(tmp_path: Path) -> None:
    """Once the runner's end is closed (the runner exited), a child's emits return at once (dropped: the session
    is over), even far more than the socket could buffer."""
    relay = Relay(Recorder().emit, tmp_path)
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(done_r)
        os.close(go_w)
        emit = relay.child_emit()
        os.read(go_r, 1)  # the runner's end is closed by now
        for i in range(20_000):
            emit("custom", {"name": "late", "data": "z" * 200, "i": i})
        os.write(done_w, b"done")
        os._exit(0)
    os.close(done_w)
    os.close(go_r)
    relay._recv.close()  # noqa: SLF001 - the runner exited
    relay._send.close()  # noqa: SLF001
    os.write(go_w, b"x")
    assert os.read(done_r, 4) == b"done"  # a child blocked on a full socket would hang here (pytest-timeout)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_payload_json_cannot_carry_raises_in_the_child(tmp_path: Path) -> None:
    """A payload nested deeper than JSON can carry raises PayloadError in the child's emit, as it would in the
    runner's, and sends nothing."""
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)

    def child(emit: Any) -> None:
        from labd.ipc.wire import PayloadError

        deep: Any = {}
        for _ in range(300):
            deep = {"d": deep}
        with pytest.raises(PayloadError):
            emit("custom", {"name": "deep", "data": deep})
        emit("custom", {"name": "after"})

    fork_and_run(relay, child)
    relay.close()
    assert [e[1]["name"] for e in rec.events] == ["after"]


def test_a_runner_that_never_forked_closes_without_a_thread(tmp_path: Path) -> None:
    """close() of a relay that was never started returns at once and frees both ends."""
    relay = Relay(Recorder().emit, tmp_path)
    relay.close()
    assert relay._recv.fileno() == -1 and relay._send.fileno() == -1  # noqa: SLF001
    with pytest.raises(OSError):
        relay._send.send(b"x", socket.MSG_NOSIGNAL)  # noqa: SLF001


def test_parent_links_are_kept_for_the_newest_references_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner keeps at most MAX_REFS child references: a link to a recent event is mapped, one to an event
    older than that is dropped (``parent`` null, never another event's number)."""
    monkeypatch.setattr(forked, "MAX_REFS", 50)
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)

    def child(emit: Any) -> None:
        first = emit("llm.request", {"name": "first"})
        for i in range(200):
            emit("tool.call", {"name": "filler", "i": i})
        recent = emit("llm.request", {"name": "recent"})
        emit("custom", {"name": "to first"}, None, first)
        emit("custom", {"name": "to recent"}, None, recent)

    fork_and_run(relay, child)
    relay.close()
    assert len(relay._refs) <= 50  # noqa: SLF001
    named = {e[1]["name"]: (i, e) for i, e in enumerate(rec.events, start=1)}
    assert named["to first"][1][3] is None
    assert named["to recent"][1][3] == named["recent"][0]


def test_only_kinds_a_parent_can_name_are_remembered(tmp_path: Path) -> None:
    """References are kept only for the kinds a ``parent`` may name (llm.request, llm.response, tool.call), so a
    child emitting many custom events costs the runner no memory for them."""
    relay = Relay(Recorder().emit, tmp_path)

    def child(emit: Any) -> None:
        for i in range(500):
            emit("custom", {"name": "x", "i": i})
        emit("tool.call", {"tool": "t"})

    fork_and_run(relay, child)
    relay.close()
    assert len(relay._refs) == 1  # noqa: SLF001


def test_an_empty_message_does_not_stop_the_relay(tmp_path: Path) -> None:
    """A zero-length message (which recv returns like the end of the stream) is skipped: later events still
    arrive."""
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)

    def child(emit: Any) -> None:
        emit("custom", {"name": "before"})
        relay._send.send(b"")  # noqa: SLF001 - what session code holding the inherited fd could do
        emit("custom", {"name": "after"})

    fork_and_run(relay, child)
    relay.close()
    assert [e[1]["name"] for e in rec.events] == ["before", "after"]


def test_a_file_name_naming_a_fifo_or_a_symlink_is_refused_without_blocking(tmp_path: Path) -> None:
    """A message naming a FIFO (opening it would block for ever) or a symlink in the session's directory is
    reported and removed, and the relay goes on; the symlink's target is untouched."""
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)
    os.mkfifo(tmp_path / ".forked-1-1.json")
    target = tmp_path / "target.txt"
    target.write_text('[-1, 0, "custom", null, null, {"name": "via link"}]')
    (tmp_path / ".forked-1-2.json").symlink_to(target)

    def child(emit: Any) -> None:
        relay._send.send(b"F.forked-1-1.json")  # noqa: SLF001
        relay._send.send(b"F.forked-1-2.json")  # noqa: SLF001
        emit("custom", {"name": "fine"})

    fork_and_run(relay, child)
    relay.close()
    logs = [e[1]["event"] for e in rec.events if e[0] == "log"]
    assert len(logs) == 2 and all("not recorded" in m for m in logs)
    assert [e[1]["name"] for e in rec.events if e[0] == "custom"] == ["fine"]
    assert target.exists() and not list(tmp_path.glob(".forked-*"))


def test_a_grandchild_links_to_its_parents_request(tmp_path: Path) -> None:
    """A reference made in a child and named as ``parent`` by a process that child forked maps to the child's
    event (references are unique per process, not per sender)."""
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)

    def child(emit: Any) -> None:
        req = emit("llm.request", {"name": "child's request"})
        pid = os.fork()
        if pid == 0:
            mine = relay.child_emit()
            mine("llm.request", {"name": "grandchild's own"})
            mine("llm.response", {"name": "grandchild's response"}, None, req)
            os._exit(0)
        os.waitpid(pid, 0)

    fork_and_run(relay, child)
    relay.close()
    seq_of = {e[1]["name"]: i for i, e in enumerate(rec.events, start=1)}
    response = rec.events[seq_of["grandchild's response"] - 1]
    assert response[3] == seq_of["child's request"]


def test_a_relay_whose_thread_never_started_still_takes_in_what_was_sent(tmp_path: Path) -> None:
    """Children forked while no thread could be started (a process limit): close() takes in what they sent."""
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)

    def refused() -> None:
        raise RuntimeError("can't start new thread")

    relay._thread.start = refused  # type: ignore[method-assign]  # noqa: SLF001 - as under a process limit
    relay.start()  # the runner's before-fork hook
    pid = os.fork()
    if pid == 0:
        emit = relay.child_emit()
        for i in range(100):
            emit("custom", {"name": "queued", "i": i})
        os._exit(0)
    os.waitpid(pid, 0)
    relay.close()
    assert [e[1]["i"] for e in rec.events] == list(range(100))


def _slow_emit(delay: float) -> tuple[list[int], Any]:
    """The runner's emit for a channel under back-pressure: ``delay`` per event; records each payload's ``i``."""
    emitted: list[int] = []

    def slow(kind: str, payload: Any, node_id: str | None = None, parent: int | None = None,
             ts: float | None = None) -> int:
        time.sleep(delay)
        emitted.append(payload["i"])
        return len(emitted)

    return emitted, slow


def test_close_takes_in_a_slow_backlog_before_it_returns(tmp_path: Path) -> None:
    """A backlog that takes longer to emit than close()'s wait for children (a slow channel) is emitted in full
    before close() returns: nothing comes after the session's last event."""
    emitted, slow = _slow_emit(0.002)
    relay = Relay(slow, tmp_path)

    def child(emit: Any) -> None:
        for i in range(400):
            emit("custom", {"name": "backlog", "i": i})

    fork_and_run(relay, child)
    relay.close(timeout=0.05)
    assert emitted == list(range(400))
    assert not relay._thread.is_alive()  # noqa: SLF001


def test_sync_returns_after_what_children_sent_is_emitted(tmp_path: Path) -> None:
    """sync() after a child exited returns once the child's events are all emitted (a step that waited for its
    workers finishes after their events). The runner emits slowly here, so without sync() only part of them
    would be in when the child has exited."""
    emitted, slow = _slow_emit(0.001)
    relay = Relay(slow, tmp_path)

    def child(emit: Any) -> None:
        for i in range(500):
            emit("custom", {"name": "w", "i": i})

    fork_and_run(relay, child)
    relay.sync()
    assert emitted == list(range(500))
    relay.close()


def test_event_files_left_by_a_killed_child_are_recorded_and_partial_ones_removed(tmp_path: Path) -> None:
    """At the end, a whole event file whose name was never sent (its child was killed right after writing it) is
    recorded; a half-written ``.part`` file is removed."""
    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)
    (tmp_path / ".forked-77-1.json").write_bytes(orjson.dumps([-(77 << 32 | 1), 1.0, "custom", None, None,
                                                               {"name": "orphan"}]))
    (tmp_path / ".forked-77-2.part").write_bytes(b"[-1, 1.0, \"cus")
    relay.start()  # the before-fork hook of the fork that made the child
    relay.close()
    assert [e[1]["name"] for e in rec.events] == ["orphan"]
    assert not list(tmp_path.glob(".forked-*"))


def test_threads_making_their_first_fork_at_once_start_one_relay_thread(tmp_path: Path) -> None:
    """Eight threads forking at the same moment (each calling start() first, as the runner's before-fork hook does)
    start the relay's thread once: it stays alive, and every event of every child arrives."""
    import threading

    rec = Recorder()
    relay = Relay(rec.emit, tmp_path)
    barrier = threading.Barrier(8)
    pids: list[int] = []

    def forker(k: int) -> None:
        barrier.wait()
        relay.start()
        pid = os.fork()
        if pid == 0:
            emit = relay.child_emit()
            for i in range(300):
                emit("custom", {"k": k, "i": i})
            os._exit(0)
        pids.append(pid)

    threads = [threading.Thread(target=forker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for pid in pids:
        os.waitpid(pid, 0)
    assert relay._thread.is_alive()  # noqa: SLF001
    relay.close()
    got: dict[int, list[int]] = {}
    for e in rec.events:
        got.setdefault(e[1]["k"], []).append(e[1]["i"])
    assert got == {k: list(range(300)) for k in range(8)}
