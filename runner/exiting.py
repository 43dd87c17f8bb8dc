"""A session's workflow ends as a Python program does: its threads are waited for, its ``atexit`` handlers run.

A runner leaves with ``os._exit`` (it is a fork of the template: the template's exit handlers and buffers are not the
session's). Before this module, a workflow that returned while a non-daemon thread it had started was still writing a
file, or that registered an ``atexit`` handler to save its state, lost that work without a word: ``python script.py``
would have waited for the thread and run the handler. Now, after the workflow returns (or raises), the runner does
what the interpreter does at exit, in its order:

1. threading's own exit callbacks (``concurrent.futures`` lets the idle workers of an executor never shut down go);
2. it waits for every non-daemon thread, saying in the record which ones it waits for (once it has waited 0.2 s:
   idle workers end at once);
3. it runs the ``atexit`` handlers the session registered (those inherited from the template are cleared when the
   session starts: :func:`forget_inherited`).

Output of all of these is captured as the session's. A stop of the session meanwhile ends the wait (the cancel
message at the next check, within :data:`CHECK_S`; SIGTERM at once): a thread that never ends cannot hold a session
past its stop or its wall-time limit. A cancelled session does not wait: it was asked to stop.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable

__all__ = ["CHECK_S", "finish_like_python", "forget_inherited", "lingering_threads"]

CHECK_S = 0.2  # how often the wait for threads looks for a stop request


def forget_inherited() -> None:
    """Drop the ``atexit`` handlers this process inherited from the template: they are the template's (modules it
    preloaded registered them), not the session's. Call before the workflow's code runs."""
    atexit._clear()  # noqa: SLF001 - the one way to drop handlers registered by others


def lingering_threads() -> list[threading.Thread]:
    """Non-daemon threads other than this one that are still alive: those Python waits for at exit."""
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]


def finish_like_python(check_cancelled: Callable[[], object], say: Callable[[str], object]) -> None:
    """Threading's exit callbacks, then wait for the non-daemon threads, then the session's ``atexit`` handlers.
    ``check_cancelled`` raises to end the wait (a stop); ``say`` records a line of why the session has not ended
    yet. An exception of a handler is printed to stderr (so recorded) and the others still run, as Python does."""
    since, said = time.monotonic(), False

    def joined(t: threading.Thread) -> None:
        """Wait a moment for ``t``, then look for a stop; once the wait has lasted :data:`CHECK_S`, say (once) what
        the session waits for: idle workers (an executor's, AnyIO's after an agent session) end at once and are not
        worth a line in every session's record."""
        nonlocal said
        t.join(CHECK_S)
        if t.is_alive() and not said and time.monotonic() - since >= CHECK_S and (waiting := lingering_threads()):
            said = True
            names = ", ".join(x.name for x in waiting[:10]) + (f" and {len(waiting) - 10} more" if waiting[10:] else "")
            say(f"the workflow returned; waiting for {len(waiting)} thread(s) it started, as Python would: {names}")
        check_cancelled()

    # concurrent.futures registers here (threading._register_atexit): an executor never shut down has idle workers
    # waiting on its queue, which this callback ends; Python calls them before it waits for the threads. They join
    # the executors' workers without a bound (a job still running): on a thread of their own, so a stop ends the wait
    callbacks = list(getattr(threading, "_threading_atexits", ()))
    if callbacks:
        ran = threading.Thread(target=lambda: [cb() for cb in reversed(callbacks)], name="labd-exit-callbacks",
                               daemon=True)
        ran.start()
        while ran.is_alive():
            joined(ran)
    while waiting := lingering_threads():  # including threads the ones waited for started meanwhile
        for t in waiting:
            joined(t)
    check_cancelled()
    atexit._run_exitfuncs()  # noqa: SLF001 - the interpreter's own call at exit: prints a handler's exception
    # A stop meanwhile (SIGTERM raised Cancelled inside a handler, which _run_exitfuncs prints and goes past; or the
    # cancel message) still counts: the session is cancelled, not completed
    check_cancelled()
