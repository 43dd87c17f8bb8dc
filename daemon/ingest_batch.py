"""What one turn of the ingest loop stages: the :class:`Batch` (rows, projection changes, and what to do once
they are committed), the live-tail shape of an event, and the memory settings of the event path.

Split from :mod:`labd.daemon.ingest` (the writer loop) and :mod:`labd.daemon.runner_frames` (decoding and
validating what runners send): both fill a Batch; the writer commits it, then publishes, acknowledges and
notifies from it.
"""

from __future__ import annotations

import gc
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson

from labd.store.projections import RowChanges
from labd.store.writer import EventRow, NodeRow, PlainRow

__all__ = ["Batch", "LiveEvents", "LiveRun", "Fragment", "tune_gc", "PUB_CHUNK_BYTES", "PUB_SNDHWM", "GC_GEN0"]

Fragment = orjson.Fragment  # JSON already encoded, spliced verbatim into a message (orjson >= 3.9)

PUB_CHUNK_BYTES = 256 * 1024  # live messages: small enough that PUB_SNDHWM of them bound a slow follower
PUB_SNDHWM = 64
LIVE_OVERHEAD = 100  # bytes counted per live event beside its payload (seq, ts, kind, ...)


class LiveRun:
    """The events of one runner frame that all took ingest's hot path in order, published as the runner sent
    them: ``span`` is the frame's ``events`` array, byte for byte, and each event's ``seq`` is its ``src_seq``
    plus ``offset`` (see :mod:`labd.ipc.live`). The ingest thread's live-copy work for it is O(1)."""

    __slots__ = ("offset", "span")

    def __init__(self, offset: int, span: bytes | memoryview) -> None:
        self.offset = offset
        self.span = span


class LiveEvents:
    """One session's committed events for the live tail, in ``seq`` order: per-event items ``[seq, ts, kind, src,
    node_id, parent, payload, src_seq]`` with the payload an ``orjson.Fragment`` of the very text stored (encoded
    once), beside them their approximate sizes (kept apart so that cutting them into messages is done in C, not
    per event), and :class:`LiveRun` s, each placed before the per-event item at its index (``runs``)."""

    __slots__ = ("sizes", "events", "runs")

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.events: list[list[Any]] = []
        self.runs: list[tuple[int, LiveRun]] = []

    def add(self, payload_size: int, event: list[Any]) -> None:
        self.sizes.append(payload_size + LIVE_OVERHEAD)
        self.events.append(event)

    def add_run(self, run: LiveRun) -> None:
        """A runner frame's events, after every event added so far."""
        self.runs.append((len(self.events), run))

    def extend(self, other: LiveEvents) -> None:
        base = len(self.events)
        self.runs += [(at + base, run) for at, run in other.runs]
        self.sizes += other.sizes
        self.events += other.events

    def messages(self) -> list[list[list[Any]] | LiveRun]:
        """What to publish, in order: each run on its own, the per-event items between runs cut by :meth:`chunks`."""
        if not self.runs:
            return list(self.chunks())
        out: list[list[list[Any]] | LiveRun] = []
        start = 0
        for at, run in self.runs:
            if at > start:
                out += self.chunks(start, at)
            out.append(run)
            start = at
        if start < len(self.events):
            out += self.chunks(start, len(self.events))
        return out

    def chunks(self, lo: int = 0, hi: int | None = None) -> list[list[list[Any]]]:
        """The events ``[lo:hi]`` cut so no message nears the clients' size limit (output chunks can be 64 KiB): a
        message ends with the event that takes it past :data:`PUB_CHUNK_BYTES`."""
        evs = self.events[lo:hi]
        cum = list(accumulate(self.sizes[lo:hi]))
        out: list[list[list[Any]]] = []
        start, base, n = 0, 0, len(evs)
        while start < n:
            end = min(n, bisect_right(cum, base + PUB_CHUNK_BYTES, start) + 1)
            out.append(evs[start:end])
            base, start = cum[end - 1], end
        return out


@dataclass
class Batch:
    """What one pass over incoming items produced: rows and projection changes to commit, then what to
    publish, acknowledge and tell the rest of the daemon once they are committed."""

    rows: list[EventRow] = field(default_factory=list)
    #: hot-path rows without node id and parent (inserted by their own statement: store.writer.PlainRow)
    plain: list[PlainRow] = field(default_factory=list)
    #: rows with a node id and no parent (their own INSERT too: store.writer.NodeRow)
    noded: list[NodeRow] = field(default_factory=list)
    changes: RowChanges = field(default_factory=RowChanges)
    #: per runner: (routing id, ask it to resend, ack at once rather than paced: daemon/acks.py)
    acks: dict[str, tuple[bytes, bool, bool]] = field(default_factory=dict)
    #: per session, the committed events to publish (payloads pre-encoded)
    pub: dict[str, LiveEvents] = field(default_factory=dict)
    notes: list[tuple[Any, ...]] = field(default_factory=list)
    #: retention requests: (session ids, reply_to), run after this batch is committed
    deletes: list[tuple[list[str], Any]] = field(default_factory=list)
    #: other writes after this batch: (op, argument, reply_to)
    jobs: list[tuple[Any, ...]] = field(default_factory=list)
    to_runners: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)
    #: daemon items to process again in the next pass, first (a session.ended whose spool is read over passes)
    later: list[tuple[Any, ...]] = field(default_factory=list)
    count: int = 0

    def size(self) -> int:
        """Event rows staged, of every shape."""
        return len(self.rows) + len(self.plain) + len(self.noded)

    def stage_row(self, sid: str, seq: int, ts: float, kind: str, src: str, src_seq: int, node_id: str | None,
                  parent: int | None, text: str) -> None:
        """Stage one event row in the list of its shape (no NULL is ever bound: store.writer.PlainRow)."""
        if parent is not None:
            self.rows.append((sid, seq, ts, kind, src, src_seq, node_id, parent, text))
        elif node_id is None:
            self.plain.append((sid, seq, ts, kind, src, src_seq, text))
        else:
            self.noded.append((sid, seq, ts, kind, src, src_seq, node_id, text))

    def merge(self, other: Batch) -> None:
        """Take over the after-commit work of an event committed on its own (safe mode)."""
        self.count += other.size()
        for sid, evs in other.pub.items():
            self.pub.setdefault(sid, LiveEvents()).extend(evs)
        self.notes.extend(other.notes)
        self.to_runners.extend(other.to_runners)  # what staging an event tells runners (objects.missing)
        self.ended |= other.ended


#: allocations between young-generation collections (CPython's default is 700). Decoding one runner frame
#: allocates thousands of containers; at the default, collections cost ingest as much as the decoding itself.
GC_GEN0 = 20_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for the event path (process-wide; called as ingest starts).

    Everything the daemon built while starting (modules, the SQLAlchemy metadata, ...) lives as long as the
    daemon: frozen, so full collections no longer walk it. And the young generation is collected every
    :data:`GC_GEN0` allocations instead of 700. Events are acyclic lists and dicts freed by reference
    counting; the collector is kept (cycles elsewhere are still collected), only run less often."""
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0, gen0), gen1, gen2)
