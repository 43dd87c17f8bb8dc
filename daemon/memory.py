"""Keeping the daemon's resident memory close to what it uses (glibc malloc only; a no-op elsewhere).

The daemon is a handful of threads (main loop, ingest, monitor, indexer, ...). glibc gives each thread that
allocates a lot its own malloc arena, and freed memory inside an arena is rarely handed back to the kernel:
after a burst (four sessions flooding stdout) the RSS stayed ~130 MB above what the daemon still used.
Two arenas for the whole process, and a trim when ingest goes idle after a burst, keep RSS bounded.
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
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_arenas(n: int = 2) -> bool:
    """At most ``n`` malloc arenas for this process (call before threads start); False where unsupported."""
    return bool(_LIBC is not None and _LIBC.mallopt(_M_ARENA_MAX, n) == 1)


def trim() -> bool:
    """Hand free heap memory back to the kernel (``malloc_trim(0)``); True if some was released."""
    return bool(_LIBC is not None and _LIBC.malloc_trim(0))
