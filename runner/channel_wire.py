"""The channel thread's side facing the daemon: connecting, when unsent events are due, sending batches, reading
acks and control messages, reconnects.

A mixin of :class:`labd.runner.channel.Channel` (its methods run on the channel thread, under the channel's lock
where they touch shared state); split from the producer side and the thread's loop because it is a concern of its
own: what goes on the wire and what comes back. The daemon acknowledges at most every 0.25 s per session unless a
frame asks (``"ack": true``, docs/protocol.md §7): the channel asks while closing and when its backlog is a quarter
full.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import zmq

from labd.ipc.wire import Codec, WireError, encode_json
from labd.runner import pacing
from labd.runner import spool as spool_file
from labd.runner.pacing import Pacer, size_bounded
from labd.runner.spool import Spool

__all__ = ["ChannelWire", "SEND_QUEUE", "too_large"]

#: messages ZeroMQ holds for the daemon at most (its SNDHWM): each is a batch of up to 512 KiB (runner/pacing.py)
SEND_QUEUE = 64
#: unacknowledged bytes past which a message asks for its ack at once (a quarter of emit's bound, as for events)
_PROMPT_BYTES = 16 << 20

_MONITOR_HEAD = struct.Struct("=Hi")


class ChannelWire:
    """Sending and receiving for :class:`~labd.runner.channel.Channel` (see the module docstring)."""

    # provided by Channel
    session_id: str
    _codec: Codec
    _hello: Callable[[], dict[str, Any]]
    _lock: threading.Condition
    _spool: Spool | None
    _pending: list[bytes]
    _q: list[bytes]
    _times: list[float]
    _acked_upto: int
    _send_pos: int
    _unsent_bytes: int
    _q_bytes: int
    _force: bool
    _ack_now: bool
    _ack_asked: bool
    _prompt_backlog: int
    _batch_cap: int
    _pacer: Pacer
    _last_send: float
    _urgent_seq: int
    _curve: dict[str, str] | None
    endpoint: str
    _was_connected: bool
    sends: int
    connected: threading.Event
    handlers: dict[str, Callable[[dict[str, Any]], None]]

    @property
    def last_seq(self) -> int:
        raise NotImplementedError

    def _due_at(self, now: float) -> float | None:
        """When the unsent events must leave (``now`` if at once); None if nothing is unsent (lock held)."""
        pos = self._send_pos
        if pos >= len(self._q):
            return None
        if self._force or self._unsent_bytes >= pacing.BULK_BYTES or len(self._q) - pos >= pacing.BATCH_EVENTS:
            return now
        bulk_due = self._times[pos] + pacing.BULK_DELAY_S
        if self._urgent_seq >= self._acked_upto + 1 + pos:
            return min(bulk_due, self._pacer.due(now))
        return bulk_due

    def _connect(self) -> tuple[zmq.Context, zmq.Socket, zmq.Socket]:
        """Create the context and socket and connect (the channel thread's first step; messages queue until the
        connection is up)."""
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        # Unique per connection: the daemon routes to the last validly signed one (no hijack by routing id).
        sock.setsockopt(zmq.ROUTING_ID, f"{self.session_id}:{os.urandom(8).hex()}".encode())
        sock.setsockopt(zmq.LINGER, 0)
        # Few messages wait in ZeroMQ: each resend copies the unacknowledged events into new ones, and while the daemon
        # reads nothing (its store unwritable) 1,000 of them (of up to 512 KiB) piled up in the session's own memory,
        # counted against its --memory (an admin's review: 30 MB of output, a peak of 309 MB). A full queue only
        # makes the thread wait for room (_flush), as it would for the socket
        sock.setsockopt(zmq.SNDHWM, SEND_QUEUE)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self._curve:  # before connect: the handshake authenticates us and the daemon (docs/protocol.md)
            sock.curve_serverkey = self._curve["server_public"].encode()
            sock.curve_publickey = self._curve["public"].encode()
            sock.curve_secretkey = self._curve["secret"].encode()
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)  # the pipe exists at once: messages queue until the connection is up
        return ctx, sock, monitor

    def _resend(self) -> None:
        """Send everything unacknowledged again, now (lock held)."""
        self._send_pos = 0
        self._unsent_bytes = sum(len(r) for r in self._q)
        self._force = True

    def _trim_spool(self) -> None:
        """Let the spool shed what is acknowledged (:meth:`Spool.behind_acks`); run on the channel thread after acks."""
        spool = self._spool
        if spool is None or spool.size < spool_file.SPOOL_TRUNCATE_BYTES:  # the common case, without the lock
            return
        with self._lock:
            if self._spool is not None:
                self._spool.behind_acks(self._acked_upto + 1, self._q, self._pending)

    def _on_monitor(self, monitor: zmq.Socket, sock: zmq.Socket) -> None:
        while True:
            try:
                evt = _monitor_event(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if evt == zmq.EVENT_CONNECTED:
                # Introduce ourselves. On a *re*connect (a new daemon), also resend all that is
                # unacknowledged; on the first connect, what was queued before it is delivered anyway.
                self._send(sock, "hello", {"session": self.session_id, "last_seq": self.last_seq,
                                           **self._hello()})
                if self._was_connected:
                    with self._lock:
                        self._resend()
                self._was_connected = True
                self.connected.set()
            elif evt == zmq.EVENT_DISCONNECTED:
                self.connected.clear()

    def _on_message(self, frames: list[bytes]) -> bool:
        try:
            msg = self._codec.unpack(frames)
        except WireError:
            return False  # a forged or stale frame: ignore it
        if msg.type == "ack":
            nxt = msg.body.get("next")
            if not isinstance(nxt, int):
                return False
            with self._lock:
                drop = max(0, min(nxt - 1 - self._acked_upto, len(self._q)))
                if drop:
                    if drop > self._send_pos:  # acknowledged before we (re)sent them
                        self._unsent_bytes -= sum(len(r) for r in self._q[self._send_pos:drop])
                    self._q_bytes -= sum(map(len, self._q[:drop]))
                    del self._q[:drop]
                    del self._times[:drop]
                    self._acked_upto += drop
                    self._send_pos = max(0, self._send_pos - drop)
                if msg.body.get("resend"):
                    self._resend()
                self._lock.notify_all()
            return True
        handler = self.handlers.get(msg.type)
        if handler is not None:
            handler(msg.body)
        return False

    def _flush(self, sock: zmq.Socket, now: float) -> tuple[bool, bool]:
        """Send what is due, in batches, without blocking; returns (anything sent, send queue full)."""
        sent = False
        while True:
            with self._lock:
                due = self._due_at(now)
                if due is None or due > now:
                    if due is None:
                        self._force = False
                        if self._ack_now and not self._ack_asked and self._q:  # all sent, acks outstanding
                            self._ack_asked = True
                            self._ask_for_ack(sock)
                    return sent, False
                start = self._send_pos
                batch, nbytes = size_bounded(self._q[start:start + self._batch_cap])
                self._batch_cap = pacing.BATCH_EVENTS
                prompt = self._ack_now or len(self._q) + len(self._pending) >= self._prompt_backlog \
                    or self._q_bytes >= _PROMPT_BYTES  # an emit may wait at MAX_UNACKED_BYTES: not for a paced ack
                if self._ack_now:
                    self._ack_asked = True
            frames = self._codec.pack_events(self.session_id, batch, ack=prompt)
            if len(frames[1]) > self._codec.max_message:
                self._shrink(start, batch)
                continue
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                return sent, True
            sent = True
            self.sends += 1
            self._last_send = time.monotonic()
            with self._lock:
                self._pacer.spent(self._last_send)
                if self._send_pos == start:
                    self._send_pos = start + len(batch)
                    self._unsent_bytes -= nbytes
                    if self._send_pos >= len(self._q):
                        self._force = False

    def _ask_for_ack(self, sock: zmq.Socket) -> None:
        """An events message without events that asks for an ack at once (the daemon acks it like any)."""
        try:
            sock.send_multipart(self._codec.pack_events(self.session_id, [], ack=True), zmq.NOBLOCK)
        except zmq.Again:  # the send queue is full: the daemon's paced ack comes anyway
            pass

    def _shrink(self, start: int, batch: list[bytes]) -> None:
        """A batch too large for one message: send fewer events; a single event too large to send at all
        is replaced by an ``event.truncated`` marker (otherwise it would be re-sent forever). The spool
        keeps the whole event: if the daemon reads it from there, it stores it whole."""
        if len(batch) > 1:
            self._batch_cap = max(1, len(batch) // 2)
            return
        seq, ts, kind, node_id, parent, payload = orjson.loads(batch[0])
        size = len(batch[0])
        if kind == "session.finished" and isinstance(payload, dict) and isinstance(payload.get("outcome"), str):
            # the session's outcome is what matters: recorded without what made it too large (the runner checks the
            # size before it emits, runner/session.py finished_payload; this catches what it could not foresee)
            outcome, error = payload["outcome"], payload.get("error")
            why = too_large(size, self.event_room())
            if outcome != "completed" and isinstance(error, str):
                text = error if len(error) <= 512 else f"{error[:512]}... [the rest not recorded: {why}]"
            else:
                text = f"{'result' if outcome == 'completed' else 'error'} not recorded: {why}"
            marker = encode_json([seq, ts, kind, node_id, parent, {"outcome": outcome, "error": text}])
        else:
            marker = encode_json([seq, ts, "event.truncated", node_id, parent, {"kind": kind, "size": size}])
        with self._lock:
            if self._q and self._send_pos == start:
                self._unsent_bytes += len(marker) - len(self._q[start])
                self._q_bytes += len(marker) - len(self._q[start])
                self._q[start] = marker

    def event_room(self) -> int:
        """The most bytes one encoded event may take and still be sent: the daemon's message limit (``max_message``)
        less the envelope of an ``events`` message carrying it alone (and a margin: ids and timestamps vary in
        length). A larger event is replaced by a marker when it is sent (:meth:`_shrink`)."""
        envelope = len(self._codec.pack_events(self.session_id, [], ack=True)[1])
        return self._codec.max_message - envelope - 64

    def _send(self, sock: zmq.Socket, type_: str, body: dict[str, Any]) -> bool:
        try:
            sock.send_multipart(self._codec.pack(type_, body), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False


def _monitor_event(frames: list[bytes]) -> int:
    """The event id of a ZeroMQ socket-monitor message (first frame: 16-bit event id, 32-bit value; libzmq's
    zmq_socket_monitor). Decoded here rather than with ``zmq.utils.monitor``, which imports ``zmq.asyncio``:
    its first import in a runner took 2-4 ms on the channel thread, between the runner's first events and their
    send (docs/design.md, "First output"). 0 for a message of another shape (none is expected)."""
    if len(frames) != 2 or len(frames[0]) != 6:
        return 0
    return int(_MONITOR_HEAD.unpack(frames[0])[0])


def too_large(size: int, room: int) -> str:
    """Why an event was not sent whole: its encoded ``size`` against the ``room`` one event has
    (:meth:`ChannelWire.event_room`); said the same by the runner's own check and by the channel's backstop."""
    return (f"too large ({size:,} bytes as an event; one event may take at most {room:,} bytes: the daemon's "
            "max_message less the message's envelope)")
