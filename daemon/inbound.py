"""The daemon's inbound sockets (control, runners) and the bound on what their peers can make it hold.

libzmq keeps every frame of a message until its last frame arrives, and nothing bounds that: ``MAXMSGSIZE`` caps one
frame, the high-water marks count finished messages. A peer that sends frames flagged "more" and never a last one
(raw ZMTP on ``control.sock``, or a session's own code on ``runners.sock``: no key is needed for either) grew the
daemon by 1 GB per connection in an attack review, and nothing the daemon reads ever shows it. Each connection's
finished messages are bounded by a small receive high-water mark (``RCVHWM`` x ``MAXMSGSIZE``), but the unfinished
one only by closing its connection, and libzmq does not say which connection holds it.

So the daemon watches its own resident memory (:class:`Ceiling`, ``[daemon] memory_ceiling``): past the ceiling it
closes both inbound sockets and binds them again (:func:`rebind`), which drops every connection and what libzmq held
for them, and hands the freed memory back to the kernel (:func:`labd.daemon.memory.trim`). Clients and runners
reconnect by themselves (ZeroMQ does): a runner says hello and re-sends what the daemon had not acknowledged
(exactly once: the daemon drops what it already has), a client's request in flight gets no reply and its caller
retries or times out. Legitimate use stays far below the ceiling (the daemon is ~100 MB with 500 sessions), so a
reset means someone sent what no client sends; it is logged, counted (``daemon.status`` counter
``inbound_resets``), and at most one happens per :data:`COOLDOWN_S`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

__all__ = ["Ceiling", "COOLDOWN_S", "CONTROL_RCVHWM", "RUNNER_RCVHWM", "auto_ceiling", "bind_control",
           "bind_runners", "rebind", "resident_bytes"]

#: finished messages libzmq may hold per runner connection before it stops reading from it (backpressure)
RUNNER_RCVHWM = 32
#: ... per client connection: requests are answered in order, so a client that sends more than this without reading
#: replies is only slowed down; a flood of 32 MiB messages with bad signatures is held to 8 per connection
CONTROL_RCVHWM = 8
#: the shortest time between two resets: a ceiling set below what the daemon legitimately uses must not turn into a
#: reset every tick
COOLDOWN_S = 30.0

_PAGE = os.sysconf("SC_PAGE_SIZE")


def auto_ceiling() -> int:
    """The default ceiling: a quarter of this machine's memory, at least 1 GiB and at most 4 GiB."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * _PAGE
    except (ValueError, OSError):
        ram = 8 << 30
    return max(1 << 30, min(4 << 30, ram // 4))


def resident_bytes() -> int | None:
    """This process's resident set size (``/proc/self/statm``: one small read); None where unreadable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class Ceiling:
    """Is a reset of the inbound sockets due? ``limit`` bytes of resident memory, checked at most every ``every``
    seconds (a read of /proc/self/statm: a few microseconds; a flood at ~1 GB/s overshoots by ~0.1 GB); after a
    reset, not again for :data:`COOLDOWN_S`."""

    def __init__(self, limit: int | None, *, every: float = 0.1, cooldown: float = COOLDOWN_S,
                 read: Any = resident_bytes) -> None:
        self.limit, self.every, self.cooldown, self._read = limit, every, cooldown, read
        self._next = 0.0
        self.resets = 0
        self.last_rss: int | None = None

    def due(self, now: float | None = None) -> bool:
        """True when the resident memory is over the limit (and no reset happened within the cooldown)."""
        if self.limit is None:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        self._next = now + self.every
        rss = self.last_rss = self._read()
        if rss is None or rss <= self.limit:
            return False
        self._next = now + self.cooldown
        self.resets += 1
        return True


def bind_control(z: zmq.Context, endpoint: str, max_message: int) -> zmq.Socket:
    """The control socket: a ROUTER for clients' requests, bound to ``endpoint``."""
    sock = z.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message)
    sock.setsockopt(zmq.RCVHWM, CONTROL_RCVHWM)
    sock.bind(endpoint)
    return sock


def bind_runners(z: zmq.Context, endpoint: str, max_message: int) -> zmq.Socket:
    """The runners' socket: a ROUTER every session's runner connects to, bound to ``endpoint``."""
    sock = z.socket(zmq.ROUTER)
    # A reconnecting runner takes over its (unguessable, see runner_session) routing id. Routing ids
    # are never trusted: replies go to the id of the last frame signed with the session's key.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to an unconnected runner raises, not drops
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message)
    sock.setsockopt(zmq.RCVHWM, RUNNER_RCVHWM)
    sock.bind(endpoint)
    return sock


def rebind(old: zmq.Socket, poller: zmq.Poller, bind: Any) -> zmq.Socket:
    """Close ``old`` (every connection, and all libzmq held for them) and return ``bind()``, a new socket on the
    same endpoint, registered with ``poller`` in its place. (An ``ipc://`` bind replaces the socket file: libzmq
    removes a leftover file before it binds, and closing a socket leaves its file in place.)"""
    poller.unregister(old)
    old.close(0)
    new = bind()
    poller.register(new, zmq.POLLIN)
    return new
