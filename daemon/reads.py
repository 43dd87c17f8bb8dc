"""Long store reads that never stall the daemon.

Most requests read a row or a page and answer at once on the daemon's request loop. A few read a whole record,
however large: a replay's seed (every recorded LLM call and answer of a session and, for a branch, of its
ancestors), a comparison (every step, output and file of up to ten sessions), and one session's DAG, costs,
checkpoints, files or state history. On the loop, such a read of a 30,000-step session took seconds (the DAG: 1.3 s),
and every other client (``labd ps``, a GUI, the runners' approvals) waited that long. A handler that needs one is
a generator, as for workflow checks (:mod:`labd.daemon.checks`): it ``yield``\\ s a :class:`Read`; the control
plane hands it to :class:`Reads` and goes on serving; a worker thread runs it, and the handler resumes on the loop
with its result (or the exception it raised) and replies as usual.

What runs on a worker reads the store only (each read takes a connection of its own from the engine's pool; SQLite
in WAL mode reads beside ingest's writes) and touches no daemon state: what it needs is passed to it.

Bounded: :data:`WORKERS` reads at once, at most :data:`MAX_PENDING` in all; past that a request is refused with
``busy`` at once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Container
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["Read", "Reads", "WORKERS", "MAX_PENDING"]

WORKERS = 2  # reads at once: each holds a connection and a core's worth of Python while it runs
MAX_PENDING = 64  # reads running or waiting: each a suspended request and, once done, its result in memory


@dataclass(frozen=True)
class Read:
    """What a suspended handler waits for: ``fn()`` run on a worker thread; ``what`` names it in errors."""

    fn: Callable[[], Any]
    what: str


#: called on the loop with (flow, result, error, reply context): runs the flow on from its Read
Resume = Callable[[Any, Any, BaseException | None, Any], None]


class Reads:
    """The reads running on worker threads, and those done and waiting to be resumed on the loop."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="labd-read")
        self._done: queue.SimpleQueue[tuple[Any, Any, Future[Any]]] = queue.SimpleQueue()
        self._pending = 0
        #: written by a worker when a read is done, so the loop's poll wakes at once
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()  # a read that ends after close() must not write to a closed (reused) fd
        self._closed = False

    def __len__(self) -> int:
        """Reads running or waiting, done ones not yet resumed included."""
        return self._pending

    def fileno(self) -> int:
        """Readable when a read is done (for the loop's poller)."""
        return self._wake_r

    def submit(self, read: Read, flow: Any, context: Any) -> None:
        """Run ``read`` on a worker for ``flow``; raise ``busy`` when too many are pending."""
        if self._pending >= MAX_PENDING:
            from labd.daemon.api.base import ApiError  # not at import: the request handlers import this module

            raise ApiError("busy", f"{MAX_PENDING} long reads (whole records: replays, comparisons, DAGs, costs) "
                           "are already running or waiting; "
                           "retry later", {"pending": MAX_PENDING})
        future = self._pool.submit(read.fn)
        self._pending += 1
        future.add_done_callback(lambda f: self._finished(flow, context, f))

    def _finished(self, flow: Any, context: Any, future: Future[Any]) -> None:
        # on the worker thread (or at once, if the read was over before the callback was added)
        self._done.put((flow, context, future))
        with self._lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # a full pipe is already readable
                    os.write(self._wake_w, b"r")

    def serve(self, ready: Container[Any], resume: Resume) -> None:
        """On every pass of the loop, with the descriptors its poll found ready: resume the flows whose reads are
        done. Also when none is pending but the wake pipe is readable: a read that ended while :meth:`answered` ran
        was resumed there, its wake byte left behind, and a byte never read would make every poll return at once
        (the loop spinning a core)."""
        if self._pending or self._wake_r in ready:
            self.answered(resume)

    def answered(self, resume: Resume) -> None:
        """Resume, on the loop, the flows whose reads are done."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                flow, context, future = self._done.get_nowait()
            except queue.Empty:
                return
            self._pending -= 1
            error = future.exception()
            resume(flow, None if error is not None else future.result(), error, context)

    def close(self) -> None:
        """Stop taking reads; those waiting are dropped, a running one finishes on its thread unanswered."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
