"""Reading runners' spools on the daemon side: what a session's runner recorded that the store lacks.

The file format belongs to :mod:`labd.runner.spool`; this module turns its records into the same event items
a runner sends in an ``events`` frame, so ingest stores them under the same rules (validation, ``src_seq``,
exactly once). Ingest calls it when a session has ended and before it stores ``session.ended``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from labd.runner.spool import SPOOL_NAME, read_spool

__all__ = ["spool_of", "spooled_events", "remove_spool"]


def spool_of(sessions_dir: Path, sid: str) -> Path:
    """The spool file of session ``sid``."""
    return sessions_dir / sid / SPOOL_NAME


def spooled_events(path: Path, after: int) -> list[list[Any]]:
    """The events in the spool at ``path`` with ``src_seq > after``, as ``[src_seq, ts, kind, node_id, parent,
    payload]`` items. A record that does not decode to such an item with its own ``src_seq`` becomes an item of
    kind ``spool.unreadable`` (ingest stores it as ``event.rejected`` in its slot, keeping the sequence whole).
    Raises OSError if the file exists but cannot be read."""
    evs: list[list[Any]] = []
    for src_seq, body in read_spool(path, after=after):
        try:
            ev = orjson.loads(body)
        except orjson.JSONDecodeError:
            ev = None
        if not (isinstance(ev, list) and len(ev) == 6 and ev[0] == src_seq):
            ev = [src_seq, time.time(), "spool.unreadable", None, None, {}]
        evs.append(ev)
    return evs


def remove_spool(path: Path) -> None:
    """Delete a spool whose events are all committed (missing is fine)."""
    try:
        path.unlink()
    except OSError:
        pass
