"""Workflows the fault tests run (loaded by import path ``tests.fault.faultflows:<name>``)."""

from __future__ import annotations

import os
import time
from typing import Any


def interleaved(ctx: Any, n: int = 300, linger: float = 120.0) -> int:
    """Print and emit ``n`` times, interleaved; then a step boundary (which drains the output pipes into
    events), a marker file, and a long sleep during which the test kills the runner."""
    for i in range(n):
        print(f"line {i}")
        ctx.emit("tick", {"i": i})
    with ctx.step("emitted"):
        pass
    with open("emitted.marker", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(linger)
    return n


def deep_emit(ctx: Any, depth: int = 300) -> str:
    """Emit a payload nested ``depth`` levels deep; report what happened, then emit a normal event."""
    deep: Any = {}
    for _ in range(depth):
        deep = {"a": deep}
    try:
        ctx.emit("deep", deep)
        outcome = "accepted"
    except ValueError as exc:  # PayloadError
        outcome = f"refused: {exc}"
    print(outcome, flush=True)
    ctx.emit("after", {"ok": True})
    return outcome
