"""Skipping the body of a completed step's ``with`` block on re-execution (:mod:`labd.runner.durable`).

``with ctx.step(...) as node:`` cannot skip its block in Python, so a recorded step sets a frame trace on the caller
(``sys.settrace``, as debuggers use it) that raises :class:`SkipBody` at the body's first line; the step's context
manager swallows it. CPython-specific (3.11-3.13 have ``BEFORE_WITH``; on another shape the body runs and its step
is recorded again rather than skipped wrongly).
"""

from __future__ import annotations

import dis
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["SkipBody", "skip_with_body"]

_NOP = dis.opmap["NOP"]


def _body_start(frame: FrameType) -> int:
    """The offset of the first instruction of the ``with`` body being entered in ``frame`` (after
    ``BEFORE_WITH`` and the store of its ``as`` target); 0 when the bytecode is not the expected shape."""
    instrs = list(dis.get_instructions(frame.f_code))
    for i, ins in enumerate(instrs):
        if ins.offset == frame.f_lasti and ins.opname == "BEFORE_WITH" and i + 2 < len(instrs):
            j = i + 1
            if instrs[j].opname == "UNPACK_SEQUENCE":  # `as (a, b)`: skip the stores of its items
                j += instrs[j].arg or 0
            return instrs[j + 1].offset
    return 0


class SkipBody(Exception):  # noqa: N818 - a signal, not an error
    """Raised by the trace hook on the first line of a skipped step's ``with`` body."""


def skip_with_body(frame: FrameType) -> Callable[[], None]:
    """Make the ``with`` block of ``frame`` that is being entered raise :class:`SkipBody` on its first line
    (the step's ``__exit__`` swallows it): how a completed step's body is not executed again. Returns a
    function that restores the previous tracing. CPython's frame tracing, as debuggers use it."""
    previous = sys.gettrace()
    with_line = frame.f_lineno
    body_start = _body_start(frame)

    def on_line(fr: FrameType, event: str, _arg: Any) -> Any:
        # Only inside the body: past the `as` target's store (which may sit on a later line of a multi-line
        # `with`), not on the `with` line (its __exit__ call is attributed to it), and not on a NOP (a body of
        # just `pass` compiles to a NOP outside the block's handler; such a body may as well run).
        if fr is frame and event == "line" and fr.f_lasti >= body_start and fr.f_lineno != with_line \
                and fr.f_code.co_code[fr.f_lasti] != _NOP:
            raise SkipBody
        return on_line

    frame.f_trace = on_line
    frame.f_trace_lines = True
    sys.settrace(lambda *_a: None)  # turns tracing on for this thread; new frames stay untraced

    def undo() -> None:
        frame.f_trace = None
        sys.settrace(previous)
    return undo
