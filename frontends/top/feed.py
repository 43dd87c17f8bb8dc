"""The data feed of ``labd top``: the only code that talks to the daemon, through the public client SDK.

Three asyncio tasks on the app's loop, each owning what it reads:

* the **control** lane: one :class:`labd.ipc.Client` (synchronous, not thread-safe) lives in a single worker
  thread; every request goes through :meth:`Feed.call`, so requests never block the screen and never overlap;
* the **poller** asks ``session.list`` (live CPU / memory figures included) and ``approvals.list`` once a
  second, and the followed session's DAG, cost and files when its events say they changed;
* the **tail** owns the one SUB socket: it follows one session exactly as ``Client.follow`` does (subscribe,
  read the store from the last ``seq`` seen, then the live tail, gaps filled from the store: the same
  :class:`labd.ipc.follow.FollowCursor`), but without
  blocking, so the followed session can change at any time. Events are batched and posted at most about 12
  times a second.

A daemon restart is just a quiet spell: requests time out (3 s), the client is rebuilt from the connection
file, the SUB socket reconnects by itself, and the tail resumes from the last ``seq`` it delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from typing import Any, TypeVar

import zmq
import zmq.asyncio
from textual.message import Message

from labd.ipc import Client, LabdError
from labd.ipc.connection import ConnectionFileError, events_socket, read_connection_file
from labd.ipc.follow import FollowCursor
from labd.ipc.live import LIVE_RCVHWM, decode_live
from labd.ipc.paths import layout_for
from labd.ipc.wire import Codec, WireError

from .messages import DAG_NODES, ConnectionChanged, DagUpdated, EventsArrived, SessionsUpdated

__all__ = ["Feed"]

T = TypeVar("T")
# Events that change what the DAG tab shows (nodes, their status, files, cost).
DAG_KINDS = ("step.", "agent.turn.", "file.", "cost.recorded", "session.ended")


class Feed:
    """Everything ``labd top`` knows about the daemon, posted as typed messages to ``post``."""

    def __init__(self, home: str | PathLike[str] | None, post: Callable[[Message], Any], *,
                 list_interval: float = 1.0, flush_interval: float = 1 / 12, request_timeout: float = 3.0,
                 history: int = 5000, history_lines: int = 5000, list_limit: int = 500) -> None:
        self.home = home
        self.post = post
        self.list_interval = list_interval
        self.flush_interval = flush_interval
        self.request_timeout = request_timeout
        self.history = history  # events loaded when a session is selected: its tail, not all of it
        self.history_lines = history_lines  # ... and only as far back as this many lines of output need
        self.list_limit = list_limit
        self.connected: bool | None = None
        self.delivered = 0  # events posted (the benchmark reads it)
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labd-top-control")
        self._client: Client | None = None  # used only in the worker thread
        self._want: str | None = None  # the session to follow (set by the app)
        self._want_changed = asyncio.Event()
        self._has_events = asyncio.Event()
        self._dag_dirty = False
        self.dag_wanted = True  # the app clears it while the DAG tab is hidden: no graph fetched for nothing
        self._buffer: list[dict[str, Any]] = []
        self._buffer_sid: str | None = None
        self._skipped = 0
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the poller, tail and flusher tasks on the running loop."""
        for coro in (self._poll(), self._tail(), self._flush()):
            task = asyncio.create_task(coro)
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say so rather than go quiet
            self.post(ConnectionChanged(False, f"feed task failed: {task.exception()!r}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.get_running_loop().run_in_executor(self._exec, self._drop_client)
        self._exec.shutdown(wait=False)

    def follow(self, session: str | None) -> None:
        """Follow ``session`` (an id) from now on; ``None`` follows nothing."""
        if session != self._want:
            self._want = session
            self._dag_dirty = session is not None
            self._want_changed.set()

    def refresh(self) -> None:
        """Ask for the DAG and the list again soon (after an action)."""
        self._dag_dirty = self._want is not None

    # ---- control lane --------------------------------------------------------------------------------
    async def call(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn(client)`` in the control thread; :class:`LabdError` on an error reply or an unreachable daemon."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._exec, self._call, fn)
        except LabdError as exc:
            if exc.code in ("timeout", "no_daemon"):
                self._set_connected(False, "no daemon is running for this home (start one with `labd serve`)"
                                    if exc.code == "no_daemon" else "no reply from the daemon")
            raise
        self._set_connected(True)
        return result

    def _call(self, fn: Callable[[Client], T]) -> T:
        if self._client is None:
            self._client = Client(self.home, timeout=self.request_timeout)
        try:
            return fn(self._client)
        except LabdError as exc:
            if exc.code == "timeout":  # maybe a restarted daemon: rebuild from the connection file next time
                self._drop_client()
            raise

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _set_connected(self, ok: bool, detail: str = "") -> None:
        if ok != self.connected:
            self.connected = ok
            self.post(ConnectionChanged(ok, detail))

    # ---- poller ------------------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            try:
                sessions = await self.call(lambda c: c.sessions(limit=self.list_limit))
                approvals = await self.call(_pending)
                self.post(SessionsUpdated(sessions, approvals, time.time()))
                sid = self._want
                if sid and self._dag_dirty and self.dag_wanted:
                    self._dag_dirty = False
                    dag, files = await self.call(functools.partial(_dag_of, session=sid))
                    self.post(DagUpdated(sid, dag, files))
            except LabdError:
                pass  # unreachable: the connection state says so; try again next tick
            await asyncio.sleep(self.list_interval)

    # ---- tail --------------------------------------------------------------------------------------
    async def _tail(self) -> None:
        zctx = zmq.asyncio.Context()
        sub: zmq.asyncio.Socket | None = None
        daemon: tuple[Any, ...] | None = None
        codec: Codec | None = None
        sid: str | None = None
        subscribed = False
        cursor = FollowCursor()
        quiet = 0.0
        try:
            while True:
                if self._want != sid:  # switch sessions: drop the old subscription and buffer
                    if sub is not None and sid:
                        sub.setsockopt(zmq.UNSUBSCRIBE, f"session.{sid}".encode())
                    sid, cursor, quiet = self._want, FollowCursor(), 0.0
                    self._want_changed.clear()
                    self._buffer, self._buffer_sid, self._skipped = [], sid, 0
                    subscribed = False
                if sid is None:
                    await self._want_changed.wait()
                    continue
                try:  # the connection file, not a request: a restarted daemon may have a new key or socket
                    info = read_connection_file(layout_for(self.home))
                except ConnectionFileError:
                    await self._idle(1.0)
                    continue
                if _identity(info) != daemon:  # first time, or a new daemon
                    if sub is not None:
                        sub.close(0)
                    sub = events_socket(zctx, info)  # the daemon's event socket admits holders of its key only
                    sub.setsockopt(zmq.RCVHWM, LIVE_RCVHWM)
                    sub.connect(info.events)
                    daemon = _identity(info)
                    codec = Codec(info.key_bytes)
                    subscribed = False
                assert sub is not None and codec is not None and sid is not None
                if not subscribed:  # subscribe before reading the store, so nothing falls between the two
                    sub.setsockopt(zmq.SUBSCRIBE, f"session.{sid}".encode())
                    subscribed = True
                    try:
                        if cursor.last == 0:
                            cursor.last = await self._start_point(sid)
                        await self._from_store(sid, cursor, None)
                    except LabdError:
                        subscribed = False  # unreachable or unknown: try again in a moment
                        sub.setsockopt(zmq.UNSUBSCRIBE, f"session.{sid}".encode())
                        await self._idle(1.0)
                        continue
                while self._want == sid and _identity(info) == daemon:
                    if not await sub.poll(250):
                        quiet += 0.25
                        if quiet >= 1.0 and not cursor.ended:  # quiet: make sure the live tail dropped nothing
                            quiet = 0.0
                            try:
                                await self._from_store(sid, cursor, None)
                            except LabdError:
                                break  # daemon unreachable: re-check the connection info
                        continue
                    quiet = 0.0
                    frames = await sub.recv_multipart()
                    try:
                        evs = decode_live(codec, frames[1:])
                    except WireError:
                        continue
                    for ev in evs:
                        upto = cursor.gap_before(ev)
                        if upto is not None:
                            try:
                                await self._from_store(sid, cursor, upto)
                            except LabdError:
                                break
                        if cursor.live(ev):
                            self._deliver(sid, ev)
        finally:
            if sub is not None:
                sub.close(0)
            zctx.term()

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._want_changed.wait(), seconds)

    async def _start_point(self, sid: str) -> int:
        """Where a newly selected session is read from: far enough back for ``history_lines`` lines of output
        (the output tab's size), at most ``history`` events back. The window grows 4x per try, reading only
        ``output`` events, so a chatty session's megabytes of old output are never fetched."""
        row = await self.call(lambda c: c.session(sid))
        last = int(row.get("last_seq") or 0)
        span = 64
        while True:
            start = max(0, last - min(span, self.history))
            if start == 0 or span >= self.history:
                break
            page = await self.call(functools.partial(Client.events, ref=sid, since=start, limit=span,
                                                     kinds=["output"]))
            lines = sum(ev["payload"].get("text", "").count("\n") for ev in page["events"])
            if lines >= self.history_lines:
                break
            span *= 4
        self._skipped = start
        return start

    async def _from_store(self, sid: str, cursor: FollowCursor, upto: int | None) -> None:
        """Deliver the stored events after the cursor (up to ``upto``), moving it."""
        while True:
            page = await self.call(functools.partial(Client.events, ref=sid, since=cursor.last, limit=2000))
            for ev in page["events"]:
                if upto is not None and ev["seq"] > upto:
                    return
                if cursor.stored(ev):
                    self._deliver(sid, ev)
            if not page["more"] or not page["events"] or self._want != sid:
                return

    def _deliver(self, sid: str, ev: dict[str, Any]) -> None:
        if sid != self._buffer_sid:
            return
        self._buffer.append(ev)
        self._has_events.set()
        if ev["kind"].startswith(DAG_KINDS):
            self._dag_dirty = True

    async def _flush(self) -> None:
        """Post the buffered events as one message, at most ~12 times a second: the first event after a quiet
        spell goes out at once, the rest of a burst waits for the next tick."""
        while True:
            await self._has_events.wait()
            self._has_events.clear()
            if self._buffer and self._buffer_sid:
                batch, self._buffer = self._buffer, []
                self.delivered += len(batch)
                self.post(EventsArrived(self._buffer_sid, batch, self._skipped))
                self._skipped = 0
            await asyncio.sleep(self.flush_interval)


def _identity(info: Any) -> tuple[Any, ...]:
    """What makes a followed daemon the same one: a restarted daemon may have a new key, socket or mechanism."""
    return info.events, info.key, info.events_auth, info.events_public


def _pending(c: Client) -> list[dict[str, Any]]:
    """The pending approvals across sessions (the oldest 20 of each), each with ``more_pending``: how many more
    its session has that the list left out."""
    reply = c.request("approvals.list")
    more = reply.get("omitted") or {}
    return [{**a, "more_pending": more.get(a["session_id"], 0)} for a in reply["approvals"]]


def _dag_of(c: Client, session: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the DAG tab shows: the newest :data:`DAG_NODES` nodes (each with its cost rolled up over what is nested
    in it) and their files: those recorded since the oldest of them started (two requests, one round of the lane).
    Only those are read: the whole record of a days-long session, read again after every change, kept the daemon
    busy (30,000 nodes: ~0.7 s of its CPU and ~16 MB a round, docs/benchmarks.md §48) and would outgrow the
    request's timeout."""
    reply = c.dag(session, newest=DAG_NODES)
    dag = {**reply["dag"], "nodes_omitted": reply.get("nodes_omitted", 0)}
    starts = [n["start_seq"] for n in dag["nodes"] if n.get("start_seq") is not None]
    return dag, c.files(session, since=min(starts) - 1 if dag["nodes_omitted"] and starts else 0)
