"""What both TCP endpoints share (the client gateway, :mod:`labd.daemon.gateway`, and the runner gateway,
:mod:`labd.daemon.runner_gateway`): a CURVE server socket, and relays from a TCP ROUTER to a local ``ipc://``
socket, one DEALER per remote peer, closed when idle.

Each remote peer (a ROUTER routing id) gets its own DEALER connected to the local socket, so the local side sees
one connection per peer and its replies come back to the right one. A relay unused for ``idle_s`` is closed;
with ``max_relays`` the least recently used is closed to make room. Both gateways drive :class:`Relays` from
their one thread (the sockets are not thread-safe).
"""

from __future__ import annotations

import time

import zmq

__all__ = ["Relays", "curve_server_socket"]


def curve_server_socket(ctx: zmq.Context, kind: int, public: bytes, secret: bytes, domain: str,
                        max_message: int) -> zmq.Socket:
    """A socket of ``kind`` that is a CURVE server with the daemon's keypair, authenticated by the ZAP handler of
    ``domain``; a message over twice ``max_message`` (a signed envelope around a maximal body) drops the peer."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_server = True
    s.curve_publickey = public
    s.curve_secretkey = secret
    s.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    s.setsockopt(zmq.MAXMSGSIZE, 2 * max_message)
    return s


class Relays:
    """Routing id -> DEALER relay to ``local``; the relay sockets are registered on ``poller``.

    ``keep_identity``: the DEALER connects with the remote peer's routing id as its own, so the local ROUTER sees
    the same identity (the runner gateway: ingest keys runners by it); otherwise the local side picks one.
    """

    def __init__(self, ctx: zmq.Context, poller: zmq.Poller, local: str, idle_s: float,
                 max_relays: int | None = None, keep_identity: bool = False) -> None:
        self.ctx, self.poller, self.local = ctx, poller, local
        self.idle_s, self.max_relays, self.keep_identity = idle_s, max_relays, keep_identity
        self._relays: dict[bytes, tuple[zmq.Socket, float]] = {}  # routing id -> (dealer, last used)
        self._owner: dict[zmq.Socket, bytes] = {}

    def __len__(self) -> int:
        return len(self._relays)

    def send(self, ident: bytes, frames: list[bytes]) -> None:
        """Pass ``frames`` from the remote peer ``ident`` to the local socket, through its relay (made if new)."""
        relay = self._relays.get(ident)
        if relay is None:
            if self.max_relays is not None and len(self._relays) >= self.max_relays:
                self._drop(min(self._relays, key=lambda i: self._relays[i][1]))
            sock = self.ctx.socket(zmq.DEALER)
            try:
                sock.setsockopt(zmq.LINGER, 0)
                if self.keep_identity:
                    sock.setsockopt(zmq.ROUTING_ID, ident)
                sock.connect(self.local)
            except zmq.ZMQError:  # e.g. no file descriptor left: the caller reports it, the socket is not kept
                sock.close(0)
                raise
            self.poller.register(sock, zmq.POLLIN)
            self._owner[sock] = ident
            relay = (sock, 0.0)
        self._relays[ident] = (relay[0], time.monotonic())
        relay[0].send_multipart(frames)

    def reply(self, ready: dict[zmq.Socket, int], router: zmq.Socket) -> None:
        """Pass every reply waiting on a ready relay back to its remote peer through ``router``."""
        for sock in [s for s in ready if s in self._owner]:
            ident = self._owner[sock]
            while True:
                try:
                    reply = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    router.send_multipart([ident, *reply], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the remote peer is gone (a client retries, a runner re-sends what was not acknowledged)

    def sweep(self) -> None:
        """Close the relays unused for ``idle_s``."""
        now = time.monotonic()
        for ident, (_sock, last) in list(self._relays.items()):
            if now - last > self.idle_s:
                self._drop(ident)

    def close(self) -> None:
        for sock in self._owner:
            sock.close(0)
        self._relays.clear()
        self._owner.clear()

    def _drop(self, ident: bytes) -> None:
        sock, _ = self._relays.pop(ident)
        self._owner.pop(sock, None)
        self.poller.unregister(sock)
        sock.close(0)
