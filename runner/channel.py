"""The runner's end of the event path: a thread that owns the DEALER socket to the daemon.

Any thread may call :meth:`Channel.emit`; it stamps the next producer sequence number (``src_seq``,
gap-free per runner) and appends to a buffer. The channel thread sends buffered events in batches and
keeps every event until the daemon acknowledges it (``ack`` carries the next ``src_seq`` the daemon
expects). After a reconnect, on a daemon request (``resend``) or when acks stall, it re-sends
everything unacknowledged; the daemon discards what it already has. Memory is bounded: when too many
events are unacknowledged, ``emit`` blocks (back-pressure, never loss).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from labd.ipc.wire import Codec, WireError

__all__ = ["Channel"]

BATCH_EVENTS = 1000
BATCH_BYTES = 512 * 1024
HEARTBEAT_S = 1.0
LINGER_S = 0.02
RESEND_AFTER_S = 5.0


class Channel:
    """Signed, acknowledged, re-sending event channel to the daemon (one per runner process)."""

    def __init__(self, endpoint: str, key: bytes, session_id: str, *, max_unacked: int = 200_000,
                 hello: Callable[[], dict[str, Any]] | None = None, max_message: int | None = None) -> None:
        self.endpoint = endpoint
        self.session_id = session_id
        self._codec = Codec(key) if max_message is None else Codec(key, max_message=max_message)
        self._hello = hello or dict
        self._max_unacked = max_unacked
        self._lock = threading.Condition()
        self._next_seq = 1
        self._pending: list[list[Any]] = []  # emitted, not yet handed to the channel thread
        self._unacked: list[list[Any]] = []  # handed over, in src_seq order, not acknowledged
        self._acked_upto = 0  # every src_seq <= this is committed in the store
        self._send_pos = 0  # index into _unacked of the next event to (re)send
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="labd-channel", daemon=True)
        #: message type -> callable(body), run on the channel thread (cancel, pause, resume, approval.resolved)
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.connected = threading.Event()
        self._was_connected = False
        self._idle = False  # the channel thread is in its long poll: the next emit must wake it
        self._batch_cap = BATCH_EVENTS

    # ---- producer side (any thread) -------------------------------------------------------------
    def emit(self, kind: str, payload: dict[str, Any], node_id: str | None = None,
             parent: int | None = None) -> int:
        """Queue one event; returns its ``src_seq``. Blocks while the unacknowledged backlog is full."""
        with self._lock:
            while len(self._unacked) + len(self._pending) >= self._max_unacked and not self._closing:
                self._lock.wait(0.5)
            seq = self._next_seq
            self._next_seq = seq + 1
            now = time.time()
            # Wake the channel thread only when it sleeps the long (heartbeat) poll: the first event after
            # a quiet spell goes out at once, and events during a burst are picked up by its short timed
            # poll instead: one wake-up per burst rather than per event, so the thread contends far less
            # for the GIL with the workflow (measured: tracking overhead dropped several-fold,
            # docs/benchmarks.md). The thread says under the lock which poll it takes, so no event can
            # wait for the heartbeat timeout (it did: sparse events reached clients in 1 s bursts).
            wake = self._idle
            self._idle = False
            self._pending.append([seq, now, kind, node_id, parent, payload])
        if wake:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:  # pipe full: the thread is already awake
                pass
        return seq

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def start(self) -> None:
        """Connect and send what is buffered from the calling thread (no thread start-up on the path of
        the first event), then hand the sockets over to the channel thread."""
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        # "<session>:<random>": the daemon reads the session from it, and no other process can guess it to
        # take the route over (the route moves only with frames signed with this session's key anyway).
        sock.setsockopt(zmq.ROUTING_ID, f"{self.session_id}:{os.urandom(8).hex()}".encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)  # the pipe exists at once: messages queue until the connection is up
        with self._lock:
            self._unacked.extend(self._pending)
            self._pending = []
        self._flush(sock)
        self._sockets = (ctx, sock, monitor)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> bool:
        """Flush, wait up to ``timeout`` for every event to be acknowledged; True if all were."""
        deadline = time.monotonic() + timeout
        os.write(self._wake_w, b"x")
        with self._lock:
            while (self._pending or self._acked_upto < self._next_seq - 1) and time.monotonic() < deadline:
                self._lock.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            done = not self._pending and self._acked_upto >= self._next_seq - 1
            self._closing = True
            self._lock.notify_all()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2.0)
        return done

    # ---- channel thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        ctx, sock, monitor = self._sockets  # created by start(); used by this thread only from now on
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        last_sent = last_ack = time.monotonic()
        try:
            while True:
                with self._lock:
                    if self._closing:
                        break
                    # While events wait in the buffer, or were sent just now (a burst may go on), poll
                    # briefly; otherwise sleep until a heartbeat is due and let the next emit wake us.
                    busy = bool(self._pending) or time.monotonic() - last_sent < LINGER_S
                    timeout = LINGER_S if busy else HEARTBEAT_S
                    self._idle = not busy
                events = dict(poller.poll(int(timeout * 1000)))
                now = time.monotonic()
                if monitor in events:
                    self._on_monitor(monitor, sock)
                if self._wake_r in events:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    if not busy and sock not in events:
                        # Woken from the long poll by an emit: linger once, so the rest of its burst (a
                        # step's start, output and end come together) goes out in the same frame.
                        continue
                if sock in events:
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if self._on_message(frames):
                            last_ack = now
                with self._lock:
                    if self._pending:
                        self._unacked.extend(self._pending)
                        self._pending = []
                    stalled = self._send_pos > 0 and now - last_ack > RESEND_AFTER_S
                    if stalled:  # acks stopped coming: assume the daemon lost them, send again
                        self._send_pos = 0
                        last_ack = now
                if self._flush(sock):
                    last_sent = now
                if now - last_sent > HEARTBEAT_S and self.connected.is_set():
                    self._send(sock, "heartbeat", {"session": self.session_id, "last_seq": self.last_seq})
                    last_sent = now
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            ctx.term()

    def _on_monitor(self, monitor: zmq.Socket, sock: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                evt = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if evt["event"] == zmq.EVENT_CONNECTED:
                # Introduce ourselves. On a *re*connect (a new daemon), also resend all that is
                # unacknowledged; on the first connect, what was queued before it is delivered anyway.
                self._send(sock, "hello", {"session": self.session_id, "last_seq": self.last_seq,
                                           **self._hello()})
                if self._was_connected:
                    with self._lock:
                        self._send_pos = 0
                self._was_connected = True
                self.connected.set()
            elif evt["event"] == zmq.EVENT_DISCONNECTED:
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
                drop = max(0, min(nxt - 1 - self._acked_upto, len(self._unacked)))
                if drop:
                    del self._unacked[:drop]
                    self._acked_upto += drop
                    self._send_pos = max(0, self._send_pos - drop)
                if msg.body.get("resend"):
                    self._send_pos = 0
                self._lock.notify_all()
            return True
        handler = self.handlers.get(msg.type)
        if handler is not None:
            handler(msg.body)
        return False

    def _flush(self, sock: zmq.Socket) -> bool:
        """Send unsent events in batches without blocking; True if anything was sent."""
        sent = False
        while True:
            with self._lock:
                start = self._send_pos
                batch = _size_bounded(self._unacked[start:start + self._batch_cap])
                self._batch_cap = BATCH_EVENTS
            if not batch:
                return sent
            frames = self._codec.pack("events", {"session": self.session_id, "events": batch})
            if len(frames[1]) > self._codec.max_message:
                self._shrink(start, batch)
                continue
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                return sent
            sent = True
            with self._lock:
                if self._send_pos == start:
                    self._send_pos = start + len(batch)

    def _shrink(self, start: int, batch: list[list[Any]]) -> None:
        """A batch too large for one message: send fewer events; a single event too large to send at all
        is replaced by an ``event.truncated`` marker (otherwise it would be re-sent forever)."""
        if len(batch) > 1:
            self._batch_cap = max(1, len(batch) // 2)
            return
        seq, ts, kind, node_id, parent, _payload = batch[0]
        size = len(self._codec.pack("events", {"session": self.session_id, "events": batch})[1])
        with self._lock:
            if self._unacked and self._send_pos == start:
                self._unacked[start] = [seq, ts, "event.truncated", node_id, parent, {"kind": kind, "size": size}]

    def _send(self, sock: zmq.Socket, type_: str, body: dict[str, Any]) -> bool:
        try:
            sock.send_multipart(self._codec.pack(type_, body), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False


def _size_bounded(batch: list[list[Any]]) -> list[list[Any]]:
    """Cut a batch so its text payloads stay under BATCH_BYTES (output chunks can be large)."""
    total = 0
    for i, ev in enumerate(batch):
        text = ev[5].get("text") if isinstance(ev[5], dict) else None
        total += 64 + (len(text) if isinstance(text, str) else 0)
        if total > BATCH_BYTES and i > 0:
            return batch[:i]
    return batch
