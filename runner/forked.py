"""Events of processes the workflow forks (``os.fork``, ``multiprocessing`` fork workers), relayed to the runner.

A forked child must not touch the runner's spool or queue (:mod:`labd.runner.forksafe`: the spool is a shared
mapping and ``src_seq`` is the runner's counter). Instead its :meth:`Channel.emit` sends each event over a
``SOCK_SEQPACKET`` socket pair made when the runner starts: one message per event, so several children can send
at once without their events interleaving. A thread of the runner (``labd-forked``, started at the first fork)
receives them and emits them on the runner's channel in the order they arrive; from there on they are the
runner's events (spooled, sent, acknowledged, gap-free ``src_seq``), with the child's clock as ``ts``.

* **What the child's emit returns** is a reference, not a ``src_seq`` (the child cannot know it): a negative
  number unique to the child's process (``-(pid << 32 | i)``). An event whose ``parent`` is such a reference (a
  child's ``llm.response`` names its ``llm.request``) gets the ``src_seq`` the runner gave that event; ``parent``
  values >= 0 (the runner's own events from before the fork) pass as they are.
* **Order**: each child's own order is kept. At every step boundary of the runner (:meth:`Relay.sync`, called with
  the output capture's sync) the runner first takes in what children sent until then, so a step that waited for
  its pool's workers finishes after their events.
* **Durability**: the child's emit returns once the kernel holds the message. An event is the runner's (and
  survives a SIGKILL) once the relay thread emitted it; one still in the socket when the runner is killed is
  lost. At the end of the workflow the runner takes in what its children sent (until every child closed its
  end, at most :data:`DRAIN_S`, then what is queued) before it records ``session.finished``.
* **Larger than one message** (:data:`MAX_INLINE`, or a send the kernel refuses for want of memory): the child
  writes the event to a file in the session's directory and sends its name; the runner reads it (a regular file
  of this user, at most :data:`MAX_FILE` bytes, no symlink) and removes it.
* **The runner gone**: a child's emit drops the event (the session is over) and never blocks for ever: the
  child closes its copy of the runner's end, so its sends fail once the runner has exited.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import socket
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import orjson

from labd.ipc.wire import encode_json, json_fallback
from labd.runner import mphelpers

__all__ = ["Relay", "DRAIN_S"]

#: the longest the runner waits at the end of its workflow for children that still hold their end open
DRAIN_S = 2.0
#: then the longest it takes to emit what they had queued (bounded by the socket's buffer)
BACKLOG_S = 30.0
#: the longest a step boundary waits for the relay to catch up (:meth:`Relay.sync`)
SYNC_S = 5.0
#: the send buffer asked for (the kernel caps it at ``net.core.wmem_max``)
SEND_BUFFER = 4 * 1024 * 1024
#: events larger than this go by file (a datagram needs its kernel memory in one piece)
MAX_INLINE = 1024 * 1024
#: the largest event file the runner reads
MAX_FILE = 64 * 1024 * 1024
#: child references kept for ``parent`` links (the oldest are forgotten first: links point to recent events)
MAX_REFS = 16_384
#: the kinds a ``parent`` may name (docs/protocol.md §6.3): only their references are kept
PARENT_KINDS = frozenset(("llm.request", "llm.response", "tool.call"))
_FILE = b"F"  # a message naming a file (an event message is a JSON array: it starts with "[")
_SYNC = b"S"  # the runner's own marker (Relay.sync)
_GONE = frozenset((errno.EPIPE, errno.ECONNREFUSED, errno.ENOTCONN, errno.EBADF))
_HUP = select.POLLHUP | getattr(select, "POLLRDHUP", 0x2000)
_OPTS = orjson.OPT_NON_STR_KEYS


class Relay:
    """The runner's end (receive, emit) and every forked child's end (send) of the events of forked children."""

    def __init__(self, emit: Callable[..., int], spill_dir: Path) -> None:
        self._emit = emit
        self._spill_dir = spill_dir
        self._recv, self._send = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(OSError):
            self._send.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        #: the largest message a send carries (the kernel reports twice what it grants; a bit less fits)
        self.max_message = min(MAX_INLINE, self._send.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2)
        # child reference -> src_seq; ordered: the oldest go first, in O(1) (next(iter(dict)) after many
        # deletions at its front walks every deleted slot: the relay ran 5x slower past MAX_REFS events)
        self._refs: OrderedDict[int, int] = OrderedDict()
        self.dropped = 0  # events of children not emitted: still queued when the runner gave up at the end
        self._thread = threading.Thread(target=self._run, name="labd-forked", daemon=True)
        self._closing = self._stop = False
        self._cond = threading.Condition()
        self._start_lock = threading.Lock()
        self._forked = False  # a fork was made (start() ran): else close() has nothing to take in or sweep
        self._sync_sent = self._synced = 0

    def start(self) -> None:
        """Start the receiving thread, once (the runner calls this before each fork, so a session that never forks
        never pays for it). If no thread can start now (a process limit), the next fork tries again, and
        :meth:`close` takes in what is queued itself. Under a lock: two threads making their first fork at once
        would otherwise start the same thread twice (which leaves it running but seen as dead)."""
        self._forked = True
        with self._start_lock:
            if self._thread.ident is None and not self._closing:
                with contextlib.suppress(RuntimeError):
                    self._thread.start()

    # ---- in a forked child ------------------------------------------------------------------------------------
    def child_emit(self) -> Callable[..., int]:
        """In a child just forked: close the runner's end and return the child's ``emit`` (same signature as
        :meth:`Channel.emit`; raises :class:`~labd.ipc.wire.PayloadError` for a payload JSON cannot carry)."""
        self._recv.close()
        self._closing = True  # a child never starts the runner's thread (its copy of the object is not the runner's)
        return child_sender(self._send, self._spill_dir, self.max_message)

    def child_fd(self) -> int:
        """The descriptor of the children's end, for a child that does not fork from the runner but inherits it
        across an ``exec`` (``spawn``/``forkserver`` workers: :mod:`labd.runner.spawned`). Starts the receiving
        thread, as a fork does."""
        self.start()
        return self._send.fileno()

    # ---- in the runner ----------------------------------------------------------------------------------------
    def sync(self, timeout: float = SYNC_S) -> None:
        """Return once every event children sent before this call is emitted (at most ``timeout`` s; at once if
        no child was ever forked). The socket is first in, first out: a marker sent now is taken after them."""
        if not self._thread.is_alive() or self._closing:
            return
        with self._cond:
            self._sync_sent += 1
            n = self._sync_sent
        try:
            self._send.send(_SYNC + n.to_bytes(8, "little"), socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        except OSError:  # the buffer is full: order is not worth blocking the workflow for
            return
        with self._cond:
            self._cond.wait_for(lambda: self._synced >= n, timeout)

    def close(self, timeout: float = DRAIN_S) -> None:
        """Take in what children sent: until every child has closed its end (or ended), at most ``timeout`` s,
        then what is queued; then stop. Call once, after the workflow returned."""
        self._closing = True
        self._send.close()  # ours: from now on the end-of-file comes when the last child's copy is gone
        if not self._forked:  # the common case: no work (nor a buffer, nor a directory listing) at the session's end
            self._recv.close()
            return
        thread = self._thread
        if thread.is_alive():
            # until every child's end is closed; or only multiprocessing's helpers are left, which keep theirs until
            # the runner exits (labd.runner.mphelpers)
            def ended(wait: float) -> bool:
                thread.join(wait)
                return not thread.is_alive()

            mphelpers.wait_for(ended, max(0.0, timeout))
            if thread.is_alive():  # children still alive: take what they sent, then end (recv returns b"")
                with contextlib.suppress(OSError):
                    self._recv.shutdown(socket.SHUT_RD)
                thread.join(BACKLOG_S)
            if thread.is_alive():  # the channel does not take events any more (no daemon): stop emitting
                self._stop = True
                thread.join(1.0)
        if not thread.is_alive():
            # What is still queued, here: nothing after a thread that ran to the end; everything when no thread
            # could start (a process limit) or the thread ended early (a receive error)
            self._recv.setblocking(False)
            self._run()
            self._sweep()
        if self.dropped or thread.is_alive():
            self._emit("log", {"level": "error", "logger": "labd.runner.forked",
                               "event": f"events of forked children not recorded: {self.dropped} at the end of the "
                                        "session (the runner's channel did not take them in time)"})
        self._recv.close()

    def _run(self) -> None:
        # One buffer for every message: recv(size) allocates (and the allocator maps) max_message bytes per
        # message, which halved the relay's rate (scripts/bench_forked.py)
        buf = bytearray(self.max_message + 64)
        view = memoryview(buf)
        poller = select.poll()
        poller.register(self._recv, select.POLLIN | _HUP)
        while True:
            try:
                size = self._recv.recv_into(buf)
            except OSError:  # closed, or (close() taking in what is queued) nothing more
                break
            if not size:  # the end (every sender closed its end, or close() shut ours), or an empty message
                if any(ev & _HUP for _fd, ev in poller.poll(0)):
                    break
                continue
            if self._stop:
                self.dropped += 1
                continue
            try:
                self._take(view[:size])
            except Exception as exc:  # noqa: BLE001 - a child's bad message must not stop the others'
                self._not_recorded(exc)

    def _not_recorded(self, exc: Exception) -> None:
        """Say in the record that a child's event was lost, and why (the others go on)."""
        why = f"an event of a forked child was not recorded: {type(exc).__name__}: {exc}"
        self._emit("log", {"level": "error", "logger": "labd.runner.forked", "event": why[:2000]})

    def _take(self, msg: memoryview | bytes) -> None:
        head = msg[:1]
        if head == _SYNC:
            with self._cond:
                self._synced = max(self._synced, int.from_bytes(msg[1:9], "little"))
                self._cond.notify_all()
            return
        if head == _FILE:  # a large event: in a file the child wrote
            msg = self._read_file(os.fsdecode(bytes(msg[1:])))
        ev = orjson.loads(msg)
        if not (isinstance(ev, list) and len(ev) == 6):
            raise ValueError("not an event of a forked child")
        ref, ts, kind, node_id, parent, payload = ev
        if not (isinstance(ref, int) and ref < 0 and isinstance(ts, (int, float))
                and (parent is None or isinstance(parent, int))):
            raise ValueError("not an event of a forked child")
        refs = self._refs
        if parent is not None and parent < 0:
            parent = refs.get(parent)
        seq = self._emit(kind, payload, node_id, parent, ts=float(ts))
        if kind in PARENT_KINDS:
            refs[ref] = seq
            if len(refs) > MAX_REFS:
                refs.popitem(last=False)

    def _read_file(self, name: str) -> bytes:
        """The bytes of an event file a child named (then removed): a regular file of this user in the session's
        directory, no symlink, not a FIFO (opening one would block the relay), at most MAX_FILE bytes."""
        if "/" in name or not (name.startswith(".forked-") and name.endswith(".json")):
            raise ValueError(f"not a file of a forked child: {name[:100]!r}")
        path = self._spill_dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                    raise ValueError(f"{name}: not a regular file of this user")
                if st.st_size > MAX_FILE:
                    raise ValueError(f"{name}: {st.st_size} bytes, more than {MAX_FILE}")
                return f.read(MAX_FILE + 1)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def _sweep(self) -> None:
        """At the end: event files written whole by a child killed before it sent their names are recorded too;
        a half-written one (``.part``) is removed."""
        try:
            names = [p.name for p in self._spill_dir.iterdir() if p.name.startswith(".forked-")]
        except OSError:
            return
        for name in sorted(names):
            try:
                if name.endswith(".json"):
                    self._take(_FILE + os.fsencode(name))
                else:
                    (self._spill_dir / name).unlink()
            except Exception as exc:  # noqa: BLE001 - one bad file must not keep the others
                self._not_recorded(exc)


def child_sender(sock: socket.socket, spill_dir: Path, limit: int) -> Callable[..., int]:
    """A child's ``emit`` (same signature as :meth:`Channel.emit`; raises :class:`~labd.ipc.wire.PayloadError` for a
    payload JSON cannot carry) over ``sock``, the children's end of the runner's relay; an event over ``limit``
    bytes goes by file in ``spill_dir``."""
    numbers = itertools.count(1)
    getpid = os.getpid  # per event: a process this one forks sends through the same socket and must not reuse refs

    def emit(kind: str, payload: dict[str, object], node_id: str | None = None, parent: int | None = None) -> int:
        i, pid = next(numbers), getpid()
        ref = -(pid << 32 | i)
        ev = [ref, time.time(), kind, node_id, parent, payload]
        try:
            raw = orjson.dumps(ev, default=json_fallback, option=_OPTS)
        except orjson.JSONEncodeError:
            raw = encode_json(ev)  # PayloadError: nothing sent
        if len(raw) <= limit:
            try:
                sock.send(raw, socket.MSG_NOSIGNAL)
                return ref
            except OSError as exc:
                if exc.errno in _GONE:
                    return ref  # the runner has exited: the session is over
                # EMSGSIZE, ENOBUFS, ENOMEM: by file
        try:
            _send_file(sock, spill_dir, f".forked-{pid}-{i}", raw)
        except OSError:  # no file either (a full disk): what the channel sends for an event it cannot carry
            marker = [ref, ev[1], "event.truncated", node_id, parent, {"kind": kind, "size": len(raw)}]
            with contextlib.suppress(OSError):
                sock.send(orjson.dumps(marker), socket.MSG_NOSIGNAL)
        return ref

    return emit


def _send_file(sock: socket.socket, spill_dir: Path, stem: str, raw: bytes) -> None:
    """In a child: write an event too large for one message to ``<stem>.json`` (whole: written as ``.part``,
    then renamed) and send its name; removed again if the runner is gone."""
    part, final = spill_dir / f"{stem}.part", spill_dir / f"{stem}.json"
    try:
        part.write_bytes(raw)
        os.replace(part, final)
    except OSError:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    try:
        sock.send(_FILE + os.fsencode(final.name), socket.MSG_NOSIGNAL)
    except OSError:  # the runner has exited (or will never read it): leave nothing behind
        with contextlib.suppress(OSError):
            final.unlink()
