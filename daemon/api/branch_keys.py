"""Idempotency keys of ``session.branch``: a retry of a branch whose reply was lost answers the sessions the first
attempt made, never new ones (a durable-sessions review made 4 branches out of 2 by retrying after a daemon kill).

A branch with ``idempotency_key`` K and ``count`` N records K as ``K#0`` .. ``K#<N-1>`` on its N ``session.created``
events, with the digest of what it asked for: the store keeps them as it keeps a start's key
(``idempotency_keys``, :data:`~labd.store.schema.IDEMPOTENCY_RETENTION`), committed with the sessions in one
transaction (all or none). A retry finds ``K#0`` and answers those sessions (``replayed: true``); one asking for
something else with the same key is ``idempotency_conflict``. A retry that arrives while the first attempt is still
being made (its seed is built on a read worker, which may take a while for a long session) waits, on a worker, for the
first attempt's commit, and answers it; if the first attempt failed meanwhile, the retry makes the branches itself.
"""

from __future__ import annotations

import time
from typing import Any

from labd.daemon.api.base import ApiError
from labd.daemon.api.start import digest_of

__all__ = ["InFlight", "branch_digest", "made_before", "wait_for_first"]

FIRST_WAIT_S = 60.0  # how long a retry waits for the first attempt's commit before it says so
IN_FLIGHT_S = 300.0  # an in-flight note older than this is stale (its attempt failed without a word)


def branch_digest(body: dict[str, Any]) -> str:
    """What a branch asks for (all but its key; absent and empty alike), so that a key re-used for another request
    is refused rather than answered with the wrong sessions."""
    return digest_of({"op": "branch", **{k: v for k, v in body.items()
                                         if k != "idempotency_key" and v not in (None, {}, [], "")}})


def made_before(store: Any, key: str, digest: str) -> dict[str, Any] | None:
    """The reply to a retry whose first attempt's branches are committed, or None (none made with ``key``)."""
    first = store.idempotent_start(f"{key}#0", time.time())
    if first is None:
        return None
    if first["digest"] != digest:
        raise ApiError("idempotency_conflict", "this idempotency_key was used for a different session.branch "
                       "(another session, node, count, params, ...); use a new key per request",
                       {"session": first["session_id"]})
    rows, row = [], first
    while row is not None:  # K#0, K#1, ... up to the first missing: the N the first attempt made (all or none)
        rows.append(store.session(row["session_id"]) or {"id": row["session_id"]})
        row = store.idempotent_start(f"{key}#{len(rows)}", time.time())
    return {"sessions": [{"session": s["id"], "name": s.get("name")} for s in rows], "parent": rows[0].get("parent_id"),
            "node": rows[0].get("branch_node"), "replayed": True}


class InFlight:
    """Keys of branches being made (not yet committed): a retry meanwhile waits for them. (A retry that asks for
    something else is told so by :func:`made_before` once the first attempt is committed.)"""

    def __init__(self) -> None:
        self._since: dict[str, tuple[float, str]] = {}  # key: when it was noted, and the request id making it

    def note(self, key: str, req_id: str) -> None:
        now = time.monotonic()
        for k in [k for k, (at, _) in self._since.items() if now - at > IN_FLIGHT_S]:
            del self._since[k]
        self._since[key] = (now, req_id)

    def done(self, key: str) -> None:
        self._since.pop(key, None)

    def refused(self, req_id: str) -> None:
        """The request ``req_id`` was refused after its handler returned (the writer refused its commit): a branch it
        was making is no longer in flight, so a retry makes the branches at once (it had waited for
        :data:`FIRST_WAIT_S` and then been told ``busy``, for up to :data:`IN_FLIGHT_S`)."""
        for k in [k for k, (_, r) in self._since.items() if r == req_id]:
            del self._since[k]

    def busy(self, key: str) -> bool:
        noted = self._since.get(key)
        return noted is not None and time.monotonic() - noted[0] <= IN_FLIGHT_S


def wait_for_first(store: Any, key: str, digest: str, in_flight: InFlight) -> dict[str, Any] | None:
    """On a read worker: wait until the first attempt with ``key`` is committed (its reply) or has failed (None: make
    the branches now); ``busy`` if it is still being made after :data:`FIRST_WAIT_S`."""
    deadline = time.monotonic() + FIRST_WAIT_S
    while time.monotonic() < deadline:
        found = made_before(store, key, digest)
        if found is not None:
            return found
        if not in_flight.busy(key):  # the first attempt ended without making them
            return None
        time.sleep(0.05)
    raise ApiError("busy", "a session.branch with this idempotency_key is still being made; ask again in a while")
