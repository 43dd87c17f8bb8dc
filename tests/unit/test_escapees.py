"""The monitor's escapee backstop (daemon/escapees.py) on a made-up process table: which children of the
template it takes for escapees, and when; and on real processes: an escapee is killed with its subtree."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from labd.daemon.escapees import GRACE_S, MARGIN_S, Escapees
from labd.daemon.proctable import Proc, ProcTable
from tests.conftest import alive, wait_until

TICK = os.sysconf("SC_CLK_TCK")


def _table(children: list[int], template: int = 100) -> ProcTable:
    """Child ``pid`` started ``pid`` seconds after boot."""
    t = ProcTable()
    t.procs = {pid: Proc(pid, template, pid, "S", pid * TICK, 0.0, 0) for pid in children}
    t.procs[template] = Proc(template, 1, template, "S", 5, 0.0, 0)
    t.children = {template: list(children), 1: [template]}
    return t


def test_only_unannounced_children_unknown_for_the_grace_are_escapees() -> None:
    """Watched runners and announced children are never escapees; an unannounced child is one only after
    GRACE_S unknown (its announcement may still be on its way), and one announced meanwhile is forgotten."""
    announced: set[int] = {201}
    e = Escapees(lambda: (100, frozenset(announced), 10_000.0))
    table = _table([200, 201, 202, 203])
    assert e.find(table, {200}, now=10.0) == []  # 202, 203: first seen
    announced.add(203)  # its announcement arrives
    assert e.find(table, {200}, now=10.0 + GRACE_S / 2) == []
    assert [p.pid for p in e.find(table, {200}, now=10.0 + GRACE_S)] == [202]


def test_a_child_started_after_the_pipe_was_last_read_is_not_judged() -> None:
    """The daemon's main loop may not read the template's pipe for seconds (startup, a stalled ingest): a child
    that started after the launcher last read the pipe empty (minus MARGIN_S) is never taken for an escapee,
    however long it stays unannounced; once a later read covers its start, it is judged (and killed after GRACE_S
    unless its announcement was in that read)."""
    view: dict[str, Any] = {"announced": frozenset(), "drained": 300.0}  # pipe read empty 300 s after boot
    e = Escapees(lambda: (100, view["announced"], view["drained"]))
    table = _table([250, 300, 301])  # started 250 s, 300 s and 301 s after boot
    for now in (10.0, 10.0 + GRACE_S, 10.0 + 30 * GRACE_S):  # the main loop stalls: no read for 30 s
        assert [p.pid for p in e.find(table, set(), now=now)] == ([250] if now > 10.0 else [])
    view.update(announced=frozenset({250, 300}), drained=301.1 + MARGIN_S)  # a read: 300 was announced
    now = 10.0 + 31 * GRACE_S
    assert e.find(table, set(), now=now) == []  # 301 is judged from now on
    assert [p.pid for p in e.find(table, set(), now=now + GRACE_S)] == [301]


def test_no_template_no_escapees() -> None:
    """Without a template view (before the launcher is up), nothing is taken for an escapee."""
    assert Escapees().find(_table([300]), set(), now=100.0) == []
    assert Escapees(lambda: (None, frozenset(), 10_000.0)).find(_table([300]), set(), now=100.0) == []


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))


def test_an_escapee_is_killed_with_its_subtree() -> None:
    """An escapee's children die with it: killing the direct child alone left its own children running, outside
    every tree (re-parented to init). A stand-in template (a shell, not this test's process: the test process has
    children of its own, such as other tests' daemons, which the backstop would take for escapees) has one child,
    the escapee, with two children of its own."""
    template = subprocess.Popen(["sh", "-c", "sh -c 'sleep 60 & sleep 60 & wait' & wait"])
    try:
        escapee = wait_until(lambda: (lambda c: c[0] if len(c) == 1 else None)(_children(template.pid)),
                             what="the escapee")
        kids = wait_until(lambda: _children(escapee) if len(_children(escapee)) == 2 else None, what="two sleeps")
        table = ProcTable()
        table.scan()
        booted_later = time.clock_gettime(time.CLOCK_BOOTTIME) + MARGIN_S + 1  # its pipe read: all announced
        e = Escapees(lambda: (template.pid, frozenset(), booted_later))
        log = _Log()
        e.handle(table, set(), {}, 50.0, log, lambda sid, text: None)
        e.handle(table, set(), {}, 50.0 + GRACE_S, log, lambda sid, text: None)
        assert [kw["pid"] for _, kw in log.lines] == [escapee]
        wait_until(lambda: not any(alive(k) for k in [escapee, *kids]), what="the escapee and its children killed")
    finally:
        template.kill()
        template.wait()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


