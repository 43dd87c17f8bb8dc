"""Ingest's hot path (custom, log and output events checked inline, payload encoded once for the store and the
live tail) keeps every guarantee of the slow path: invalid events become ``event.rejected`` in their slot, daemon
kinds cannot be forged, and what a follower sees live is exactly what is stored."""

from __future__ import annotations

import time
from typing import Any

import zmq

from labd.ipc.connection import events_socket
from labd.ipc.live import live_events
from labd.ipc.wire import Codec, encode_json
from tests.conftest import wait_until
from tests.integration.impostor import impostor_runner


def _send(codec: Codec, s: zmq.Socket, sid: str, evs: list[list[Any]]) -> int:
    """Send pre-encoded events the way the runner's channel does (spliced, not re-encoded); returns ack.next."""
    s.send_multipart(codec.pack_events(sid, [encode_json(ev) for ev in evs]))
    assert s.poll(10_000), "no ack"
    ack = codec.unpack(s.recv_multipart())
    assert ack.type == "ack"
    return int(ack.body["next"])


def test_hot_path_rejects_what_it_must_and_the_live_copy_is_the_stored_text(daemon) -> None:
    """Events that look like hot-path kinds but break their schema (a custom name that is not a string, a
    payload that is not an object, a node id that is not a string, a timestamp that is not a number), and a
    forged daemon kind, are each stored as ``event.rejected`` in their own ``src_seq`` slot, with ``seq`` and
    ``src_seq`` gap-free; the valid events around them are stored, and a client following the session live
    receives exactly the stored events with the stored payloads (non-ASCII text included)."""
    with daemon.client() as c:
        sid, codec, s = impostor_runner(c, routing_suffix=":hotpath")
        nxt = max(e["src_seq"] for e in c.history(sid) if e["src"] == "runner") + 1
        sub = events_socket(zmq.Context.instance(), c.info)
        sub.setsockopt(zmq.SUBSCRIBE, f"session.{sid}".encode())
        sub.connect(c.info.events)
        live: list[dict[str, Any]] = []
        pub_codec = Codec(c.info.key_bytes)

        def drain(wait_ms: int) -> None:
            while sub.poll(wait_ms):
                frames = sub.recv_multipart()
                live.extend(live_events(pub_codec.unpack(frames[1:]).body))
                wait_ms = 200

        # the subscription reaches the daemon asynchronously: warm up until an event is seen live
        for _ in range(50):
            nxt = _send(codec, s, sid, [[nxt, time.time(), "custom", None, None, {"name": "warm-up"}]])
            drain(200)
            if live:
                break
        assert live, "the live tail never started"
        live.clear()
        first = nxt
        now = time.time()
        evs = [
            [nxt, now, "custom", None, None, {"name": "ok", "data": "é ✓ \u2028 \"quoted\""}],
            [nxt + 1, now, "custom", None, None, {"name": 5}],
            [nxt + 2, now, "custom", None, None, ["not", "an", "object"]],
            [nxt + 3, now, "custom", 7, None, {"name": "bad node"}],
            [nxt + 4, "1.0", "custom", None, None, {"name": "string ts"}],
            [nxt + 5, now, "custom", None, None, {"data": "no name"}],
            [nxt + 6, now, "log", None, None, {"level": 3, "event": "bad level"}],
            [nxt + 7, now, "session.ended", None, None, {"status": "completed"}],
            [nxt + 8, now, "custom", "n1", nxt, {"name": "with parent", "data": {"k": [1, 2.5, None]}}],
            [nxt + 9, now, "output", None, None, {"stream": "stdout", "text": "line\n"}],
            [nxt + 10, now, "custom", "n2", None, {"name": "in a step"}],  # hot path, with a node id
        ]
        assert _send(codec, s, sid, evs) == nxt + 11
        stored = [e for e in c.history(sid) if e["src"] == "runner" and e["src_seq"] >= first]
        assert [e["src_seq"] for e in stored] == list(range(first, first + 11))
        every = list(c.history(sid))
        assert [e["seq"] for e in every] == list(range(1, len(every) + 1))
        assert [e["kind"] for e in stored] == ["custom"] + ["event.rejected"] * 7 + ["custom", "output", "custom"]
        assert [e["payload"]["kind"] for e in stored[1:8]] == ["custom"] * 5 + ["log", "session.ended"]
        assert stored[0]["payload"] == evs[0][5]
        assert stored[8]["payload"] == evs[8][5] and stored[8]["node_id"] == "n1" and stored[8]["parent"] == first
        # rows without node id and parent take their own INSERT (store.writer.PlainRow): both stored as NULL
        assert (stored[0]["node_id"], stored[0]["parent"], stored[9]["node_id"], stored[9]["parent"]) == (None,) * 4
        assert (stored[10]["node_id"], stored[10]["parent"], stored[10]["payload"]) == ("n2", None, evs[10][5])
        assert c.session(sid)["status"] != "completed"  # the forged session.ended changed nothing
        wait_until(lambda: (drain(100), len(live) >= 11)[1], timeout=30, what="the live copies")
        key = ("seq", "kind", "src_seq", "node_id", "parent", "payload")
        assert [[e[k] for k in key] for e in live[:11]] == [[e[k] for k in key] for e in stored]
        sub.close(0)
        s.close(0)
