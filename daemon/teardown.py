"""The daemon's way down, after its main loop returns (a signal, a drain, a fatal error): its threads stopped in
the order each one's work needs (ingest after every thread that hands it events, the launcher after ingest, the
cgroups after the template), its sockets closed, the connection file removed. Sessions are not stopped: runners
carry on, and the next daemon adopts them (``labd serve --drain`` stopped them before the loop returned)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
from sqlalchemy import Engine

if TYPE_CHECKING:
    from labd.daemon.events_auth import LocalEventsAuth
    from labd.daemon.ingest import Ingest
    from labd.daemon.server import Daemon
    from labd.store.db import Checkpointer

__all__ = ["Built", "tear_down"]


@dataclass
class Built:
    """What the daemon's start made that only its way down needs again."""

    engine: Engine
    z: zmq.Context[Any]
    notes: zmq.Socket[Any]
    ingest: Ingest
    events_auth: LocalEventsAuth
    checkpointer: Checkpointer | None
    wake: tuple[int, int]  # the signal wake-up pipe
    old_wakeup: int
    old_handlers: dict[signal.Signals, Any]


def tear_down(d: Daemon, b: Built) -> None:
    """Stop the daemon's threads and close what it opened, in order; leaves the sessions running."""
    d.notifier.stopping(f"stopping; {len(d.supervisor.running)} sessions keep running")
    d.checks.close()
    d.reads.close()
    signal.set_wakeup_fd(b.old_wakeup)
    for s, h in b.old_handlers.items():
        signal.signal(s, h)
    try:
        d.layout.connection_file.unlink()
    except FileNotFoundError:
        pass
    d.monitor.stop()
    d.monitor.join(5)
    if d.gateway is not None:
        d.gateway.stop()
        d.gateway.join(5)
    d.indexer.stop()
    d.indexer.join(10)
    if d.telemetry is not None:
        d.telemetry.stop()  # ends a request in progress too
        d.telemetry.join(15)
        if d.telemetry.is_alive():
            d.log.warning("telemetry exporter did not stop within 15 s")
    b.ingest.stopping.set()  # ends a wait for an unwritable store
    try:  # never block here: a dead ingest thread no longer reads its queue
        d._to_ingest.send_pyobj(("stop",), zmq.NOBLOCK)
    except zmq.ZMQError:
        pass
    b.ingest.join(10)
    d.launcher.shutdown()
    d.cgroups.close()  # after the template: its spare waits in the group made ahead
    if b.checkpointer is not None:
        b.checkpointer.stop()
        b.checkpointer.join(10)
    for sock in (d.control, b.notes, d._to_ingest):  # the control socket as last bound
        sock.close(0)
    b.events_auth.stop()
    if b.ingest.is_alive():  # stuck in the store (a commit that does not return): its sockets stay open,
        d.log.error("the ingest thread did not stop; exiting without it")  # and term() would wait
    else:
        b.z.term()
    if d.store_lock is not None:
        d.store_lock.close()
    b.engine.dispose()
    os.close(b.wake[0])
    os.close(b.wake[1])
    d.notifier.close()
    d.log.info("labd stopped")
