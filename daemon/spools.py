"""Reading runners' spools on the daemon side: what a session's runner recorded that the store lacks.

The file format belongs to :mod:`labd.runner.spool`; this module turns its records into the same event items
a runner sends in an ``events`` frame, so ingest stores them under the same rules (validation, ``src_seq``,
exactly once). Ingest calls it when a session has ended and before it stores ``session.ended``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from labd.runner.spool import HEADER, SPOOL_NAME, scan_spool

__all__ = ["spool_of", "spooled_events", "SpoolChunk", "remove_spool", "ran_unrecorded", "same_file", "spool_ino"]


def spool_of(sessions_dir: Path, sid: str) -> Path:
    """The spool file of session ``sid``."""
    return sessions_dir / sid / SPOOL_NAME


@dataclass
class SpoolChunk:
    """Events read from a spool in one go (:func:`spooled_events`)."""

    #: ``[src_seq, ts, kind, node_id, parent, payload]`` items, in file order
    events: list[list[Any]] = field(default_factory=list)
    #: the reading stopped at a bound, not at the spool's end: read on from ``end``
    more: bool = False
    #: the byte offset just past the last record read (where the next chunk starts)
    end: int = 0
    #: the byte offset past the last record skipped (stored already) before the first one read: every record
    #: before it is at or below ``after``
    skipped_to: int = 0


def spooled_events(path: Path, after: int, *, start: int = 0, max_event: int | None = None,
                   max_events: int | None = None, max_bytes: int | None = None) -> SpoolChunk:
    """The events in the spool at ``path`` with ``src_seq > after``, from byte ``start`` (0, or the ``end`` of an
    earlier chunk), at most ``max_events`` of them or about ``max_bytes`` of records (at least one).

    A record that does not decode to such an item with its own ``src_seq`` becomes an item of kind
    ``spool.unreadable`` (ingest stores it as ``event.rejected`` in its slot, keeping the sequence whole). A
    record longer than ``max_event`` (more than a runner could send in one message) becomes ``event.truncated``
    with its kind and size, as the runner's channel replaces an event too large to send; it is never read whole.
    Raises OSError if the file exists but cannot be read."""
    chunk = SpoolChunk(end=start, skipped_to=start)
    nbytes = 0
    # A record longer than ``max_event`` is taken from its head, neither read further nor checked (attack review:
    # records claiming 2 GiB each, in a sparse file, were read whole to check them, 20 s a pass); what a pass costs
    # counts toward its bound, records skipped included.
    for src_seq, body, size, end in scan_spool(path, after, start=start, max_body=max_event, skips=True):
        nbytes += HEADER.size + (len(body) if body is not None else 0)
        chunk.end = end
        if body is None:  # skipped: stored already
            chunk.skipped_to = end
            if max_bytes is not None and nbytes >= max_bytes:
                chunk.more = True
                break
            continue
        if len(body) < size:
            ev: Any = _truncated(src_seq, body, size)
        else:
            try:
                ev = orjson.loads(body)
            except orjson.JSONDecodeError:
                ev = None
            if not (isinstance(ev, list) and len(ev) == 6 and ev[0] == src_seq):
                ev = [src_seq, time.time(), "spool.unreadable", None, None, {}]
        chunk.events.append(ev)
        if (max_events is not None and len(chunk.events) >= max_events) or (
                max_bytes is not None and nbytes >= max_bytes):
            chunk.more = True
            break
    return chunk


#: the head of an event as the runner encodes it: ``[src_seq,ts,"kind",`` (for a record too long to read whole)
_HEAD = re.compile(rb'\[[0-9]{1,19},([0-9.eE+-]{1,32}),("(?:[^"\\]|\\.){1,200}")')


def _truncated(src_seq: int, head: bytes, size: int) -> list[Any]:
    """The ``event.truncated`` item standing for a record of ``size`` bytes of which ``head`` was read."""
    kind, ts = "unknown", time.time()
    m = _HEAD.match(head)
    if m is not None:
        try:
            kind, ts = orjson.loads(m.group(2)), float(m.group(1))
        except (orjson.JSONDecodeError, ValueError):
            pass
    if not (isinstance(ts, float) and 0 <= ts < 1e11):
        ts = time.time()
    return [src_seq, ts, "event.truncated", None, None, {"kind": str(kind)[:64], "size": size}]


def same_file(path: Path, ino: int, at: int) -> bool:
    """Is the spool at ``path`` still the file read before (inode ``ino``), at least ``at`` bytes long? (A place
    remembered in an ended runner's spool is used only in that file: a resumed run's spool is a new one.)"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_ino == ino and st.st_size >= at


def spool_ino(path: Path) -> int:
    """The inode of the spool at ``path`` (0 if there is none)."""
    try:
        return os.lstat(path).st_ino
    except OSError:
        return 0


def remove_spool(path: Path) -> None:
    """Delete a spool whose events are all committed (missing is fine)."""
    try:
        path.unlink()
    except OSError:
        pass


def ran_unrecorded(sessions_dir: Path, sid: str, runner_seq: int) -> bool:
    """Did a runner of ``sid`` run whose events the store lacks: does its spool hold a record past ``runner_seq``?
    (A runner keeps unacknowledged events there; a resumed run's numbers go on from its predecessor's, so what an
    earlier run left, already stored, does not count.)"""
    try:
        return next(scan_spool(spool_of(sessions_dir, sid), runner_seq, max_body=0), None) is not None
    except OSError:
        return False
