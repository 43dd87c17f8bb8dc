"""The live tail's run form: a runner frame whose events all take ingest's hot path in order is published as the
runner sent it (``run``: a seq offset and the frame's events array), and what a follower decodes from it is
exactly what is stored; anything else is published per event, in seq order; crafted frames never show a
follower something the store does not hold; and the live socket's subscriptions are bounded. One daemon for the
module (the tests use their own sessions and subscriptions)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import zmq

from labd.ipc.connection import events_socket
from labd.ipc.live import live_events
from labd.ipc.wire import Codec, MalformedFrame, WireError, encode_json
from tests.conftest import module_home, running_daemon, wait_until
from tests.integration.impostor import impostor_runner

FIELDS = ("seq", "ts", "kind", "src", "node_id", "parent", "payload", "src_seq")


@pytest.fixture(scope="module")
def shared() -> Iterator[Any]:
    """One daemon and client for the module (the client is made while the module's home is in the environment)."""
    with module_home("llive") as (base, _env), running_daemon(base / "home") as d, d.client() as c:
        yield c


class Tail:
    """A raw subscriber of one session's live tail: keeps each message's body (None: it did not decode)."""

    def __init__(self, c: Any, sid: str) -> None:
        self.sub = events_socket(zmq.Context.instance(), c.info)
        self.sub.setsockopt(zmq.SUBSCRIBE, f"session.{sid}".encode())
        self.sub.connect(c.info.events)
        self.codec = Codec(c.info.key_bytes)
        self.bodies: list[dict[str, Any] | None] = []

    def drain(self, wait_ms: int = 100) -> None:
        """Keep the messages that arrive; the daemon's own (the monitor's samples of the impostor's running session,
        which come when they come) are left out: these tests are about what a runner sent."""
        while self.sub.poll(wait_ms):
            frames = self.sub.recv_multipart()
            try:
                body = self.codec.unpack(frames[1:]).body
            except MalformedFrame:
                self.bodies.append(None)
            except WireError:
                raise
            else:
                evs = live_events(body)
                if not evs or any(e["src"] == "runner" for e in evs):
                    self.bodies.append(body)
            wait_ms = 100

    def events(self) -> list[dict[str, Any]]:
        return [ev for b in self.bodies if b is not None for ev in live_events(b)]


def _send_raw(codec: Codec, s: zmq.Socket, raw: bytes) -> int:
    """Send a body as given (signed with the session's key); returns the ack's ``next``."""
    s.send_multipart([codec.signer.sign(raw), raw])
    assert s.poll(10_000), "no ack"
    ack = codec.unpack(s.recv_multipart())
    assert ack.type == "ack"
    return int(ack.body["next"])


def _send(codec: Codec, s: zmq.Socket, sid: str, evs: list[list[Any]]) -> int:
    """Send events the way the runner's channel does (each encoded once, spliced)."""
    return _send_raw(codec, s, codec.pack_events(sid, [encode_json(ev) for ev in evs])[1])


def _setup(c: Any, suffix: str) -> tuple[str, Codec, zmq.Socket, Tail, int]:
    """An impostor runner for a finished session and a live tail of it that is known to be flowing."""
    sid, codec, s = impostor_runner(c, routing_suffix=suffix)
    nxt = max(e["src_seq"] for e in c.history(sid) if e["src"] == "runner") + 1
    tail = Tail(c, sid)
    for _ in range(100):  # the subscription reaches the daemon asynchronously
        last = nxt
        nxt = _send(codec, s, sid, [[nxt, time.time(), "custom", None, None, {"name": "warm-up"}]])
        tail.drain(200)
        if tail.bodies:
            break
    assert tail.bodies, "the live tail never started"
    # the one that arrived may be an earlier warm-up, late: the last one sent must not arrive after the clear
    wait_until(lambda: tail.drain(50) or any(e["src_seq"] == last for e in tail.events()), timeout=30,
               what="the last warm-up on the live tail")
    tail.bodies.clear()
    return sid, codec, s, tail, nxt


def _stored(c: Any, sid: str, first_seq: int) -> list[dict[str, Any]]:
    """What the runner sent from ``first_seq`` on, as stored (the daemon's own events of the running session left
    out, as :meth:`Tail.drain` leaves them out)."""
    return [e for e in c.history(sid) if e["seq"] >= first_seq and e["src"] == "runner"]


def _same(live: list[dict[str, Any]], stored: list[dict[str, Any]]) -> None:
    assert [[e[k] for k in FIELDS] for e in live] == [[e[k] for k in FIELDS] for e in stored]
    # floats stay floats, bit for bit (-0.0 and 0.1 + 0.2 included)
    assert orjson.dumps([e["payload"] for e in live]) == orjson.dumps([e["payload"] for e in stored])


def test_a_clean_frame_is_published_as_the_runner_sent_it_and_equals_the_store(shared: Any) -> None:
    """A frame of custom, output and log events (node ids, non-ASCII text, floats) that all take the hot path
    is published as one message in the run form (``run``: a seq offset and the runner's array, no per-event items), and
    the events a follower decodes from it equal the stored ones field by field (seq, ts, kind, src, node id,
    parent, payload, src_seq)."""
    c = shared
    if True:
        sid, codec, s, tail, nxt = _setup(c, ":clean")
        first_seq = c.session(sid)["last_seq"] + 1
        now = time.time()
        evs = [
            [nxt, now, "custom", None, None, {"name": "é ✓ 日本", "data": {"f": [0.1 + 0.2, -0.0, 1e-300, 1.5e300]}}],
            [nxt + 1, now + 0.000001, "output", None, None, {"stream": "stdout", "text": "ünïcode \u2028 line\n"}],
            [nxt + 2, now, "log", "n1", None, {"level": "info", "event": "in a step", "x": 3}],
            [nxt + 3, now, "custom", "n1", None, {"name": "n", "data": 12345678901234}],
        ]
        assert _send(codec, s, sid, evs) == nxt + 4
        wait_until(lambda: (tail.drain(), len(tail.events()) >= 4)[1], timeout=30, what="the live copy")
        assert len(tail.bodies) == 1 and tail.bodies[0] is not None
        body = tail.bodies[0]
        assert "events" not in body and isinstance(body["run"][0], int) and len(body["run"][1]) == 4
        _same(tail.events(), _stored(c, sid, first_seq))
        tail.sub.close(0)
        s.close(0)


def test_a_frame_asking_for_an_ack_is_published_in_the_run_form_too(shared: Any) -> None:
    """A runner asks for an ack at once with a key after its events array (``],"ack":true}}``: closing, or a full
    backlog). Such a frame is still published as the runner sent it (the run form, no per-event items), and what
    a follower decodes from it equals the store."""
    c = shared
    sid, codec, s, tail, nxt = _setup(c, ":asks")
    first_seq = c.session(sid)["last_seq"] + 1
    evs = [[nxt, time.time(), "custom", None, None, {"name": "asks", "data": [1, 2.5]}],
           [nxt + 1, time.time(), "output", None, None, {"stream": "stdout", "text": "last words\n"}]]
    raw = codec.pack_events(sid, [encode_json(ev) for ev in evs], ack=True)[1]
    assert raw.endswith(b'],"ack":true}}')
    assert _send_raw(codec, s, raw) == nxt + 2
    wait_until(lambda: (tail.drain(), len(tail.events()) >= 2)[1], timeout=30, what="the live copy")
    assert len(tail.bodies) == 1 and tail.bodies[0] is not None
    assert "events" not in tail.bodies[0] and len(tail.bodies[0]["run"][1]) == 2
    _same(tail.events(), _stored(c, sid, first_seq))
    tail.sub.close(0)
    s.close(0)


def test_crafted_bytes_reach_a_follower_only_as_what_was_stored(shared: Any) -> None:
    """A runner (the same user) may send JSON the daemon's decoding collapses: repeated keys, non-canonical
    numbers, escapes. What a follower decodes from the run form is what the store holds. A frame with two
    ``events`` arrays (the daemon keeps the last) is never shown live as the first: its live message does not
    decode (the follower fills from the store), and the next clean frame is published and decodes normally."""
    c = shared
    if True:
        sid, codec, s, tail, nxt = _setup(c, ":crafted")
        first_seq = c.session(sid)["last_seq"] + 1

        def frame(events: bytes) -> bytes:
            return (b'{"v":1,"id":"%s","ts":%r,"type":"events","body":{"session":"%s","events":%s}}'
                    % (codec.new_id().encode(), time.time(), sid.encode(), events))

        now = repr(time.time()).encode()
        odd = (b'[[%d,%s,"custom",null,null,{"name":"a","name":"b","x":1E2,"y":1.50,"z":123456789012345678901234567890,'
               b'"s":"\\u00e9\\ud83d\\ude00","w":{"k":1,"k":[true,false,null]}}]]' % (nxt, now))
        assert _send_raw(codec, s, frame(odd)) == nxt + 1
        two = (b'[[%d,%s,"custom",null,null,{"name":"FIRST"}]],"events":[[%d,%s,"custom",null,null,{"name":"LAST"}]]'
               % (nxt + 1, now, nxt + 1, now))
        assert _send_raw(codec, s, frame(two)) == nxt + 2
        assert _send(codec, s, sid, [[nxt + 2, time.time(), "custom", None, None, {"name": "after"}]]) == nxt + 3
        wait_until(lambda: (tail.drain(), len(tail.bodies) >= 3)[1], timeout=30, what="the live messages")
        stored = _stored(c, sid, first_seq)
        assert [e["payload"].get("name") for e in stored] == ["b", "LAST", "after"]
        assert stored[0]["payload"] == {"name": "b", "x": 100.0, "y": 1.5, "z": 1.2345678901234568e29, "s": "é😀",
                                        "w": {"k": [True, False, None]}}
        assert tail.bodies[1] is None  # the two-array frame: not valid JSON live, never the FIRST array
        live = tail.events()
        assert [e["payload"]["name"] for e in live] == ["b", "after"]
        _same(live, [stored[0], stored[2]])
        tail.sub.close(0)
        s.close(0)


def test_a_frame_with_a_slow_or_skipped_event_is_published_per_event_in_seq_order(shared: Any) -> None:
    """A frame whose events do not all take the hot path (a rejected event between hot ones; a duplicate ahead of
    new ones) is published in the per-event form, every event once and in seq order, equal to the stored ones
    (the rejection included)."""
    c = shared
    if True:
        sid, codec, s, tail, nxt = _setup(c, ":mixed")
        first_seq = c.session(sid)["last_seq"] + 1
        now = time.time()
        mixed = [[nxt, now, "custom", None, None, {"name": "one"}],
                 [nxt + 1, now, "custom", None, None, {"name": 5}],  # rejected: stored as event.rejected
                 [nxt + 2, now, "output", None, None, {"stream": "stderr", "text": "two"}]]
        assert _send(codec, s, sid, mixed) == nxt + 3
        again = [[nxt + 2, now, "output", None, None, {"stream": "stderr", "text": "two"}],  # a duplicate
                 [nxt + 3, now, "custom", "n9", None, {"name": "three"}]]
        assert _send(codec, s, sid, again) == nxt + 4
        wait_until(lambda: (tail.drain(), len(tail.events()) >= 4)[1], timeout=30, what="the live copy")
        assert all(b is not None and "events" in b and "run" not in b for b in tail.bodies)
        stored = _stored(c, sid, first_seq)
        assert [e["kind"] for e in stored] == ["custom", "event.rejected", "output", "custom"]
        _same(tail.events(), stored)
        tail.sub.close(0)
        s.close(0)


def test_live_subscriptions_are_bounded_and_a_flood_does_not_hide_events(shared: Any) -> None:
    """A same-user peer subscribing to very many distinct prefixes on the live socket: topics that cannot match a
    session (too long, or not under ``session.``) are not kept; past the bound the rest are only counted, and every
    session then counts as followed, so a real follower still gets its events live."""
    from labd.daemon.subscriptions import MAX_TOPICS

    c = shared
    if True:
        flood = events_socket(zmq.Context.instance(), c.info)
        flood.setsockopt(zmq.SNDHWM, 0)  # every subscription reaches the daemon (not cut at the pipe's 1000)
        flood.connect(c.info.events)
        for i in range(100):
            flood.setsockopt(zmq.SUBSCRIBE, b"session." + b"x" * 80 + str(i).encode())  # longer than any topic
            flood.setsockopt(zmq.SUBSCRIBE, b"other.%d" % i)
        for i in range(MAX_TOPICS + 50):
            flood.setsockopt(zmq.SUBSCRIBE, b"session.flood-%d" % i)

        def counters() -> dict[str, int]:
            return c.status()["counters"]  # type: ignore[no-any-return]

        wait_until(lambda: counters().get("live.topics_over", 0) >= 40, timeout=60, what="the bound")
        assert counters().get("live.topics_ignored", 0) >= 200
        sid, codec, s, tail, nxt = _setup(c, ":flooded")  # still flows live (_setup asserts it)
        first_seq = c.session(sid)["last_seq"] + 1
        assert _send(codec, s, sid, [[nxt, time.time(), "custom", None, None, {"name": "seen"}]]) == nxt + 1
        wait_until(lambda: (tail.drain(), len(tail.events()) >= 1)[1], timeout=30, what="the live copy")
        _same(tail.events(), _stored(c, sid, first_seq))
        flood.close(0)
        tail.sub.close(0)
        s.close(0)
