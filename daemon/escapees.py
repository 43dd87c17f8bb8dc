"""The monitor's backstop for processes that left their session through the runner template.

The template forks runners, the spare runner, the pre-forked workflow checker and workflow checks, and nothing
else; it announces each child it forks (``{"op": "forked"}`` on its pipe, kept by
:meth:`labd.daemon.template_launcher.TemplateLauncher.template_children`). A child of the template that it did not fork
was made by ``clone(CLONE_PARENT)`` in a session's process: a sibling of the runner, outside the tree the monitor
walks. The clone filter every template child inherits refuses that call (:mod:`labd.runner.sandbox.seccomp`);
should one appear anyway (a kernel without seccomp, an architecture the filter does not know), it is killed here.

An unannounced child is judged only once the daemon has surely read its announcement: the template writes it
right after the fork, but the daemon's main loop reads the pipe in its own time, and may stall (startup before the
loop runs, a send to a stalled ingest waits up to 30 s). So the launcher's view carries when it last read the pipe
empty (``CLOCK_BOOTTIME``), and only a child whose start time (``/proc/<pid>/stat``, clock ticks after boot, the same
clock) is :data:`MARGIN_S` before that moment is judged; it is then killed once it has been seen unannounced for
:data:`GRACE_S` more (a template slow to write after its fork on a loaded machine). An escapee is killed with its
whole subtree as it stands in the pass's table (stopped first, so none forks on meanwhile); a grandchild whose parent
exited before that is re-parented to init and out of reach (the template is not a subreaper). The pass's process
table gives the template's children for free (one dict lookup); only runners of the current template are covered
(an old template that outlives a restarted daemon is not told apart from its runners' escapees).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from labd.daemon.proctable import Proc, ProcTable
from labd.daemon.watched import kill_proc

__all__ = ["Escapees", "GRACE_S", "MARGIN_S"]

#: how long a child of the template is seen unannounced (once judged at all) before it is taken for an escapee
GRACE_S = 1.0
#: a child is judged only if it started this long before the launcher last read the template's pipe empty
MARGIN_S = 0.5
_TICK = os.sysconf("SC_CLK_TCK")

#: the launcher's view: the template's pid (None: no template), the children it announced, and when the launcher
#: last read its pipe empty (CLOCK_BOOTTIME seconds)
View = tuple[int | None, frozenset[int], float]


class Escapees:
    """Finds and kills children of the runner template that it did not fork."""

    def __init__(self, template: Callable[[], View] | None = None) -> None:
        #: the launcher's view (:data:`View`); None: no template
        self.template = template
        self._unknown: dict[tuple[int, int], float] = {}  # child key -> when first seen unannounced
        self.killed = 0

    def find(self, table: ProcTable, runners: set[int], now: float) -> list[Proc]:
        """Children of the template in ``table`` that are neither ``runners`` (watched) nor announced, started
        :data:`MARGIN_S` before the launcher last read the template's pipe empty (their announcement would have
        been read), and seen so for :data:`GRACE_S` (``now`` is monotonic). Call after the table's scan."""
        if self.template is None:
            return []
        pid, known, drained = self.template()
        children = table.children.get(pid, ()) if pid is not None else ()
        before = (drained - MARGIN_S) * _TICK  # in clock ticks after boot, as Proc.start
        unknown: dict[tuple[int, int], float] = {}
        out: list[Proc] = []
        for c in children:
            p = table.procs.get(c)
            if p is None or p.zombie or c in runners or c in known or p.start >= before:
                continue
            since = self._unknown.get(p.key, now)
            unknown[p.key] = since
            if now - since >= GRACE_S:
                out.append(p)
        self._unknown = unknown
        return out

    def handle(self, table: ProcTable, runners: set[int], owners: dict[int, str], now: float, log: Any,
               report: Callable[[str, str], None]) -> None:
        """Kill the escapees :meth:`find` returns, with a warning in the daemon's log; one that a session's marks
        still name (``owners``: pid -> session, from its process group, a key seen in its tree or its
        ``LABD_SESSION_ID``) is also reported to that session (``report(session id, text)``)."""
        for p in self.find(table, runners, now):
            cmdline = self.kill(p, table)
            sid = owners.get(p.pid)
            log.warning("killed a process that escaped its session's tree (a child of the runner template that it "
                        "did not fork: clone with CLONE_PARENT)", pid=p.pid, session_id=sid, cmdline=cmdline)
            if sid is not None:
                report(sid, f"labd killed process {p.pid} ({cmdline[:200]}): it left the session's process tree "
                            "(clone with CLONE_PARENT made it a sibling of the runner)")

    def kill(self, p: Proc, table: ProcTable) -> str:
        """Kill an escapee and its subtree in ``table``: all stopped first (none forks on while the others are
        signalled), then SIGKILL (which ends a stopped process too). Returns the escapee's command line, for the
        log."""
        cmdline = ""
        with contextlib.suppress(OSError), open(f"/proc/{p.pid}/cmdline", "rb") as f:
            cmdline = f.read(400).replace(b"\0", b" ").decode(errors="replace").strip()
        tree = table.tree([p.pid]) or [p]  # the escapee first
        for q in tree:
            kill_proc(q, signal.SIGSTOP)
        for q in tree:
            kill_proc(q, signal.SIGKILL)
        self.killed += 1
        return cmdline
