"""Which LLM call encloses code running in a plain thread (labd.runner.agents.nesting): the call in flight where the
thread was started, while it is in flight; none once it ended (a worker thread outliving its call)."""

from __future__ import annotations

import threading

from labd.runner.agents import nesting
from labd.runner.agents.hooks import LLMCall, current_llm_call


def test_a_thread_started_inside_a_call_is_inside_it_until_it_ends() -> None:
    """A thread (and a thread it starts in turn) started while a call is in flight sees that call as enclosing; once
    the call is done, the same threads see none; a thread started outside any call sees none."""
    nesting.install()
    call = LLMCall("a", {}, None, None)
    seen: dict[str, object] = {}
    go_on = threading.Event()

    def grandchild() -> None:
        seen["grandchild"] = nesting.enclosing_call()

    def child() -> None:
        seen["child"] = nesting.enclosing_call()
        t = threading.Thread(target=grandchild)
        t.start()
        t.join()
        go_on.wait(10)
        seen["child after"] = nesting.enclosing_call()

    token = current_llm_call.set(call)
    try:
        worker = threading.Thread(target=child)
        worker.start()
    finally:
        current_llm_call.reset(token)
    outside = threading.Thread(target=lambda: seen.setdefault("outside", nesting.enclosing_call()))
    outside.start()
    outside.join()
    call.done = True
    go_on.set()
    worker.join(10)
    assert seen == {"child": call, "grandchild": call, "outside": None, "child after": None}
