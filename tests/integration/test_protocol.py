"""Protocol hardening: bad frames of every kind on every socket are dropped and counted; the daemon serves on."""

from __future__ import annotations

import socket
import time

import orjson
import zmq

from labd.ipc.connection import events_socket
from labd.ipc.signing import derive_key
from labd.ipc.wire import Codec
from tests.conftest import SMALL_MAX_MESSAGE as MAX_MESSAGE
from tests.conftest import wait_until
from tests.integration.impostor import dealer, end_impostor, freeze_runner, impostor_runner


def _bad_frames(codec: Codec, type_: str, body: dict) -> dict[str, list[bytes]]:
    good = codec.pack(type_, body)
    raw_bad_json = b"{not json"
    replay = codec.pack(type_, body)
    stale = orjson.dumps({"v": 1, "id": "stale-1", "ts": time.time() - 3600, "type": type_, "body": body})
    huge = orjson.dumps({"v": 1, "id": "huge-1", "ts": time.time(), "type": type_,
                         "body": {**body, "pad": "x" * (MAX_MESSAGE + 10)}})
    return {
        "unsigned": [b"", good[1]],
        "bad_signature": [b"0" * 64, good[1]],
        "wrong_key": Codec(b"k" * 32).pack(type_, body),
        "malformed_json": [codec.signer.sign(raw_bad_json), raw_bad_json],
        "malformed_frames": [b"only-one-frame"],
        "malformed_envelope": [codec.signer.sign(b"[1,2]"), b"[1,2]"],
        "stale": [codec.signer.sign(stale), stale],
        "oversized": [codec.signer.sign(huge), huge],
        "replay_first": replay,
        "replay_again": replay,
    }


def test_bad_frames_on_the_control_socket_are_dropped_and_counted(small_daemon) -> None:
    """Unsigned, wrongly signed, replayed, stale and malformed requests get no reply; a validly signed oversized
    one gets `request_too_large` (and is not run); all are counted by reason, and the daemon still answers a good
    request afterwards."""
    with small_daemon.client() as c:
        codec = Codec(c.info.key_bytes, max_message=MAX_MESSAGE)
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(c.info.control)
        replies = []
        for name, frames in _bad_frames(codec, "ping", {}).items():
            s.send_multipart(frames)
            if s.poll(300):
                reply = codec.unpack(s.recv_multipart())
                replies.append(name)
                assert name in ("replay_first", "oversized"), f"{name} got a reply"
                if name == "oversized":
                    assert reply.re == "huge-1" and reply.body["error"]["code"] == "request_too_large"
        assert replies == ["oversized", "replay_first"]
        counters = c.status()["counters"]
        for reason, n in [("bad_signature", 3), ("malformed", 3), ("replayed", 2), ("oversized", 1)]:
            assert counters.get(f"dropped.control.{reason}", 0) == n, (reason, counters)
        assert c.ping()["pid"] == small_daemon.proc.pid
        s.close(0)


def test_bad_frames_on_the_runner_socket_are_dropped_and_counted(small_daemon) -> None:
    """Forged runner traffic (every bad kind, plus a runner posing as another session) writes nothing."""
    with small_daemon.client() as c:
        sid = c.start("demo.count", params={"n": 1, "delay": 0})
        c.wait(sid, timeout=30)
        before = c.session(sid)["last_seq"]
        # signed with the key of the session its routing id names: it verifies, then poses as `sid`
        codec = Codec(derive_key(c.info.key_bytes, "someone-else"), max_message=MAX_MESSAGE)
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, b"someone-else")
        s.connect(c.info.runners)
        event = [10_000, time.time(), "output", None, None, {"stream": "stdout", "text": "forged\n"}]
        for frames in _bad_frames(codec, "events", {"session": sid, "events": [event]}).values():
            s.send_multipart(frames)
        expected = {"bad_session": 1, "bad_signature": 3, "replayed": 2, "oversized": 1, "malformed": 3}

        def dropped() -> dict[str, int]:
            counters = c.status()["counters"]
            return {reason: counters.get(f"dropped.runner.{reason}", 0) for reason in expected}

        # wait for every frame to be handled: the replay's first copy (bad_session) comes before its second
        # (replayed), so waiting for bad_session alone raced the last frame
        wait_until(lambda: sum(dropped().values()) >= sum(expected.values()), timeout=20,
                   what="every bad frame to be counted")
        assert dropped() == expected
        assert c.session(sid)["last_seq"] == before
        assert "forged" not in "".join(str(e["payload"]) for e in c.history(sid))
        s.close(0)


def test_malformed_events_from_a_runner_are_rejected_and_recorded(small_daemon) -> None:
    """A correctly signed batch with events that break their schema: each is rejected, counted and kept
    as an ``event.rejected`` row; valid events around them are stored; the seq stays gap-free."""
    with small_daemon.client() as c:
        sid, codec, s = impostor_runner(c, max_message=MAX_MESSAGE)
        base = [e for e in c.history(sid) if e["src"] == "runner"]
        nxt = len(base) + 1  # runner src_seqs are 1..n
        evs = [
            [nxt, time.time(), "no.such.kind", None, None, {}],
            [nxt + 1, time.time(), "output", None, None, {"stream": "stdout"}],
            [nxt + 2, time.time(), "output", None, None, {"stream": "stdout", "text": "late but valid\n"}],
            [nxt + 3, time.time(), "step.started", None, None, {"name": "no node id"}],
        ]
        s.send_multipart(codec.pack("events", {"session": sid, "events": evs}))
        assert s.poll(5000), "no ack"
        ack = codec.unpack(s.recv_multipart())
        assert ack.type == "ack" and ack.body["next"] == nxt + 4
        events = list(c.history(sid))
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        tail = [e for e in events if e["src"] == "runner"][-4:]  # (the running session's samples left out)
        assert [e["kind"] for e in tail] == ["event.rejected", "event.rejected", "output", "event.rejected"]
        assert [e["payload"]["kind"] for e in tail if e["kind"] == "event.rejected"] == \
            ["no.such.kind", "output", "step.started"]
        assert tail[2]["payload"]["text"] == "late but valid\n"
        assert c.status()["counters"]["events_rejected"] == 3
        s.close(0)


def test_garbage_bytes_and_wrong_peers_on_every_socket_do_not_hurt(small_daemon) -> None:
    """Raw garbage on each Unix socket and an XSUB sending junk to the event socket leave the daemon
    serving, and a real subscriber still receives live events."""
    with small_daemon.client() as c:
        for endpoint in (c.info.control, c.info.runners, c.info.events):
            path = endpoint.removeprefix("ipc://")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                raw.connect(path)
                raw.sendall(b"\xff" * 10 + b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 40)
        ctx = zmq.Context.instance()
        x = events_socket(ctx, c.info, zmq.XSUB)
        x.connect(c.info.events)
        for junk in (b"", b"\x05garbage", b"\x01" + b"s" * 10_000):
            x.send(junk)
        x.close(0)
        assert c.ping()["pid"] == small_daemon.proc.pid
        sid = c.start("demo.count", params={"n": 2, "delay": 0.01})
        kinds = [e["kind"] for e in c.follow(sid, timeout=30)]
        assert kinds[-1] == "session.ended"


def test_a_runner_cannot_record_daemon_facts_and_bad_items_do_not_wedge_it(small_daemon) -> None:
    """Events only the daemon may record (session.created, session.ended, approval.resolved) are rejected
    when a runner sends them; an item with a bad timestamp is rejected and the runner's sequence moves
    on; an unreadable item drops the rest of its batch without asking for it again. The daemon serves on."""
    with small_daemon.client() as c:
        sid, codec, s = impostor_runner(c, max_message=MAX_MESSAGE)
        nxt = len([e for e in c.history(sid) if e["src"] == "runner"]) + 1
        created = {"workflow": "x", "name": "x", "params": {}, "limits": {}, "workdir": "/"}
        evs = [
            [nxt, time.time(), "session.created", None, None, created],
            [nxt + 1, time.time(), "session.ended", None, None, {"ended_by": "exit", "status": "completed"}],
            [nxt + 2, "yesterday", "output", None, None, {"stream": "stdout", "text": "x\n"}],
            [nxt + 3, time.time(), "output", None, None, {"stream": "stdout", "text": "still counted\n"}],
            "not an event",
            [nxt + 4, time.time(), "output", None, None, {"stream": "stdout", "text": "after the junk\n"}],
        ]
        s.send_multipart(codec.pack("events", {"session": sid, "events": evs}))
        assert s.poll(5000), "no ack"
        ack = codec.unpack(s.recv_multipart())
        assert ack.body == {"next": nxt + 4, "resend": False}
        tail = [e for e in c.history(sid) if e["src"] == "runner"][-4:]
        assert [e["kind"] for e in tail] == ["event.rejected"] * 3 + ["output"]
        assert "may only be recorded by the daemon" in tail[0]["payload"]["reason"]
        assert c.session(sid)["status"] == "running"  # the forged session.ended changed nothing
        assert c.status()["counters"]["dropped.runner.malformed"] == 1
        s.close(0)


def _large_sessions(c) -> list[str]:
    """Five sessions whose records are large (50 tags of 300 characters, ~16 KB each, every request under the
    64 KiB limit): a `session.list` of all of them is larger than one message may be."""
    tags = {f"tag{i:02d}": "x" * 300 for i in range(50)}
    sids = []
    for _ in range(5):
        sids.append(c.start("demo.count", params={"n": 1, "delay": 0}, tags=tags))
        c.wait(sids[-1], timeout=60)
    return sids


def test_a_reply_over_the_message_limit_is_a_clear_error_not_a_silence(small_daemon) -> None:
    """A client that does not take replies in parts (a raw request without `"parts": true` in its envelope, as
    a client written before parts existed sends) gets `reply_too_large` at once for a list larger than one
    message, with the sizes, and a smaller list still works (before: the daemon sent the oversized reply, the
    client dropped it unread and waited for "no reply from the daemon (is it running?)")."""
    with small_daemon.client(timeout=30) as c:
        _large_sessions(c)
        codec = Codec(c.info.key_bytes, max_message=MAX_MESSAGE)
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(c.info.control)
        try:
            s.send_multipart(codec.pack("session.list", {}))
            assert s.poll(10_000), "no reply"
            reply = codec.unpack(s.recv_multipart())
            assert reply.type == "reply" and reply.body["error"]["code"] == "reply_too_large", reply.body
            details = reply.body["error"]["details"]
            assert details["bytes"] > details["max"] == MAX_MESSAGE
            s.send_multipart(codec.pack("session.list", {"limit": 1}))
            assert s.poll(10_000), "no reply"
            assert len(codec.unpack(s.recv_multipart()).body["result"]["sessions"]) == 1
        finally:
            s.close(0)
        assert c.status()["counters"].get("control.reply_too_large", 0) >= 1


def test_a_reply_over_the_message_limit_reaches_the_sdk_in_parts(small_daemon) -> None:
    """The SDK's client takes a reply larger than one message in parts (labd.ipc.parts): the whole list of the
    large sessions arrives, equal to what pages of one row give, each part under the message limit, counted as
    `control.reply_parts` (before: `reply_too_large`, and the user had to page by hand)."""
    with small_daemon.client(timeout=30) as c:
        sids = _large_sessions(c)
        rows = c.sessions()
        assert sorted(r["id"] for r in rows) == sorted(sids)
        assert all(len(r["tags"]) == 50 for r in rows)
        assert len(orjson.dumps(rows)) > MAX_MESSAGE
        assert c.status()["counters"].get("control.reply_parts", 0) >= 2
        assert c.status()["counters"].get("control.reply_too_large", 0) == 0

def test_the_dag_and_comparison_of_many_steps_reach_the_sdk_in_parts(small_daemon) -> None:
    """`session.dag` (answered at once) and `sessions.compare` (read on the daemon's worker, answered later) of
    sessions with 300 steps each are larger than one message: both arrive whole, in parts (before: both failed
    `reply_too_large`; at the default 16 MiB limit that was sessions of more than ~15,000 steps)."""
    with small_daemon.client(timeout=60) as c:
        sids = [c.start("labd_testflows:ticker", params={"n": 300, "delay": 0}) for _ in range(2)]
        for sid in sids:
            assert c.wait(sid, timeout=120)["status"] == "completed"
        dag = c.dag(sids[0])["dag"]
        assert len(orjson.dumps(dag)) > MAX_MESSAGE
        assert sorted(n["name"] for n in dag["nodes"] if n["kind"] == "step") == sorted(f"tick {i}" for i in range(300))
        comparison = c.compare(*sids)
        assert len(orjson.dumps(comparison)) > MAX_MESSAGE
        assert c.status()["counters"].get("control.reply_too_large", 0) == 0


def test_a_finished_sessions_record_takes_no_more_runner_events(small_daemon) -> None:
    """A session's runner key is the session's for good: code that copied it out wrote output, a running step, a
    forged failure and a pending approval into the completed session's record (an attack review). Once its end
    is recorded, frames signed with that key are dropped, counted (``dropped.runner.ended``) and acked up to what
    the record holds (so a late runner can exit): the record, its status and its approvals stay as they were. A
    frame of events the record already holds is acked and not counted as dropped (nothing was lost)."""
    with small_daemon.client() as c:
        sid = c.start("demo.count", params={"n": 1})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        before = list(c.history(sid))
        nxt = max(e["src_seq"] for e in before if e["src"] == "runner") + 1
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, f"{sid}:late".encode())
        s.connect(c.info.runners)
        codec = Codec(derive_key(c.info.key_bytes, sid), max_message=MAX_MESSAGE)
        evs = [
            [nxt, time.time(), "output", None, None, {"stream": "stdout", "text": "INJECTED AFTER END\n"}],
            [nxt + 1, time.time(), "step.started", "n77", None, {"name": "forged"}],
            [nxt + 2, time.time(), "session.finished", None, None, {"outcome": "failed", "error": "forged"}],
            [nxt + 3, time.time(), "approval.requested", None, None,
             {"approval_id": "ap-x", "kind": "plan", "prompt": "forged?", "options": ["approve", "reject"]}],
        ]
        dropped = c.status()["counters"].get("dropped.runner.ended", 0)
        s.send_multipart(codec.pack("events", {"session": sid, "events": evs}))
        wait_until(lambda: c.status()["counters"].get("dropped.runner.ended", 0) == dropped + 4,
                   what="the frame to be dropped")
        # answered with an ack of what the record holds (before it, none: a runner the daemon ended from its spool
        # waited its whole 30 s flush timeout to exit), which claims none of the dropped events
        assert s.poll(10_000), "no ack for a frame of an ended session"
        ack = codec.unpack(s.recv_multipart())
        assert ack.type == "ack" and ack.body["next"] == nxt, ack
        # a frame sent again of what the record holds (a killed runner's frames, still in the socket after its end was
        # recorded from its spool) is acked too, but is no loss: not counted as dropped
        again = [[e["src_seq"], e["ts"], e["kind"], e["node_id"], None, e["payload"]] for e in before
                 if e["src"] == "runner"][-2:]
        s.send_multipart(codec.pack("events", {"session": sid, "events": again}))
        assert s.poll(10_000), "no ack for a frame sent again"
        assert codec.unpack(s.recv_multipart()).body["next"] == nxt
        assert c.status()["counters"].get("dropped.runner.ended", 0) == dropped + 4
        s.close(0)
        assert list(c.history(sid)) == before
        assert c.session(sid)["status"] == "completed"
        assert c.approvals(session=sid, status="all") == []


def test_each_run_of_a_resumed_session_has_a_runner_key_of_its_own(small_daemon) -> None:
    """A key copied out during one run of a session signs nothing in the next: the resumed run's runner signs with
    a key derived for that run (the ``session.continued`` it began with), frames signed with the first run's key
    are dropped as ``bad_signature`` and leave the record as it was, while the new run's key is taken. (Before, a
    session's key was the same for every run.)"""
    with small_daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 600})
        wait_until(lambda: c.session(sid)["status"] == "running")
        c.stop(sid)
        assert c.wait(sid, timeout=60)["status"] == "cancelled"
        c.resume(sid)
        freeze_runner(c, sid)
        run = next(e["seq"] for e in c.history(sid, kinds=["session.continued"]))
        first_run, this_run = (Codec(derive_key(c.info.key_bytes, sid, r), max_message=MAX_MESSAGE) for r in (0, run))
        s = dealer(c, sid)
        nxt = max(e["src_seq"] for e in c.history(sid) if e["src"] == "runner") + 1

        def output(text: str) -> dict:
            return {"session": sid, "events": [[nxt, time.time(), "output", None, None,
                                                {"stream": "stdout", "text": text}]]}
        bad = c.status()["counters"].get("dropped.runner.bad_signature", 0)
        s.send_multipart(first_run.pack("events", output("SIGNED WITH THE FIRST RUN'S KEY\n")))
        wait_until(lambda: c.status()["counters"].get("dropped.runner.bad_signature", 0) == bad + 1,
                   what="the first run's frame to be dropped")
        s.send_multipart(this_run.pack("events", output("signed with this run's key\n")))
        assert s.poll(5000), "no ack for this run's frame"
        assert this_run.unpack(s.recv_multipart()).body["next"] == nxt + 1
        texts = [e["payload"]["text"] for e in c.history(sid, kinds=["output"])]
        assert "signed with this run's key\n" in texts
        assert "SIGNED WITH THE FIRST RUN'S KEY\n" not in texts
        end_impostor(c, sid, s)


def test_a_runner_cannot_record_a_time_or_cost_out_of_range(small_daemon) -> None:
    """An output event stamped 1e300 (on ingest's hot path, which checked only that the stamp was a float) and a
    cost.recorded of -1000 USD are each stored as ``event.rejected`` in their own slot; before, the first made
    `labd logs --timestamps` fail with OverflowError and the second hid the session's spending."""
    with small_daemon.client() as c:
        sid, codec, s = impostor_runner(c, max_message=MAX_MESSAGE)
        nxt = max(e["src_seq"] for e in c.history(sid) if e["src"] == "runner") + 1
        cost = {"agent": "a", "model": "m", "prompt_tokens": 1, "completion_tokens": 1, "cost": -1000.0,
                "currency": "USD", "offline": True}
        evs = [[nxt, 1e300, "output", None, None, {"stream": "stdout", "text": "from the far future\n"}],
               [nxt + 1, time.time(), "cost.recorded", "n1", None, cost],
               [nxt + 2, time.time(), "output", None, None, {"stream": "stdout", "text": "on time\n"}]]
        s.send_multipart(codec.pack("events", {"session": sid, "events": evs}))
        assert s.poll(5000), "no ack"
        assert codec.unpack(s.recv_multipart()).body["next"] == nxt + 3
        tail = [e for e in c.history(sid) if e["src"] == "runner"][-3:]
        assert [e["kind"] for e in tail] == ["event.rejected", "event.rejected", "output"]
        assert "timestamp" in tail[0]["payload"]["reason"] and "cost must be 0 to" in tail[1]["payload"]["reason"]
        assert c.session(sid)["cost"] == 0
        s.close(0)
        c.kill(sid)


def test_a_request_captured_before_a_restart_is_not_run_by_the_next_daemon(daemon) -> None:
    """The exact bytes of a signed ``session.start``, sent again to the daemon started after a restart (within the
    300 s replay window), start nothing: the next daemon refuses what was signed before it started (counted
    ``replayed``, no reply). Before, its replay guard started empty and a second session ran (protocol review)."""
    with daemon.client() as c:
        codec = Codec(c.info.key_bytes, max_message=c.info.max_message)
        frames = codec.pack("session.start", {"workflow": "demo.count", "params": {"n": 1}, "limits": {}})
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(c.info.control)
        s.send_multipart(frames)
        assert s.poll(30_000), "no reply to the first send"
        started = codec.unpack(s.recv_multipart()).body["result"]["session"]
        s.close(0)
    daemon.stop()
    daemon.start()
    with daemon.client() as c:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(c.info.control)
        s.send_multipart(frames)
        assert not s.poll(1_000), "the captured request was answered"
        s.close(0)
        assert [r["id"] for r in c.sessions(limit=10)] == [started]
        assert c.status()["counters"].get("dropped.control.replayed") == 1
