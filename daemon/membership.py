"""Which processes belong to which session: one pass's attribution of the process table (:mod:`labd.daemon.monitor`).

A session's tree is its runner's descendants plus processes outside that tree that belong to it anyway (their parent
died and they were re-parented elsewhere, or they called ``setsid``): recognised by a process key seen in the tree
before, by the runner's process group, or by the inherited ``LABD_SESSION_ID`` marker of a session this daemon
knows. Ended sessions being buried (:mod:`labd.daemon.burial`) are owners too, so that what they left is found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from labd.daemon.burial import Buried
from labd.daemon.proctable import MarkerCache, Proc, ProcTable
from labd.daemon.watched import Watched

__all__ = ["Attribution", "attribute", "extend"]


@dataclass
class Attribution:
    """What one pass found: the watched sessions whose runner lives (``alive``, members set to its tree) or is gone
    (``gone``), and the processes outside every runner's tree that belong to a session anyway."""

    alive: list[Watched] = field(default_factory=list)
    gone: list[Watched] = field(default_factory=list)
    #: session -> roots of its members outside the runner's tree
    extra: dict[str, list[int]] = field(default_factory=dict)
    #: pid -> session, for each of those roots
    owner_of: dict[int, str] = field(default_factory=dict)
    #: the pids of every runner's tree
    claimed: set[int] = field(default_factory=set)


def attribute(table: ProcTable, procs: dict[int, Proc], watched: list[Watched], buried: list[Buried],
              markers: MarkerCache, now_wall: float) -> Attribution:
    """Attribute the scanned table ``procs`` to ``watched`` and ``buried`` sessions."""
    out = Attribution()
    for w in watched:
        root = procs.get(w.pid)
        if root is None or root.zombie or (w.start_key is not None and root.start != w.start_key):
            out.gone.append(w)
            continue
        if w.start_key is None:  # watched while its process could not be read (no fd left)
            w.start_key = root.start
        out.alive.append(w)
        w.seen_at = now_wall  # liveness from the process table: idle runners need not send heartbeats
        w.members = table.tree([w.pid])
        out.claimed.update(p.pid for p in w.members)
    owners: list[Watched | Buried] = [*out.alive, *buried]
    by_key = {k: s.sid for s in owners for k in s.keys}
    by_group = {s.pid: s.sid for s in owners}
    known = {s.sid for s in owners}
    me = os.getpid()
    for p in procs.values():
        if p.pid in out.claimed or p.pid == me:
            continue
        owner = by_key.get(p.key) or by_group.get(p.pgid)
        if owner is None:
            marker = markers.session_of(p)
            owner = marker if marker in known else None
        if owner is not None:
            out.extra.setdefault(owner, []).append(p.pid)
            out.owner_of[p.pid] = owner
    return out


def extend(w: Watched, found: Attribution, table: ProcTable, procs: dict[int, Proc]) -> None:
    """Add to a living session's members what belongs to it outside its runner's tree, and keep as its keys every
    process seen in its tree that is still alive (a dead one's key never matches again: kept, the set grew by each
    process a pass saw over the session's life, and so did every pass's lookup)."""
    if w.sid in found.extra:
        w.members += [p for p in table.tree(found.extra[w.sid]) if p.pid not in found.claimed]
    w.keys = {p.key for p in w.members} | {k for k in w.keys if (q := procs.get(k[0])) and q.start == k[1]}
