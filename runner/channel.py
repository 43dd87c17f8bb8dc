"""The runner's end of the event path: a durable spool plus a thread that owns the DEALER socket.

Any thread may call :meth:`Channel.emit`. Under one lock it stamps the next producer sequence number
(``src_seq``, gap-free per runner), encodes the event once, appends it to the session's spool file
(:mod:`labd.runner.spool`; from then on a SIGKILL of the runner loses nothing) and hands it to the
channel thread. The thread sends from there and keeps every event until the daemon acknowledges it
(``ack`` carries the next ``src_seq`` the daemon expects); the spool is truncated or compacted behind
the acks. After a reconnect, on a daemon request (``resend``) or when acks stall, it re-sends everything
unacknowledged; the daemon discards what it already has. When the runner ends with events still
unacknowledged (no daemon, or a store outage), they stay in the spool and the daemon ingests them.

Two speeds (:mod:`labd.runner.pacing` decides when events leave): an urgent emit wakes the thread at once (one
wake-up per burst: no write to the wake pipe while one is pending) and it sends everything up to the urgent event;
bulk tracking kinds wait for company, so a busy agent workflow pays for a few sends per 100 ms, not one per event.
For :data:`~labd.runner.pacing.BULK_TICK_S` after a send the thread sleeps armed in ticks of the bulk delay, so a
steady stream of bulk events wakes it not at all.
No wake-up is lost: the thread decides how long to sleep under the same lock in which ``emit`` decides
whether to wake it (see ``_run``). Memory is bounded: when too many events are unacknowledged, ``emit``
blocks (back-pressure, never loss).

This module is the producer side and the thread's loop; what goes on the wire and what comes back (batches,
acks, control messages, reconnects) is :mod:`labd.runner.channel_wire`, a mixin of :class:`Channel`.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import zmq

from labd.ipc.wire import Codec, PayloadError, encode_json, json_fallback
from labd.runner import pacing
from labd.runner.channel_wire import ChannelWire
from labd.runner.outputcap import OutputCap
from labd.runner.pacing import URGENT_GAP_S, URGENT_KINDS, Pacer, is_bulk, urgent
from labd.runner.spool import Spool
from labd.runner.withhold import MIN_WITHHELD, guard_cuts, marked, withhold_event

__all__ = ["Channel", "is_bulk", "PayloadError", "MIN_WITHHELD"]

# URGENT_GAP_S is read on emit's hot path (imported, a module global); the channel thread reads the rest of the
# policy as pacing.X at call time, so tests and benchmarks can change it

#: an idle runner says it is there this often (nothing else to send). Liveness of the process comes from
#: the daemon's process table (monitor) and the exit watch, not from these: each heartbeat costs the
#: daemon's single ingest thread a signature check, so 500 idle sessions at 1/s cost it ~7 % of a core.
HEARTBEAT_S = 30.0
try:  # benchmarks compare periods side by side (scripts/bench_scale.py --heartbeat)
    HEARTBEAT_S = max(0.1, float(os.environ.get("LABD_CHANNEL_HEARTBEAT_S") or HEARTBEAT_S))
except ValueError:
    pass
RESEND_AFTER_S = 5.0
#: emit() also waits while the events not yet acknowledged take this many bytes (whether or not a spool has them: they
#: are in memory either way, and on a full disk, with no spool, only there): max_unacked output chunks of 64 KiB are
#: 12.8 GB
MAX_UNACKED_BYTES = 64 << 20

_dumps = orjson.dumps
_JSON_OPTS = orjson.OPT_NON_STR_KEYS
_wall = time.time
_mono = time.monotonic


class Channel(ChannelWire):
    """Spooled, signed, acknowledged, re-sending event channel to the daemon (one per runner process)."""

    def __init__(self, endpoint: str, key: bytes, session_id: str, *, max_unacked: int = 200_000,
                 hello: Callable[[], dict[str, Any]] | None = None, max_message: int | None = None,
                 spool: str | os.PathLike[str] | Spool | None = None, first_seq: int = 1,
                 curve: dict[str, str] | None = None) -> None:
        self.endpoint = endpoint
        #: a runner on another machine (Ray launcher): CurveZMQ keys (Z85), the daemon's public key pinned
        self._curve = curve
        self.session_id = session_id
        self._codec = Codec(key) if max_message is None else Codec(key, max_message=max_message)
        self._hello = hello or dict
        self._max_unacked = max_unacked
        # A plain Lock under the Condition: emit() takes it directly (C code), the rest through the Condition.
        # Never taken twice by one thread.
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._next_seq = first_seq  # > 1: a resumed session's new runner goes on after its predecessor
        #: emitted, not yet taken by the channel thread: encoded events, their monotonic emit times, their
        #: bytes in all, and the src_seq of the last urgent one among them (0: none)
        self._pending: list[bytes] = []
        self._pending_t: list[float] = []
        self._pending_bytes = 0
        self._pending_urgent = 0
        self._q: list[bytes] = []  # taken, not acknowledged; _q[i] has src_seq _acked_upto + 1 + i
        self._q_bytes = 0  # their bytes in all
        self._times: list[float] = []  # emit time of each _q entry
        self._acked_upto = first_seq - 1  # every src_seq <= this is committed in the store
        self._send_pos = 0  # index into _q of the next event to (re)send
        self._urgent_seq = 0  # highest src_seq of an urgent event taken so far
        self._unsent_bytes = 0
        self._force = False  # resend everything unsent now (reconnect, resend request, stall)
        self._wake_pending = False  # a byte is in the wake pipe (or about to be): no need to write another
        self._armed = False  # the thread sleeps with a deadline: bulk emits need not wake it
        self._armed_until = 0.0  # ... that deadline (urgent emits need not wake it if it is within URGENT_GAP_S)
        self._last_send = 0.0  # monotonic time of the last events message
        self._pacer = Pacer()  # urgent messages: a few at once, then one per URGENT_GAP_S
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closing = False
        #: acks wanted at once (close() waits for them): every events message asks for one, and if nothing is
        #: left to send, one empty message does (the daemon otherwise paces acks: daemon/acks.py)
        self._ack_now = False
        self._ack_asked = False
        #: a backlog this long asks for acks at once too (well before emit() blocks at max_unacked)
        self._prompt_backlog = max(1, max_unacked // 4)
        self._forked: Callable[..., int] | None = None  # in a forked child: where its events go instead
        #: (secret value as it reads inside a JSON string, replacement): see :meth:`withhold`
        self._withheld: list[tuple[bytes, bytes]] = []
        self._withheld_text: list[tuple[str, str]] = []
        # a Spool already made (a spare runner's prepared file, runner/spare.py) or the path of one to open
        self._spool = spool if isinstance(spool, Spool) or spool is None else Spool(spool)
        self.spool_error: str | None = None
        self.connect_error: str | None = None  # set by the channel thread if it could not connect at all
        self._thread = threading.Thread(target=self._run, name="labd-channel", daemon=True)
        #: message type -> callable(body), run on the channel thread (cancel, pause, resume, approval.resolved)
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.connected = threading.Event()
        self._was_connected = False
        self._batch_cap = pacing.BATCH_EVENTS
        self.sends = 0  # messages sent with events (for tests and benchmarks)
        #: called with the name of each phase of the channel thread's loop (tests emit at every phase)
        self.phase_hook: Callable[[str], None] | None = None

    @property
    def spool_path(self) -> Path | None:
        return self._spool.path if self._spool is not None else None

    # ---- producer side (any thread) -------------------------------------------------------------
    def emit(self, kind: str, payload: dict[str, Any], node_id: str | None = None,
             parent: int | None = None, ts: float | None = None, cap: OutputCap | None = None) -> int:
        """Record one event; returns its ``src_seq``. When this returns the event is in the spool. ``ts``: the
        producer's clock if not now (an event relayed from a forked child, :mod:`labd.runner.forked`). ``cap``:
        the session's output cap, which this event counts against (a log record or custom event of the
        workflow's: runner/outputcap.py), charged with the bytes encoded here; past it the event is dropped and
        this returns -1.

        Raises :class:`PayloadError` (and records nothing) for a payload JSON cannot carry at all (nested
        deeper than 255 levels). Blocks while the unacknowledged backlog is full (``max_unacked`` events, or
        :data:`MAX_UNACKED_BYTES`)."""
        # The hot path of every workflow: a few C calls per event, no Python helpers (see docs/design.md,
        # "Ingest per event"). One encoding, which the spool, the wire and the daemon's store all keep.
        if self._forked is not None:  # a child forked by the workflow: the runner's channel is not its own
            if cap is not None and not cap.admit(kind, payload):
                return -1
            return self._forked(kind, payload, node_id, parent)
        is_urgent = URGENT_KINDS.get(kind)
        if is_urgent is None:
            is_urgent = urgent(kind)
        error: str | None = None
        mono = _mono()
        with self._mutex:
            if len(self._q) + len(self._pending) >= self._max_unacked or \
                    self._q_bytes + self._pending_bytes >= MAX_UNACKED_BYTES:
                self._wait_for_room()
            seq = self._next_seq
            ev = [seq, _wall() if ts is None else ts, kind, node_id, parent, payload]
            try:
                # Kept until acknowledged: copied to an exact-size object. orjson's own result sits in a larger
                # malloc block; keeping thousands of those makes glibc grow the heap page by page (measured:
                # 3 us per emit instead of 0.4 us; docs/design.md, "Ingest per event").
                raw = memoryview(_dumps(ev, default=json_fallback, option=_JSON_OPTS)).tobytes()
            except orjson.JSONEncodeError:
                raw = encode_json(ev)  # PayloadError: nothing recorded
            if self._withheld:  # a secret the workflow printed or logged: never recorded
                raw = withhold_event(raw, self._withheld, self._withheld_text)
            if cap is not None and not cap.charge(kind, len(raw)):
                seq = -1  # past the cap: nothing recorded, and the sequence goes on unbroken
                wake = False
            else:
                self._next_seq = seq + 1
                spool = self._spool
                if spool is not None:
                    try:
                        spool.append(seq, raw)
                    except OSError as exc:  # e.g. a full disk: carry on in memory (the old guarantee) and say so
                        error = self.spool_error = f"event spool unavailable: {exc}"
                        spool.close()
                        self._spool = None
                self._pending.append(raw)
                self._pending_t.append(mono)
                self._pending_bytes += len(raw)
                if is_urgent:
                    self._pending_urgent = seq
                wake = not self._wake_pending and (
                    not self._armed or (is_urgent and self._armed_until - mono > URGENT_GAP_S))
                if wake:
                    self._wake_pending = True
        if wake:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:  # pipe full: the thread is awake anyway
                pass
        if error is not None:
            self.emit("log", {"level": "error", "event": error, "logger": "labd.runner.channel"})
        elif seq < 0 and cap is not None:
            cap.report_if_due()  # the cap's first drop: output.truncated (an emit: after the lock)
        return seq

    def withhold(self, secrets: dict[str, str]) -> None:
        """Replace these secrets' values by ``[secret NAME withheld]`` in every event from now on (a workflow that
        prints ``ctx.secret(...)`` or puts it in a step name or a log line). Values shorter than
        :data:`MIN_WITHHELD` characters are left alone: they would match ordinary text. A value is found only whole in
        one event: the output capture, which cuts its streams into events anywhere, replaces them in the stream
        itself (``OutputCapture.withhold``, :class:`labd.runner.withhold.StreamWithholder`)."""
        self._withheld_text = marked(secrets)
        guard_cuts([v for v, _ in self._withheld_text])  # a field cut short never ends inside one (runner/withhold.py)
        self._withheld = [(orjson.dumps(v)[1:-1], orjson.dumps(m)[1:-1]) for v, m in self._withheld_text]

    def _wait_for_room(self) -> None:
        """Back-pressure: wait (lock held) until the unacknowledged backlog has room, or the channel closes."""
        while (len(self._q) + len(self._pending) >= self._max_unacked
               or self._q_bytes + self._pending_bytes >= MAX_UNACKED_BYTES) and not self._closing:
            self._lock.wait(0.5)

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def forget_after_fork(self, relay: Callable[..., int] | None = None) -> None:
        """In a child process forked by the workflow: never write to the parent's spool or queue; send events to
        ``relay`` instead (:meth:`labd.runner.forked.Relay.child_emit`), or drop them without one."""
        self._forked = relay or _dropped
        self._spool = None

    def start(self) -> None:
        """Start the channel thread, which connects and sends what is buffered. Returns without waiting for
        the connection: ZeroMQ's context and socket set-up (its I/O and reaper threads, ~2 ms, far more on a
        busy box) overlaps with the caller's own set-up instead of delaying it (docs/design.md, "First
        output"). A runner calls this only after it has confined itself: the thread (and ZeroMQ's threads,
        which it starts) inherit the confinement."""
        self._thread.start()

    def discard(self) -> None:
        """Release a channel that was never started (a spare runner's warm-up): its wake pipe and spool."""
        os.close(self._wake_r)
        os.close(self._wake_w)
        with self._lock:
            if self._spool is not None:
                self._spool.close(remove=True)
                self._spool = None

    def close(self, timeout: float = 10.0) -> bool:
        """Flush, wait up to ``timeout`` for every event to be acknowledged; True if all were.

        Either way nothing is lost: what is not acknowledged stays in the spool for the daemon to ingest
        (the spool is removed only when everything was acknowledged). Unless the spool failed (a full disk): then
        the events not yet acknowledged exist only in this process, and it waits on, past ``timeout``, for as long
        as it takes the daemon to store them (the store is on the same full disk, typically), saying so once on
        stderr (the runner's crash channel). It gave up after ``timeout`` (30 s), and a review lost 60 % of a
        session's output that way; the stop ladder (`labd stop`, `labd kill`) still ends it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._force = True
            self._ack_now = True
        self._poke()
        said = False
        with self._lock:
            while self._pending or self._acked_upto < self._next_seq - 1:
                if time.monotonic() >= deadline:
                    if self._spool is not None or self.spool_error is None:
                        break  # the spool keeps them for the daemon
                    if not said:
                        said = True
                        print(f"labd runner: {self._next_seq - 1 - self._acked_upto} events are not stored yet and "
                              f"no spool holds them ({self.spool_error}): waiting for the daemon to store them",
                              file=sys.stderr, flush=True)
                self._lock.wait(0.2 if time.monotonic() >= deadline else
                                min(0.2, max(0.0, deadline - time.monotonic())))
            done = not self._pending and self._acked_upto >= self._next_seq - 1
            self._closing = True
            self._lock.notify_all()
        self._poke()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        with self._lock:
            if self._spool is not None:
                self._spool.close(remove=done)
                self._spool = None
        return done

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    # ---- channel thread ---------------------------------------------------------------------------
    def _take(self) -> None:
        """Move emitted events to the send queue (lock held)."""
        if not self._pending:
            return
        self._q += self._pending
        self._times += self._pending_t
        self._unsent_bytes += self._pending_bytes
        self._q_bytes += self._pending_bytes
        if self._pending_urgent:
            self._urgent_seq = self._pending_urgent
        self._pending = []
        self._pending_t = []
        self._pending_bytes = 0
        self._pending_urgent = 0

    def _run(self) -> None:
        try:
            ctx, sock, monitor = self._connect()  # this thread's alone from now on
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed endpoint or CurveZMQ key: say so, keep the spool
            self.connect_error = f"{type(exc).__name__}: {exc}"
            print(f"labd runner: event channel cannot connect: {self.connect_error}", file=sys.__stderr__)
            return  # emits still reach the spool, which the daemon reads when the runner has ended
        with self._lock:
            self._force = True  # what was emitted before the connection leaves in the first pass, at once
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        last_sent = last_ack = time.monotonic()
        watching_out = ticking = False
        tick_at = 0.0
        try:
            while True:
                # Drain the wake pipe *before* clearing _wake_pending under the lock: an emit that comes
                # after the clear writes a new byte, one that came before is taken below. No lost wake-up.
                hook = self.phase_hook
                if hook is not None:
                    hook("top")
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                if hook is not None:
                    hook("drained")
                with self._lock:
                    if self._closing:
                        break
                    self._wake_pending = False
                    self._take()
                if hook is not None:
                    hook("taken")
                now = time.monotonic()
                idle = self._send_pos == 0  # nothing awaits an ack (this thread alone moves _send_pos)
                sent, blocked = self._flush(sock, now)
                if sent:
                    last_sent = now
                    if idle:  # the ack clock starts with the first unacknowledged send, not the last ack
                        last_ack = now
                if hook is not None:
                    hook("flushed")
                with self._lock:
                    # Decide how long to sleep under the lock emit() uses to decide whether to wake us.
                    if self._pending:
                        timeout = 0.0
                        due = None
                        ticking = False
                    else:
                        due = self._due_at(now)
                        # Nothing unsent, but events went out lately: a busy workflow's next bulk event is
                        # near. Sleep armed for one bulk delay and send whatever came meanwhile at its end, so
                        # that event need not wake us (docs/design.md, "Tracking overhead on the event path").
                        ticking = due is None and not blocked and now - self._last_send < pacing.BULK_TICK_S
                        self._armed = due is not None or ticking
                        self._armed_until = due if due is not None else now + pacing.BULK_DELAY_S if ticking else 0.0
                        timeout = HEARTBEAT_S - (now - last_sent)
                        if due is not None and not blocked:
                            timeout = min(timeout, due - now)
                        elif ticking:
                            timeout = min(timeout, pacing.BULK_DELAY_S)
                            tick_at = now + pacing.BULK_DELAY_S
                        if self._send_pos > 0:  # sent, not acknowledged: wake to notice if acks stall
                            timeout = min(timeout, max(0.05, RESEND_AFTER_S - (now - last_ack)))
                if blocked != watching_out:  # the send queue is full: wake when it has room again
                    poller.modify(sock, zmq.POLLIN | zmq.POLLOUT if blocked else zmq.POLLIN)
                    watching_out = blocked
                if hook is not None:
                    hook("decided")
                events = dict(poller.poll(max(0, math.ceil(timeout * 1000))))
                if hook is not None:
                    hook("polled")
                now = time.monotonic()
                if monitor in events:
                    self._on_monitor(monitor, sock)
                if events.get(sock, 0) & zmq.POLLIN:
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if self._on_message(frames):
                            last_ack = now
                    self._trim_spool()
                if hook is not None:
                    hook("handled")
                if ticking and now >= tick_at - 0.001:  # the tick's end: what came meanwhile leaves now
                    with self._lock:
                        if self._pending:
                            self._force = True
                with self._lock:
                    if self._send_pos > 0 and now - last_ack > RESEND_AFTER_S:
                        # acks stopped coming: assume the daemon lost them, send again
                        self._resend()
                        last_ack = now
                if now - last_sent > HEARTBEAT_S:
                    if self.connected.is_set():
                        self._send(sock, "heartbeat", {"session": self.session_id, "last_seq": self.last_seq})
                    last_sent = now
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            ctx.term()


def _dropped(*_args: Any, **_kw: Any) -> int:
    return 0
