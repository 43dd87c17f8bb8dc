"""Keeping the daemon's resident memory close to what it uses (glibc malloc only; a no-op elsewhere).

The daemon is a handful of threads (main loop, ingest, monitor, indexer, ...). glibc gives each thread that
allocates a lot its own malloc arena, and freed memory inside an arena is rarely handed back to the kernel:
after a burst (four sessions flooding stdout) the RSS stayed ~130 MB above what the daemon still used.
Two arenas for the whole process keep RSS bounded (measured: tests/fault/test_flood.py, docs/reliability.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["limit_arenas", "trim"]

_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc has it; musl and others may not
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_arenas(n: int = 2) -> bool:
    """At most ``n`` malloc arenas for this process (call before threads start); False where unsupported."""
    return bool(_LIBC is not None and _LIBC.mallopt(_M_ARENA_MAX, n) == 1)


def trim() -> bool:
    """Hand the free memory at the top of every malloc arena back to the kernel (``malloc_trim(0)``): after the daemon
    dropped connections whose queued frames filled its heap (daemon/inbound.py); False where unsupported."""
    try:
        return bool(_LIBC is not None and _LIBC.malloc_trim(0))
    except AttributeError:
        return False
