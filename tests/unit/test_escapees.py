"""The monitor's escapee backstop (daemon/escapees.py) on a made-up process table: which children of the
template it takes for escapees, and when."""

from __future__ import annotations

from labd.daemon.escapees import GRACE_S, Escapees
from labd.daemon.proctable import Proc, ProcTable


def _table(children: list[int], template: int = 100) -> ProcTable:
    t = ProcTable()
    t.procs = {pid: Proc(pid, template, pid, "S", pid * 10, 0.0, 0) for pid in children}
    t.procs[template] = Proc(template, 1, template, "S", 5, 0.0, 0)
    t.children = {template: list(children), 1: [template]}
    return t


def test_only_unannounced_children_unknown_for_the_grace_are_escapees() -> None:
    """Watched runners and announced children are never escapees; an unannounced child is one only after
    GRACE_S unknown (its announcement may still be on its way), and one announced meanwhile is forgotten."""
    announced: set[int] = {201}
    e = Escapees(lambda: (100, frozenset(announced)))
    table = _table([200, 201, 202, 203])
    assert e.find(table, {200}, now=10.0) == []  # 202, 203: first seen
    announced.add(203)  # its announcement arrives
    assert e.find(table, {200}, now=10.0 + GRACE_S / 2) == []
    assert [p.pid for p in e.find(table, {200}, now=10.0 + GRACE_S)] == [202]


def test_no_template_no_escapees() -> None:
    """Without a template view (before the launcher is up), nothing is taken for an escapee."""
    assert Escapees().find(_table([300]), set(), now=100.0) == []
    assert Escapees(lambda: (None, frozenset())).find(_table([300]), set(), now=100.0) == []
