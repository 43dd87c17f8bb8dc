"""Decoding without the cyclic garbage collector: what a client pays per event it follows, halved.

A live message holds up to a few thousand events. Decoding it creates two containers per event (a list and a
payload dict, then the dict the SDK hands out), all alive until the message is done, so CPython's generational
collector runs several times per message, each time walking the young objects and, every few messages, every
object of the process (it counts allocations, not garbage). Measured in one process (labd, SQLAlchemy and
psutil imported, a 1,900-event message of small events): ``orjson.loads`` 1.1 us per event with the collector
on, 0.45 us with it off; with the SDK's conversion to dicts, 1.6-1.9 against 1.0-1.1 us (docs/benchmarks.md
§33). JSON cannot make a reference cycle, so nothing decoding makes needs the cyclic collector: reference
counting frees all of it. :func:`gc_paused` turns the collector off for the few milliseconds a decode takes (never
while the caller's own code runs), the advice of msgpack's documentation for large unpacking.

The collector's switch is process-wide: pauses nest and overlap across threads (a count under a lock), and the
collector is switched on again only by the pause that switched it off, and only if it was on when that pause began
(a program that runs with ``gc.disable()`` keeps it off).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]

_lock = threading.Lock()
_depth = 0
_switched_off = False  # the outermost pause found the collector on and turned it off


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the ``with`` body with the cyclic garbage collector off (as it was found after the last pause ends)."""
    global _depth, _switched_off
    with _lock:
        if _depth == 0:
            _switched_off = gc.isenabled()
            if _switched_off:
                gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _switched_off:
                _switched_off = False
                gc.enable()
