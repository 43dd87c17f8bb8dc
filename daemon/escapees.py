"""The monitor's backstop for processes that left their session through the runner template.

The template forks runners, the spare runner, the pre-forked workflow checker and workflow checks, and nothing
else; it announces each child it forks (``{"op": "forked"}`` on its pipe, kept by
:meth:`labd.daemon.launcher.TemplateLauncher.template_children`). A child of the template that it did not fork
was made by ``clone(CLONE_PARENT)`` in a session's process: a sibling of the runner, outside the tree the monitor
walks. The clone filter every template child inherits refuses that call (:mod:`labd.runner.sandbox.seccomp`);
should one appear anyway (a kernel without seccomp, an architecture the filter does not know), it is killed here.

An unannounced child is taken for an escapee only once it has been unknown for :data:`GRACE_S`: the template
writes the announcement right after its fork, but the daemon's main loop reads it in its own time, and a
legitimate child seen in a pass before that must not be killed. The pass's process table gives the template's
children for free (one dict lookup); only runners of the current template are covered (an old template that
outlives a restarted daemon is not told apart from its runners' escapees).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

from labd.daemon.proctable import Proc, ProcTable
from labd.daemon.watched import kill_proc

__all__ = ["Escapees", "GRACE_S"]

#: how long a child of the template may be unannounced before it is taken for an escapee
GRACE_S = 1.0


class Escapees:
    """Finds and kills children of the runner template that it did not fork."""

    def __init__(self, template: Callable[[], tuple[int | None, frozenset[int]]] | None = None) -> None:
        #: the template's pid and the pids of the children it announced (the launcher's view); None: no template
        self.template = template
        self._unknown: dict[tuple[int, int], float] = {}  # child key -> when first seen unannounced
        self.killed = 0

    def find(self, table: ProcTable, runners: set[int], now: float) -> list[Proc]:
        """Children of the template in ``table`` that are neither ``runners`` (watched) nor announced, and have
        been so for :data:`GRACE_S` (``now`` is monotonic). Call after the table's scan: the announcements read
        then cover every child forked before it, but for those still on their way."""
        if self.template is None:
            return []
        pid, known = self.template()
        children = table.children.get(pid, ()) if pid is not None else ()
        unknown: dict[tuple[int, int], float] = {}
        out: list[Proc] = []
        for c in children:
            p = table.procs.get(c)
            if p is None or p.zombie or c in runners or c in known:
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
            cmdline = self.kill(p)
            sid = owners.get(p.pid)
            log.warning("killed a process that escaped its session's tree (a child of the runner template that it "
                        "did not fork: clone with CLONE_PARENT)", pid=p.pid, session_id=sid, cmdline=cmdline)
            if sid is not None:
                report(sid, f"labd killed process {p.pid} ({cmdline[:200]}): it left the session's process tree "
                            "(clone with CLONE_PARENT made it a sibling of the runner)")

    def kill(self, p: Proc) -> str:
        """Kill an escapee (SIGKILL, after SIGCONT should it be stopped); returns its command line, for the log."""
        cmdline = ""
        with contextlib.suppress(OSError), open(f"/proc/{p.pid}/cmdline", "rb") as f:
            cmdline = f.read(400).replace(b"\0", b" ").decode(errors="replace").strip()
        kill_proc(p, signal.SIGCONT)
        kill_proc(p, signal.SIGKILL)
        self.killed += 1
        return cmdline
