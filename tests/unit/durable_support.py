"""A durable Context without a runner, for the unit tests of durable steps and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labd.runner.context import Context
from labd.runner.durable import Durable
from labd.runner.files import FileTracker


def durable_ctx(tmp: Path, seed: dict[str, Any] | None = None) -> tuple[Context, list[tuple[str, Any, Any]]]:
    """A Context on ``tmp/s/work`` with file tracking and durable steps; returns it and the list its events go to
    (``(kind, payload, node)``)."""
    events: list[tuple[str, Any, Any]] = []

    def emit(kind: str, payload: Any, node: Any = None, parent: Any = None) -> int:
        events.append((kind, payload, node))
        return len(events)

    work = tmp / "s" / "work"
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context("s", work, {}, emit, None, {})
    files = FileTracker(work, emit)
    ctx.after_step = lambda node: files.scan(node)
    ctx.durable = Durable(emit, tmp / "s", work, files, seed)
    return ctx, events
