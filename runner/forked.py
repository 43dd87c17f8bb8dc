"""Events of processes the workflow forks (``os.fork``, ``multiprocessing`` fork workers), relayed to the runner.

A forked child must not touch the runner's spool or queue (:mod:`labd.runner.forksafe`: the spool is a shared
mapping and ``src_seq`` is the runner's counter). Instead its :meth:`Channel.emit` sends each event over a
``SOCK_SEQPACKET`` socket pair made when the runner starts: one message per event, so several children can send
at once without their events interleaving. A thread of the runner (``labd-forked``) receives them and emits them
on the runner's channel in the order they arrive; from there on they are the runner's events (spooled, sent,
acknowledged, gap-free ``src_seq``), with the child's clock as ``ts``.

* **What the child's emit returns** is a reference, not a ``src_seq`` (the child cannot know it): -1, -2, ... per
  child. An event whose ``parent`` is such a reference (a child's ``llm.response`` names its ``llm.request``) gets
  the ``src_seq`` the runner gave that event; ``parent`` values >= 0 (the runner's own events from before the
  fork) pass as they are.
* **Durability**: the child's emit returns once the kernel holds the message. An event is the runner's (and
  survives a SIGKILL) once the relay thread emitted it; one still in the socket when the runner is killed is
  lost. At the end of the workflow the runner takes in what its children sent (until every child closed its
  end, at most :data:`DRAIN_S`) before it records ``session.finished``.
* **Larger than one message** (the socket's send buffer, 4 MiB where the kernel allows it, ~200 KiB by
  default): the child writes the event to a file in the session's directory and sends its name; the runner
  reads and removes it.
* **The runner gone**: a child's emit drops the event (the session is over) and never blocks for ever: the
  child closes its copy of the runner's end, so its sends fail once the runner has exited.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from labd.ipc.wire import encode_json, json_fallback

__all__ = ["Relay", "DRAIN_S"]

#: the longest the runner waits at the end of its workflow for children that still hold their end open
DRAIN_S = 2.0
#: the send buffer asked for (the kernel caps it at ``net.core.wmem_max``); messages beyond it go by file
SEND_BUFFER = 4 * 1024 * 1024
#: child references kept for ``parent`` links (the oldest are forgotten first: links point to recent events)
MAX_REFS = 65_536
_FILE = b"F"  # a message naming a file (an event message is a JSON array: it starts with "[")
_OPTS = orjson.OPT_NON_STR_KEYS


class Relay:
    """The runner's end (receive, emit) and every forked child's end (send) of the events of forked children."""

    def __init__(self, emit: Callable[..., int], spill_dir: Path) -> None:
        self._emit = emit
        self._spill_dir = spill_dir
        self._recv, self._send = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(OSError):
            self._send.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        #: the largest message a send can carry (the kernel reports twice what it grants; a bit less fits)
        self.max_message = self._send.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
        # (child pid, its reference) -> src_seq; ordered: the oldest go first, in O(1) (next(iter(dict)) after many
        # deletions at its front walks every deleted slot: the relay ran 5x slower past MAX_REFS events)
        self._refs: OrderedDict[tuple[int, int], int] = OrderedDict()
        self.relayed = 0  # events emitted for children (tests)
        self._thread = threading.Thread(target=self._run, name="labd-forked", daemon=True)
        self._started = False

    def start(self) -> None:
        """Start the receiving thread (idempotent): the runner calls it after each fork, so a session that never
        forks never pays for the thread."""
        if not self._started:
            self._started = True
            self._thread.start()

    # ---- in a forked child ------------------------------------------------------------------------------------
    def child_emit(self) -> Callable[..., int]:
        """In a child just forked: close the runner's end and return the child's ``emit`` (same signature as
        :meth:`Channel.emit`; raises :class:`~labd.ipc.wire.PayloadError` for a payload JSON cannot carry)."""
        self._recv.close()
        pid, refs, sock, limit = os.getpid(), itertools.count(1), self._send, self.max_message
        spill_dir = self._spill_dir

        def emit(kind: str, payload: dict[str, Any], node_id: str | None = None, parent: int | None = None) -> int:
            ref = -next(refs)
            ev = [pid, ref, time.time(), kind, node_id, parent, payload]
            try:
                raw = orjson.dumps(ev, default=json_fallback, option=_OPTS)
            except orjson.JSONEncodeError:
                raw = encode_json(ev)  # PayloadError: nothing sent
            try:
                if len(raw) > limit:
                    raise OSError(errno.EMSGSIZE, "larger than one message")
                sock.send(raw, socket.MSG_NOSIGNAL)
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    return ref  # the runner has exited (EPIPE, ECONNREFUSED): the session is over
                path = spill_dir / f".forked-{pid}-{-ref}.json"
                path.write_bytes(raw)
                with contextlib.suppress(OSError):
                    sock.send(_FILE + os.fsencode(path.name), socket.MSG_NOSIGNAL)
            return ref

        return emit

    # ---- in the runner ----------------------------------------------------------------------------------------
    def close(self, timeout: float = DRAIN_S) -> None:
        """Take in what children sent: until every child has closed its end (or ended), at most ``timeout`` s;
        then stop the thread. Call once, after the workflow returned."""
        self._send.close()  # ours: from now on the end-of-file comes when the last child's copy is gone
        if not self._started:  # never forked
            self._recv.close()
            return
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():  # children still alive: what they already sent is taken in, then it ends
            with contextlib.suppress(OSError):
                self._recv.shutdown(socket.SHUT_RD)  # a blocked recv returns the queued messages, then b""
            self._thread.join(1.0)

    def _run(self) -> None:
        # One buffer for every message: recv(size) allocates (and the allocator maps) max_message bytes per
        # message, which halved the relay's rate (scripts/bench_forked.py)
        buf = bytearray(self.max_message + 64)
        view = memoryview(buf)
        while True:
            try:
                size = self._recv.recv_into(buf)
            except OSError:
                break
            if not size:  # every child (and the runner) closed its end, or close() gave up waiting
                break
            try:
                self._relay(view[:size])
            except Exception as exc:  # noqa: BLE001 - a child's bad message must not stop the others'
                why = f"an event of a forked child was not recorded: {type(exc).__name__}: {exc}"
                self._emit("log", {"level": "error", "logger": "labd.runner.forked", "event": why[:2000]})
        self._recv.close()

    def _relay(self, msg: bytes | memoryview) -> None:
        if msg[:1] == _FILE:  # a large event: in a file the child wrote
            name = os.fsdecode(bytes(msg[1:]))
            if "/" in name or not name.startswith(".forked-"):
                raise ValueError(f"not a file of a forked child: {name[:100]!r}")
            path = self._spill_dir / name
            try:
                msg = path.read_bytes()
            finally:
                path.unlink(missing_ok=True)
        ev = orjson.loads(msg)
        if not (isinstance(ev, list) and len(ev) == 7):
            raise ValueError("not an event of a forked child")
        pid, ref, ts, kind, node_id, parent, payload = ev
        if not (isinstance(pid, int) and isinstance(ref, int) and isinstance(ts, (int, float))
                and (parent is None or isinstance(parent, int))):
            raise ValueError("not an event of a forked child")
        if parent is not None and parent < 0:
            parent = self._refs.get((pid, parent))
        seq = self._emit(kind, payload, node_id, parent, ts=float(ts))
        refs = self._refs
        refs[(pid, ref)] = seq
        if len(refs) > MAX_REFS:
            refs.popitem(last=False)
        self.relayed += 1
