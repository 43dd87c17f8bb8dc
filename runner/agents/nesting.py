"""Which LLM call encloses the current one, across plain threads too: a call made inside another must not wait for
it at the budget (:mod:`labd.runner.agents.budget`, ``call.nested``).

The call in flight is a context variable (``current_llm_call``), which ``asyncio`` tasks and ``asyncio.to_thread``
carry and a plain ``threading.Thread`` does not: a call made in a thread that a model, a tool or a middleware started
and joined within its own call was not known as nested, and near the budget it waited up to 300 s for the call
waiting for it. So a thread remembers the call in flight where it was started (``Thread.start`` is wrapped once per
runner, :func:`install`), and :func:`enclosing_call` looks there when the context has none. A call started in such a
thread after the enclosing call ended is not nested (``LLMCall.done``): a worker thread that outlives the call it
was started in (a pool's) is not taken for a part of it.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from labd.runner.agents.hooks import LLMCall, current_llm_call

__all__ = ["enclosing_call", "install"]

_lock = threading.Lock()
#: thread -> the LLM call in flight where it was started (weak: a thread that ended is forgotten with its object)
_started_in: weakref.WeakKeyDictionary[threading.Thread, LLMCall] = weakref.WeakKeyDictionary()
_installed = False


def enclosing_call() -> LLMCall | None:
    """The LLM call still in flight that the current code runs inside: the context's, else the one the current
    thread (or the thread that started it, and so on) was started in."""
    call = current_llm_call.get()
    if call is None:
        with _lock:
            call = _started_in.get(threading.current_thread())
    return call if call is not None and not call.done else None


def _after_fork() -> None:
    """In a forked child: a new lock (another thread may have held this one at the fork: it would never be released
    in the child, and its first thread start would hang)."""
    global _lock
    _lock = threading.Lock()


def install() -> None:
    """Wrap ``threading.Thread.start`` (once per process) to remember the enclosing call of each thread started."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    os.register_at_fork(after_in_child=_after_fork)
    original = threading.Thread.start

    def start(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        call = enclosing_call()
        if call is not None:
            with _lock:
                _started_in[self] = call
        original(self, *args, **kwargs)

    threading.Thread.start = start  # type: ignore[method-assign]
