"""A Ray session's actor that may still be waiting for a node when the daemon restarts.

Ray queues an actor the cluster has no room for (its state ``PENDING_CREATION``) until some node can hold it, and
a daemon (with its Ray driver) may stop and start again meanwhile. A method call the first driver made on the
actor (``start(spec)``) is queued in *that driver* while the actor waits, and is dropped when the driver exits;
the actor's creation arguments are kept by Ray with the actor itself. So the session's spec is a creation argument
and the runner starts in the constructor (:class:`SelfStartingActor`): whenever Ray places the actor, the session
runs, whichever driver watches it (or none: it is adopted by the next daemon, its runner reconnecting as any).

The driver's side: :func:`actor_state` reads an actor's state from the GCS actor table, so that an adopted actor
in one of :data:`labd.daemon.ray_adopt.WAITING` is waited for without a deadline. The public state API
(``ray.util.state``) is not used: it asks the dashboard, which a cluster may run without (the tests' does) and
``pip install ray`` does not bring.

This module is imported by the driver and, for the actor class, by Ray's workers on the nodes; never by the daemon.
"""

from __future__ import annotations

from typing import Any

from labd.runner.ray_actor import SessionActor

__all__ = ["SelfStartingActor", "actor_state"]


class SelfStartingActor(SessionActor):
    """:class:`~labd.runner.ray_actor.SessionActor` that starts its runner when Ray places it, from the spec it
    was created with (used through ``ray.remote(max_concurrency=4)``, detached)."""

    def __init__(self, sid: str, spec: dict[str, Any]) -> None:
        super().__init__(sid)
        self._where = self.start(spec)
        self._reported = False

    def where(self) -> dict[str, Any]:
        """Where the runner runs (node id, ip, hostname, pid, work directory, the actor's pid); a driver that
        asks reports it (``session.placed``)."""
        self._reported = True
        return self._where

    def describe(self) -> dict[str, Any]:
        """:meth:`SessionActor.describe`, where the runner runs, and ``reported``: whether a driver asked
        :meth:`where` (False: placed while no driver watched it, its ``session.placed`` not recorded yet)."""
        return {**self._where, **super().describe(), "reported": self._reported}


def actor_state(ray: Any, actor: Any) -> str | None:
    """``actor``'s state in the GCS actor table (``ALIVE``, ``PENDING_CREATION``, ``DEAD``, ...); None if it
    cannot be read (one GCS request, ~1 ms)."""
    try:
        from ray._private import state

        info = state.actors(actor_id=actor._actor_id.hex())
    except Exception:  # noqa: BLE001 - a private API of Ray: unknown, as if the table had no entry
        return None
    found = info.get("State") if isinstance(info, dict) else None
    return found if isinstance(found, str) else None
