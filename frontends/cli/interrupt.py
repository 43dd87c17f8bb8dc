"""Ctrl-C that cannot be lost while a command follows a stream.

Python turns SIGINT into ``KeyboardInterrupt`` at the next bytecode the main thread runs. If that bytecode
belongs to a finalizer (``__del__``, a weakref callback run by the garbage collector), the exception is
printed as "Exception ignored" and dropped, and a ``labd run --follow`` would go on following the session to
its end. :func:`ctrl_c` records the press as well, so the follow loop can act on it at its next event even
when the exception was swallowed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["CtrlC", "ctrl_c"]


class CtrlC:
    """Whether Ctrl-C was pressed inside :func:`ctrl_c`; :meth:`check` raises ``KeyboardInterrupt`` if so."""

    def __init__(self) -> None:
        self.pressed = False

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    def _handler(self, _signum: int, _frame: FrameType | None) -> None:
        self.pressed = True
        raise KeyboardInterrupt


@contextmanager
def ctrl_c() -> Iterator[CtrlC]:
    """Install a SIGINT handler that remembers the press (and still raises ``KeyboardInterrupt``) for the
    duration of the block; the previous handler is restored after it. Off the main thread (where signal
    handlers cannot be set) the flag simply stays false."""
    state = CtrlC()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.signal(signal.SIGINT, state._handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
