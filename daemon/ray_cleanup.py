"""Deleted Ray sessions' directories on their nodes, waiting to be removed (the Ray launcher's part of ``labd rm``).

A deletion reads where each session ran (``store.retention.node_dirs``) and hands ``(session, node id, work dir)``
to :class:`NodeCleanups`, which gives them to the launcher's driver (op ``clean``: a Ray task pinned to the node,
:func:`labd.runner.node_cleanup.remove_session_dir`) once one is connected. They wait here, not in the driver link's
outbox: a driver start that fails empties the outbox without a word, and spawns need its room. At most
:data:`MAX_CLEANS` wait (past it, and at shutdown, the log names those left on the nodes); at most
:data:`SEND_PER_PUMP` go per pump of the launcher (a write to the driver's stdin blocks while the driver reads, and a
prune may ask for 10,000 at once: the daemon's main loop is not held up by them).
"""

from __future__ import annotations

import collections
from typing import Any

from labd.daemon.launcher import LaunchError

__all__ = ["NodeCleanups", "MAX_CLEANS", "SEND_PER_PUMP"]

MAX_CLEANS = 100_000  # removals waiting for a connected driver (~200 bytes each)
SEND_PER_PUMP = 1000


class NodeCleanups:
    """Removals of node directories not yet sent to a driver, in the order they were asked for."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.waiting: collections.deque[tuple[str, str, str]] = collections.deque()

    def add(self, placed: list[tuple[str, str, str]]) -> None:
        """Keep ``placed`` (``(session, node id, work dir)``) until a driver takes them; past :data:`MAX_CLEANS`,
        say which are left on their nodes."""
        room = max(0, MAX_CLEANS - len(self.waiting))
        for sid, node, workdir in placed[room:]:
            self.log.warning("a deleted session's directory on its Ray node is not removed: too many removals wait for "
                             "the cluster", session_id=sid, node=node, workdir=workdir)
        self.waiting.extend(placed[:room])

    def send(self, link: Any) -> None:
        """Send up to :data:`SEND_PER_PUMP` waiting removals through ``link`` (the driver link) while it is connected;
        a send that fails (the driver died) leaves them for the next driver."""
        for _ in range(SEND_PER_PUMP):
            if not self.waiting or link.state != "ready":
                return
            sid, node, workdir = self.waiting[0]
            try:
                link.send({"op": "clean", "sid": sid, "node": node, "workdir": workdir})
            except LaunchError:
                return
            self.waiting.popleft()

    def report(self, msg: dict[str, Any]) -> None:
        """The driver's ``cleaned`` report of one removal: logged (a warning when the directory was not removed)."""
        outcome = str(msg.get("outcome"))[:300]
        (self.log.warning if outcome.startswith("not removed") else self.log.info)(
            "a deleted session's directory on its Ray node", session_id=msg.get("sid"), node=msg.get("node"),
            workdir=msg.get("workdir"), outcome=outcome)

    def abandon(self) -> None:
        """At the daemon's stop: those still waiting stay on their nodes (the store no longer names them): logged."""
        if self.waiting:
            self.log.warning("deleted sessions' directories on Ray nodes are not removed: the daemon stops before a "
                             "driver reached the cluster", count=len(self.waiting),
                             workdirs=[w for _, _, w in list(self.waiting)[:20]])
