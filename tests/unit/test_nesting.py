"""Which LLM call encloses code running in another thread (labd.runner.agents.nesting): a plain thread started while
a call is in flight runs inside it (and so do threads it starts) until the call ends, then inside the call that one
was made in, if that is still in flight; a pool's job run with its caller's context is inside the caller's call only."""

from __future__ import annotations

import asyncio
import threading

from labd.runner.agents import nesting
from labd.runner.agents.hooks import LLMCall, current_llm_call


def _call(parent: LLMCall | None = None) -> LLMCall:
    call = LLMCall("a", {}, None, None)
    call.parent = parent
    return call


def test_a_thread_started_inside_a_call_is_inside_it_until_it_ends() -> None:
    """A thread (and a thread it starts in turn) started while call B (made in call A) is in flight sees B; once B is
    done it sees A; once A is done, none. A thread started outside any call sees none."""
    nesting.install()
    outer = _call()
    inner = _call(outer)
    seen: dict[str, object] = {}
    looked, inner_done, outer_done = threading.Event(), threading.Event(), threading.Event()

    def grandchild() -> None:
        seen["grandchild"] = nesting.enclosing_call()

    def child() -> None:
        seen["child"] = nesting.enclosing_call()
        t = threading.Thread(target=grandchild)
        t.start()
        t.join()
        looked.set()
        inner_done.wait(10)
        seen["after inner"] = nesting.enclosing_call()
        outer_done.wait(10)
        seen["after outer"] = nesting.enclosing_call()

    token = current_llm_call.set(inner)
    try:
        worker = threading.Thread(target=child)
        worker.start()
    finally:
        current_llm_call.reset(token)
    outside = threading.Thread(target=lambda: seen.setdefault("outside", nesting.enclosing_call()))
    outside.start()
    outside.join()
    assert looked.wait(10)
    inner.done = True
    inner_done.set()
    while "after inner" not in seen and worker.is_alive():
        worker.join(0.01)
    outer.done = True
    outer_done.set()
    worker.join(10)
    assert seen == {"child": inner, "grandchild": inner, "outside": None, "after inner": outer, "after outer": None}


def test_a_pool_thread_started_inside_a_call_does_not_put_later_callers_inside_it() -> None:
    """``asyncio.to_thread`` from outside any call, on a pool whose worker thread was started inside a call still in
    flight, is not inside that call (its job runs in its caller's context): such a call would skip the budget's wait
    (review helper-154)."""
    nesting.install()
    call = _call()

    async def main() -> tuple[object, object]:
        token = current_llm_call.set(call)
        try:
            inside = await asyncio.to_thread(nesting.enclosing_call)  # starts the pool's worker inside the call
        finally:
            current_llm_call.reset(token)
        later = await asyncio.to_thread(nesting.enclosing_call)  # the same worker, from outside any call
        return inside, later

    assert asyncio.run(main()) == (call, None)
