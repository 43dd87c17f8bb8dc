"""What a process forked by the workflow (``os.fork``, a ``multiprocessing`` fork-context worker, ``subprocess``
with ``preexec_fn``) gets from the runner, and what it must not.

The runner is multi-threaded (channel thread, output readers, ZeroMQ I/O threads) and catches SIGTERM to
cancel the session. A forked child has only the forking thread, so:

* **SIGTERM must kill it.** ``Pool.terminate()`` SIGTERMs its workers and then joins them. The child has to
  have the default SIGTERM action *from the first instruction on*: resetting it in an ``after_in_child``
  at-fork handler alone leaves a window (fork -> handler) in which a SIGTERM is caught by the runner's
  inherited handler and then lost (CPython clears signals pending from before its own after-fork reset, and
  ignores one still pending once the action is the default: "Signal 15 ignored due to race condition").
  A worker that survives its SIGTERM while a sibling died holding the pool's queue lock blocks forever, and so does
  ``Pool.join()``: that was the flaky ``test_multiprocessing_pools_in_a_workflow_can_be_terminated``
  (measured: with the reset alone, 299 of 300 children SIGTERMed right after fork survived). So SIGTERM is
  *blocked* from just before the fork until the child has reset it; a SIGTERM sent meanwhile stays
  pending in the kernel and takes its default action when the child unblocks it.
* **It must not touch the parent's event path** (:meth:`Channel.forget_after_fork`): the spool is a
  ``MAP_SHARED`` mapping (shared with the child) and ``src_seq`` is the parent's counter. A child's events
  go to the runner over a socket instead, which records them (:mod:`labd.runner.forked`); its DAG nodes get
  ids of their own (``f<j>.<i>``, ``j`` the fork's number in the forking process). Its log records go to stderr,
  which is the parent's captured output. It cannot ask for an approval nor pause (no answer or resume could
  reach it): those raise at once.
* **Its ``ctx`` must not deadlock or write the parent's record** (:func:`detach_context`): the locks of the
  runner's objects (context, file tracker, durable store, approvals) are re-created unlocked, since a parent
  thread may have held one at fork time; a step in the child neither scans files nor checkpoints (the
  checkpoint store and the file tracker's state are the parent's).
* **It must be able to print.** ``sys.stdout``/``sys.stderr`` are replaced by fresh streams over fds 1 and 2:
  the inherited buffered writers may be locked by a parent thread that was printing at fork time (that
  lock would never be released in the child) and may hold the parent's unflushed partial line (the child
  would print it a second time).
* **It must not run the runner's exit path.** A raw ``os.fork`` child that calls ``sys.exit()``, raises, or
  returns from the workflow function unwinds into :func:`labd.runner.session.run_session`, which would
  record an outcome, close the output capture and wait up to the flush timeout for acknowledgements of the
  parent's events on a channel it does not have (on a lock a parent thread may have held at fork time). The
  workflow is called through :func:`call`, which ends such a child as a plain Python process would end:
  the ``SystemExit`` code (or 1 and a traceback on stderr, or 0 after a return), atexit handlers, flushed
  std streams, ``os._exit``. (``multiprocessing`` workers never get there: they end in ``os._exit``.)
"""

from __future__ import annotations

import atexit
import ctypes
import io
import itertools
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

__all__ = ["install", "fresh_std_streams", "call", "detach_context"]

_BLOCKED = {signal.SIGTERM}
_saved = threading.local()  # per forking thread (two threads may fork at once): did we block SIGTERM?


def _before() -> None:
    _saved.unblock = True  # set first: pthread_sigmask may raise *after* blocking (below)
    # CPython runs pending Python signal handlers after any pthread_sigmask call: a SIGTERM caught just before
    # the fork runs the runner's handler here and its Cancelled leaves this call (CPython then reports it as
    # unraisable; the cancel it requested stands). SIGTERM is blocked by then, and is unblocked after the fork.
    _saved.unblock = signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)


def _restore() -> None:
    if getattr(_saved, "unblock", False):
        _saved.unblock = False
        # In the child a SIGTERM sent since the fork kills it here; in the parent it runs the runner's handler
        # (as in _before, its Cancelled cannot leave an at-fork hook; the cancel stands).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED)


def fresh_std_streams() -> None:
    """New line-buffered ``sys.stdout``/``sys.stderr`` over fds 1 and 2 (which still lead to the runner's
    capture pipes), so the child owns no lock and no buffered text of the parent's.

    The inherited streams are never freed in the child: freeing one flushes it, which writes the parent's
    partial line a second time, or blocks for ever on a lock a parent thread held at fork time."""
    for old in (sys.stdout, sys.stderr):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(old))
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)


def install(*in_child: Callable[[], None]) -> None:
    """Make forks of this process safe (see the module doc); ``in_child`` run in each forked child, in order,
    with SIGTERM still blocked and its action already the default.

    Register this after everything else the runner registers at fork, so its ``before`` runs first
    (``before`` handlers run in reverse order of registration) and SIGTERM is blocked throughout."""

    def child() -> None:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            fresh_std_streams()
            for hook in in_child:
                try:
                    hook()
                except Exception:  # noqa: BLE001 - one broken hook must not leave SIGTERM blocked
                    logging.getLogger("labd.runner.forksafe").exception("at-fork hook failed")
        finally:
            _restore()  # a SIGTERM that came since the fork kills the child here

    os.register_at_fork(before=_before, after_in_parent=_restore, after_in_child=child)


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in the runner; in a child the workflow forked, the end of the child's process
    (see the module doc) however ``fn`` ends there."""
    me = os.getpid()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        if os.getpid() != me:
            _end_child(exc)
        raise
    if os.getpid() != me:
        _end_child(None)
    return result


def _end_child(exc: BaseException | None) -> NoReturn:
    code = 0
    try:
        if isinstance(exc, SystemExit):
            if isinstance(exc.code, int) or exc.code is None:
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        elif exc is not None:
            traceback.print_exception(exc, file=sys.stderr)
            code = 1
        atexit._run_exitfuncs()  # noqa: SLF001 - what interpreter exit runs (the runner registers none)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except BaseException:  # noqa: BLE001 - ending the child must not fail
        code = code or 1
    os._exit(code)


def _reinit_locks(obj: Any) -> None:
    """Re-create, unlocked, every lock, condition and event that is an attribute of ``obj``: in a forked
    child, one held by a parent thread at fork time would never be released. (``_at_fork_reinit`` is what
    CPython's threading module does for its own locks after a fork.)"""
    for value in list(vars(obj).values()):
        reinit = getattr(value, "_at_fork_reinit", None)
        if reinit is not None and isinstance(value, _SYNC_TYPES):
            reinit()


_SYNC_TYPES = (type(threading.Lock()), type(threading.RLock()), threading.Condition, threading.Event)


def detach_context(ctx: Any, *owned: Any) -> None:
    """In a child forked by the workflow: ``ctx`` (and the runner objects in ``owned``) usable without a lock
    a parent thread may hold, and without side effects on the parent's record (no file scan, no checkpoint,
    no output sync)."""
    for obj in (ctx, *owned, ctx.approvals):
        if obj is not None:
            _reinit_locks(obj)
    ctx.durable = None
    ctx.after_step = lambda node_id: None
    ctx.before_boundary = lambda: None
    # Its DAG nodes are "f<j>.<i>" (a grandchild's "f<j>.f<k>.<i>"): j the fork number reserve_fork took in the
    # forking process, from a counter of its own, so the runner's own node ids ("n<i>") never depend on how many
    # processes it forked (replays compare them) and children's ids are unique without a pid.
    global _forks
    ctx._node_prefix = child_prefix(ctx)  # noqa: SLF001
    ctx._node_ids = itertools.count(1)  # noqa: SLF001
    _forks = itertools.count(1)  # the child's own forks
    # Pause, resume and approval answers arrive on the runner's channel thread, which the child has not: it does
    # not stop at a pause the runner was asked for, and what would wait for an answer fails at once.
    ctx._pause = None  # noqa: SLF001
    ctx.wait_paused = cannot_pause
    if ctx.approvals is not None:
        ctx.approvals.forked = True  # (runner/approvals.py)


_reserved = threading.local()  # per forking thread: the fork number reserve_fork took for the next child
_forks = itertools.count(1)  # this process's fork numbers (a resumed runner goes on after its record's)


def number_forks_from(first: int) -> None:
    """Number this process's forks from ``first`` (a resumed runner: after the numbers its record holds)."""
    global _forks
    _forks = itertools.count(first)


def reserve_fork() -> None:
    """Before a fork, in the forking thread: take the child's fork number (its node ids: :func:`detach_context`)."""
    _reserved.j = next(_forks)


def child_prefix(ctx: Any) -> str:
    """The node-id prefix of a child of the process whose context is ``ctx``: ``f<j>.`` after that process's own
    (none in the runner, whose ids are ``n<i>``), ``j`` the fork number :func:`reserve_fork` took in this thread,
    now given away (or the next one: a child started without a fork, :mod:`labd.runner.spawned`)."""
    j = getattr(_reserved, "j", None)
    _reserved.j = None
    own = ctx._node_prefix if ctx._node_prefix != "n" else ""  # noqa: SLF001
    return f"{own}f{j if j is not None else next(_forks)}."


def forget_reserved() -> None:
    """After a fork, in the forking process: the number is the child's (a fork that never ran the before hooks must
    not reuse it)."""
    _reserved.j = None


def cannot_pause(by: str, reason: str) -> float | None:
    raise RuntimeError(f"cannot pause ({by}: {reason}) in a process the workflow forked: its resume could not "
                       "reach it")
