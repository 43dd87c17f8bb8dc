"""The relays both TCP gateways use (labd.daemon.curve_relay), on real ipc sockets: one DEALER per remote peer,
replies routed back to the right peer, the peer's identity kept when asked, idle relays closed and the least
recently used one closed to make room."""

from __future__ import annotations

from pathlib import Path

import zmq

from labd.daemon.curve_relay import Relays
from tests.conftest import wait_until


def _pump(poller: zmq.Poller, front: zmq.Socket, relays: Relays, local: zmq.Socket) -> None:
    """One turn of a gateway loop, with ``local`` echoing what it receives (as the daemon replies)."""
    ready = dict(poller.poll(50))
    if front in ready:
        frames = front.recv_multipart()
        relays.send(frames[0], frames[1:])
    while local.poll(0):
        ident, *body = local.recv_multipart()
        local.send_multipart([ident, b"re:" + body[0], ident])
    relays.reply(ready, front)


def test_relays_route_replies_keep_identity_and_close_idle_and_oldest(tmp_path: Path) -> None:
    """Two remote peers each get their own relay and only their own replies, and the local side sees the peers' own
    routing ids (``keep_identity``); with ``max_relays=2`` a third peer closes the least recently used relay; with
    no idle time left every relay is swept."""
    ctx = zmq.Context()
    front, local = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for s in (front, local):
        s.setsockopt(zmq.LINGER, 0)
    front.bind(f"ipc://{tmp_path}/f.sock")
    local.bind(f"ipc://{tmp_path}/l.sock")
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    relays = Relays(ctx, poller, f"ipc://{tmp_path}/l.sock", idle_s=3600, max_relays=2, keep_identity=True)
    peers = {}
    try:
        for name in (b"s1:a", b"s2:b", b"s3:c"):
            peer = peers[name] = ctx.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            peer.setsockopt(zmq.ROUTING_ID, name)
            peer.connect(f"ipc://{tmp_path}/f.sock")
        for name in (b"s1:a", b"s2:b"):
            peers[name].send(b"hello " + name)
        got: dict[bytes, list[bytes]] = {}

        def replies() -> bool:
            _pump(poller, front, relays, local)
            for name, peer in peers.items():
                while peer.poll(0):
                    got.setdefault(name, []).append(b"|".join(peer.recv_multipart()))
            return len(got) == 2

        wait_until(replies, timeout=30)
        assert got == {b"s1:a": [b"re:hello s1:a|s1:a"], b"s2:b": [b"re:hello s2:b|s2:b"]}
        assert len(relays) == 2
        peers[b"s3:c"].send(b"third")
        def third_answered() -> bool:
            _pump(poller, front, relays, local)
            return bool(peers[b"s3:c"].poll(0))

        wait_until(third_answered, timeout=30)
        assert len(relays) == 2 and b"s1:a" not in relays._relays  # noqa: SLF001 - the oldest went
        relays.idle_s = -1
        relays.sweep()
        assert len(relays) == 0
    finally:
        relays.close()
        for s in (front, local, *peers.values()):
            s.close(0)
        ctx.term()
