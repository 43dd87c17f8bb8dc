"""Which LLM call encloses the current one, across plain threads too: a call made inside another must not wait for
it at the budget (:mod:`labd.runner.agents.budget`, ``call.nested``).

The call in flight is a context variable (``current_llm_call``), which ``asyncio`` tasks and ``asyncio.to_thread``
carry and a plain ``threading.Thread`` does not (a thread starts with an empty context): a call made in a thread that
a model, a tool or a middleware started and joined within its own call was not known as nested, and near the budget
it waited up to 300 s for the call waiting for it. So ``Thread.start`` is wrapped once per runner (:func:`install`):
a thread started while a call is in flight runs with that call in its own context. Jobs that pools run with their
caller's context (``asyncio.to_thread``, anyio's ``run_sync``) see their caller's call, not the one the pool's thread
was started in; a job given to a ``ThreadPoolExecutor`` directly runs in its thread's context, so it counts as inside
the call that thread was started in while that call is in flight. :func:`enclosing_call` skips calls that ended
(``LLMCall.done``) up to the call they were made in (``LLMCall.parent``): a thread that outlives its call is not
taken for a part of it.
"""

from __future__ import annotations

import threading
from typing import Any

from labd.runner.agents.hooks import LLMCall, current_llm_call

__all__ = ["enclosing_call", "install"]

_installed = False


def enclosing_call() -> LLMCall | None:
    """The LLM call still in flight that the current code runs inside (through its context, or the thread it runs in
    having been started inside it), or None."""
    call = current_llm_call.get()
    while call is not None and call.done:
        call = call.parent
    return call


def install() -> None:
    """Wrap ``threading.Thread.start`` (once per process): a thread started inside a call runs inside it."""
    global _installed
    if _installed:
        return
    _installed = True
    original = threading.Thread.start

    def start(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        call = enclosing_call()
        if call is not None:
            run = self.run

            def run_inside() -> None:
                current_llm_call.set(call)  # this thread's own context: nothing outside it changes
                run()
            self.run = run_inside  # type: ignore[method-assign]
        original(self, *args, **kwargs)

    threading.Thread.start = start  # type: ignore[method-assign]
