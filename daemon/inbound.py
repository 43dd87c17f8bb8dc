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
import threading
import time
from typing import Any

import zmq

__all__ = ["Ceiling", "COOLDOWN_MAX_S", "COOLDOWN_S", "CONTROL_RCVHWM", "RUNNER_RCVHWM", "auto_ceiling", "bind_control",
           "bind_runners", "bound", "rebind", "resident_bytes", "TcpRebind"]

#: finished messages libzmq may hold per runner connection before it stops reading from it (backpressure)
RUNNER_RCVHWM = 32
#: ... per client connection: requests are answered in order, so a client that sends more than this without reading
#: replies is only slowed down; a flood of 32 MiB messages with bad signatures is held to 8 per connection
CONTROL_RCVHWM = 8
#: the time between two resets unless the memory grows again (Ceiling): a ceiling set below what the daemon
#: legitimately uses must not turn into a reset every tick
COOLDOWN_S = 30.0
#: ... doubled after each reset that freed too little, up to this
COOLDOWN_MAX_S = 600.0

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
    seconds (a read of /proc/self/statm: a few microseconds; a flood at ~1 GB/s overshoots by ~0.1 GB).

    After a reset the next one waits for the cooldown (:data:`COOLDOWN_S`), unless the memory *grows* again by a
    quarter of the limit over the lowest it fell to since: a flooder that reconnects at once is cut off again, while
    a daemon that legitimately sits above a ceiling set too low is not reset every tick. A reset that did not bring
    the memory under the limit (the lowest since it stayed above) doubles the cooldown, up to :data:`COOLDOWN_MAX_S`,
    and is reported (:attr:`futile`): dropping connections does not free what holds that memory."""

    def __init__(self, limit: int | None, *, every: float = 0.1, cooldown: float = COOLDOWN_S,
                 read: Any = resident_bytes) -> None:
        self.limit, self.every, self.base_cooldown, self._read = limit, every, cooldown, read
        self.cooldown = cooldown
        self._next = 0.0
        self._cool_until = 0.0
        self._low: int | None = None  # the lowest figure since the last reset (None: no reset yet)
        self.resets = 0
        self.futile = False  # the last reset left the memory above the limit
        self.last_rss: int | None = None

    def due(self, now: float | None = None) -> bool:
        """True when a reset is due now (see the class docstring)."""
        if self.limit is None:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        self._next = now + self.every
        rss = self.last_rss = self._read()
        if rss is None:
            return False
        if self._low is not None:
            self._low = min(self._low, rss)
        if rss <= self.limit:
            return False
        regrown = self._low is not None and rss - self._low >= self.limit // 4
        if now < self._cool_until and not regrown:
            return False
        self.futile = self._low is not None and self._low > self.limit and not regrown
        self.cooldown = min(COOLDOWN_MAX_S, 2 * self.cooldown) if self.futile else self.base_cooldown
        self._cool_until = now + self.cooldown
        self._low = rss
        self.resets += 1
        return True


def bind_control(z: zmq.Context, endpoint: str, max_message: int) -> zmq.Socket:
    """The control socket: a ROUTER for clients' requests, bound to ``endpoint``."""
    sock = z.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message)
    sock.setsockopt(zmq.RCVHWM, CONTROL_RCVHWM)
    return bound(sock, endpoint)


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
    return bound(sock, endpoint)


def bound(sock: zmq.Socket, endpoint: str) -> zmq.Socket:
    """``sock`` bound to ``endpoint``; closed if it cannot be (no descriptor left, the address taken)."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock


def rebind(old: zmq.Socket, poller: zmq.Poller, bind: Any) -> zmq.Socket | None:
    """A new socket from ``bind()`` on ``old``'s endpoint, registered with ``poller`` in its place, and ``old``
    closed (every connection, and all libzmq held for them); None if the new socket cannot be made, e.g. at the
    descriptor limit: ``old`` is then kept, and the caller tries again at the next reset. The new socket is bound
    before the old one closes: an ``ipc://`` bind takes the path over (libzmq removes the file and binds anew, and
    closing the old socket leaves the new file in place), and a failure leaves the daemon its working socket.
    (Not for ``tcp://``: the port is the old socket's until it closes.)"""
    try:
        new = bind()
    except zmq.ZMQError:
        return None
    poller.unregister(old)
    old.close(0)
    poller.register(new, zmq.POLLIN)
    return new


class TcpRebind:
    """The memory ceiling's reset for a thread that owns ``tcp://`` sockets (the TCP gateways: daemon/gateway.py,
    daemon/runner_gateway.py): asked from the main loop (:meth:`request`), done on the owner's thread (:meth:`due`,
    :meth:`renew`). A TCP port cannot be bound twice, so an old socket closes first and its new one binds once
    libzmq has let the port go (tried again each pass until it can: meanwhile remote peers reconnect in vain, and
    nothing else is lost)."""

    def __init__(self) -> None:
        self._asked = threading.Event()
        self._retrying = False  # a socket could not be bound again yet: only the missing ones are tried
        self._settled = threading.Event()  # no reset asked, or the last one asked is done
        self._settled.set()
        self._lock = threading.Lock()
        self._asks = 0  # resets asked so far: one asked while another is done is done again after it

    def request(self) -> None:
        with self._lock:
            self._asks += 1
            self._settled.clear()
            self._asked.set()

    def settled(self, timeout: float) -> bool:
        """Wait until every reset asked so far is done (the old connections dropped, the ports bound again); False
        after ``timeout`` seconds. A client acting after a revocation's answer then meets the new sockets, not old
        ones about to be closed under its request (which got no answer: a CI run)."""
        return self._settled.wait(timeout)

    def due(self) -> bool:
        return self._asked.is_set()

    def renew(self, socks: list[zmq.Socket | None], poller: zmq.Poller, makes: list[Any],
              endpoints: list[str]) -> list[zmq.Socket | None]:
        """The owner's sockets replaced by new ones from ``makes`` bound to ``endpoints`` and registered with
        ``poller`` (the old ones closed: every connection dropped); after a failed attempt, only the missing
        (None) ones. A socket whose port cannot be bound yet is None; :meth:`due` stays true until all are bound."""
        first = not self._retrying
        with self._lock:
            asks = self._asks
        out = [self._redo(old, poller, make, endpoint, 2.0 if first else 0.1) if first or old is None else old
               for old, make, endpoint in zip(socks, makes, endpoints, strict=True)]
        self._retrying = any(s is None for s in out)
        if not self._retrying:
            with self._lock:
                if asks == self._asks:  # else another reset was asked meanwhile: due again
                    self._asked.clear()
                    self._settled.set()
        return out

    @staticmethod
    def _redo(old: zmq.Socket | None, poller: zmq.Poller, make: Any, endpoint: str, wait: float) -> zmq.Socket | None:
        if old is not None:
            poller.unregister(old)
            old.close(0)
        deadline = time.monotonic() + wait
        while True:
            sock = make()
            try:
                sock.bind(endpoint)
            except zmq.ZMQError:
                sock.close(0)
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)  # the port is released by libzmq's I/O thread
                continue
            poller.register(sock, zmq.POLLIN)
            return sock
