"""When a runner's events leave: the runner channel's sending policy (:mod:`labd.runner.channel` moves them).

Two speeds. What people watch (output, log records, lifecycle, steps, approvals, errors) is *urgent* and leaves
at once; bulk tracking kinds (agent turns, ``llm.*``, ``tool.*``, ``cost.*``, ``file.*``, ``custom``...) wait up to
:data:`BULK_DELAY_S` for company or until :data:`BULK_BYTES` pile up. Urgent messages are paced by a token bucket
(:class:`Pacer`): :data:`URGENT_BURST` leave at once, then one per :data:`URGENT_GAP_S`, so a flood of output becomes
a few hundred messages per second while the first events of a burst (a step's start, then its first print) wait
for nothing. A message holds at most :data:`BATCH_EVENTS` events and about :data:`BATCH_BYTES`
(:func:`size_bounded`). docs/design.md, "Runner channel and spool".
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

__all__ = ["BATCH_BYTES", "BATCH_EVENTS", "BULK_BYTES", "BULK_DELAY_S", "BULK_TICK_S", "URGENT_BURST",
           "URGENT_GAP_S", "Pacer", "URGENT_KINDS", "is_bulk", "size_bounded", "urgent"]

BATCH_EVENTS = 2000
BATCH_BYTES = 512 * 1024
BULK_DELAY_S = 0.25  # how long a bulk tracking event may wait for company (docs/design.md, "Bulk delay 0.25 s")
BULK_BYTES = 256 * 1024  # ... or until this much is waiting
#: after a send the channel thread ticks every BULK_DELAY_S for this long, armed: a bulk emit then wakes nothing
BULK_TICK_S = 1.0
URGENT_GAP_S = 0.002  # past the burst, urgent messages leave this far apart
URGENT_BURST = 4  # urgent messages that may leave at once after a quiet spell

_BULK_PREFIXES = ("agent.", "llm.", "tool.", "cost.", "file.", "code.", "subagent.")

#: kind -> urgent, filled as kinds are seen (emit's hot path: one dict lookup instead of a call)
URGENT_KINDS: dict[str, bool] = {}
_URGENT_CACHE_MAX = 512  # a workflow inventing kinds must not grow it without bound


def is_bulk(kind: str) -> bool:
    """Bulk tracking kinds are batched by time and bytes; every other kind leaves at once."""
    return kind == "custom" or kind.startswith(_BULK_PREFIXES)


def urgent(kind: str) -> bool:
    """``not is_bulk(kind)``, remembered in :data:`URGENT_KINDS` (callers on a hot path look there first)."""
    value = not is_bulk(kind)
    if len(URGENT_KINDS) < _URGENT_CACHE_MAX:
        URGENT_KINDS[kind] = value
    return value


class Pacer:
    """The urgent messages' token bucket: :data:`URGENT_BURST` at once, then one per :data:`URGENT_GAP_S`.
    Not thread-safe: the channel calls it under its lock, with its own clock readings."""

    def __init__(self) -> None:
        self._tokens = float(URGENT_BURST)  # messages that may leave at once, as of _at (refilled 1 per gap)
        self._at = 0.0

    def available(self, now: float) -> float:
        """How many messages may leave at once at ``now`` (URGENT_BURST at most)."""
        return min(float(URGENT_BURST), self._tokens + (now - self._at) / URGENT_GAP_S)

    def due(self, now: float) -> float:
        """When the next urgent message may leave: ``now``, or when the next token comes (within one gap)."""
        tokens = self.available(now)
        return now if tokens >= 1.0 else now + (1.0 - tokens) * URGENT_GAP_S

    def spent(self, now: float) -> None:
        """A message left at ``now``. Never below 0: a message forced out by size does not make the next urgent
        one wait longer than one gap."""
        self._tokens = max(0.0, self.available(now) - 1.0)
        self._at = now


def size_bounded(batch: list[bytes]) -> tuple[list[bytes], int]:
    """Cut a batch of encoded events so it stays under BATCH_BYTES (output chunks can be large); returns
    the batch and its bytes (counted in C: no Python step per event)."""
    if not batch:
        return batch, 0
    sizes = list(accumulate(map(len, batch)))
    n = max(1, bisect_right(sizes, BATCH_BYTES))
    return (batch if n == len(batch) else batch[:n]), sizes[n - 1]
