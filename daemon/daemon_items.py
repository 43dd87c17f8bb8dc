"""Ingest's side facing the rest of the daemon: the items it hands over on the inproc socket.

A mixin of :class:`labd.daemon.ingest.Ingest` (it runs on the ingest thread): events the daemon itself records
(lifecycle facts a runner cannot know, approval resolutions — decided here, exactly once, because ingest is the
single writer), retention deletions and skill writes (run after the batch that may still hold their sessions'
last events), and messages for runners. Split from the writer loop as a concern of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labd.daemon.ingest_batch import Batch
from labd.daemon.outputcap import OutputCaps
from labd.ipc.events import TERMINAL_STATUSES
from labd.store.projections import SessionCursor
from labd.store.skill_document import SkillError

if TYPE_CHECKING:
    from labd.store.writer import BatchWriter

__all__ = ["DaemonItems"]

class DaemonItems:
    """Daemon items -> staged events and after-commit jobs (mixin of the ingest thread)."""

    # provided by Ingest
    writer: BatchWriter
    outcap: OutputCaps
    log: Any
    cursors: dict[str, SessionCursor]
    _last_resend: dict[str, float]
    _ingest_spool: Callable[..., bool]  # (labd.daemon.spool_reading)

    def count(self, name: str, n: int = 1) -> None:
        raise NotImplementedError

    def _cursor(self, sid: str) -> SessionCursor | None:
        raise NotImplementedError
    def _append(self, cur: SessionCursor, ts: float, kind: str, src: str, src_seq: int | None,
                node_id: str | None, parent: int | None, payload: dict[str, Any], b: Batch) -> bool:
        raise NotImplementedError

    def _on_internal(self, item: tuple[Any, ...], b: Batch) -> None:
        """Stage one item the rest of the daemon handed over (an event it records, a deletion, a skill write,
        a message for a runner)."""
        op = item[0]
        if op == "events":  # several, in this one batch: one transaction (Daemon.post_events)
            for one in item[1]:
                self._on_internal(one, b)
            return
        if op == "event":
            _, sid, kind, payload, node_id, reply_to, *stamp = item
            ts = stamp[0] if stamp else time.time()  # when it happened (stamped by the poster), not when staged
            self.outcap.learn(sid, kind, payload)
            if kind == "session.created" and self._cursor(sid) is None:
                self.cursors[sid] = SessionCursor(id=sid)
            cur = self._cursor(sid)
            if cur is not None and kind == "session.ended" and not cur.terminal:
                # Whatever the runner recorded and we do not have yet goes in first: its events, and its
                # own outcome (session.finished), which the final status is decided from. A long spool is
                # read a batch at a time; this item waits for the next pass meanwhile.
                if not self._ingest_spool(cur, b):
                    b.later.append(item)
                    return
                if (total := self.outcap.final(sid)) is not None:
                    self._append(cur, ts, "output.truncated", "d", None, None, None, total, b)
            if cur is not None and kind == "resource.sample" and cur.terminal:
                # The monitor's own socket races the main loop's: a sample taken before the runner exited can
                # arrive after session.ended, which a follower takes as the last event. The final sample (the
                # supervisor's, before session.ended) holds the session's last figures.
                return
            if cur is None:
                self.log.error("daemon event for unknown session dropped", session_id=sid, kind=kind)
                if reply_to is not None:
                    b.notes.append(("refused", reply_to, "not_found", f"no session {sid!r}"))
                return
            if kind == "approval.resolved":
                # The one place an approval is resolved: ingest is single-threaded, so exactly once.
                refusal = _refuse_resolution(cur, payload)
                if refusal is not None:
                    if reply_to is not None:
                        b.notes.append(("refused", reply_to, *refusal))
                    return
            try:
                stored = self._append(cur, ts, kind, "d", None, node_id, None, payload, b)
            except TypeError:  # a payload JSON cannot carry (nested too deeply): refused, not a crash
                self.count("dropped.internal.unencodable")
                stored = False
            if not stored:
                if reply_to is not None:
                    b.notes.append(("refused", reply_to, "store_error", "the store refused this change"))
                if kind == "session.created":  # no record: its runner (started meanwhile) must not run either
                    self.cursors.pop(sid, None)
                    b.notes.append(("unrecorded", sid))
                return
            if kind == "approval.resolved":
                b.to_runners.append((sid, "approval.resolved", payload))
            if reply_to is not None:
                b.notes.append(("committed", reply_to, sid, cur.last_seq, payload))
        elif op == "delete":  # retention: whole sessions, after this batch (see _delete_sessions)
            _, sids, reply_to = item
            b.deletes.append((list(sids), reply_to))
        elif op in ("skill.save", "skill.delete"):  # the skills table: written here too (one writer)
            b.jobs.append(item)
        elif op == "send":  # a message for a runner, e.g. cancel
            _, sid, type_, body = item
            b.to_runners.append((sid, type_, body))

    def _job(self, job: tuple[Any, ...], batch: Batch) -> None:
        """A write that is not an event (a skill saved or deleted), after the batch; its result goes back to
        the request that asked for it."""
        op, arg, reply_to = job
        try:
            result = self.writer.save_skill(*arg) if op == "skill.save" else self.writer.delete_skill(arg)
        except SkillError as exc:  # a retry's key used for another request: nothing written
            batch.notes.append(("refused", reply_to, exc.code, str(exc), exc.details))
            return
        except Exception as exc:  # noqa: BLE001 - reported to the client; nothing half-written
            self.log.error("store refused a write", op=op, error=str(exc)[:300])
            batch.notes.append(("refused", reply_to, "store_error", f"could not write: {_first_line(exc)}"))
            return
        batch.notes.append(("done", reply_to, result))

    def _delete_sessions(self, sids: list[str], reply_to: tuple[bytes, str] | None, batch: Batch) -> None:
        """Delete terminal sessions, after the batch that may still have held their last events.

        Ingest decides (it is single-threaded and knows each session's committed status): a session
        that is not in a terminal status is refused, and nothing of the request is deleted."""
        live = []
        try:
            for sid in sids:
                cur = self._cursor(sid)
                if cur is not None and cur.status not in TERMINAL_STATUSES:
                    live.append(sid)
        except Exception as exc:  # noqa: BLE001 - the store went away (a server restart): refused, ingest goes on
            self.log.error("deleting sessions failed: cannot read them", error=str(exc)[:300])
            if reply_to is not None:
                batch.notes.append(("refused", reply_to, "store_unavailable",
                                    f"cannot read the sessions to delete: {_first_line(exc)}; nothing was deleted "
                                    "(try again once the store is back)"))
            return
        if live:
            if reply_to is not None:
                batch.notes.append(("refused", reply_to, "not_terminal",
                                    f"session {live[0]} is {self.cursors[live[0]].status}: stop it first"))
            return
        try:  # where they ran on Ray nodes, read before the rows go: their directories there are removed too
            placed = self.writer.node_dirs(sids)
        except Exception as exc:  # noqa: BLE001 - the deletion goes on; the nodes keep those directories
            self.log.warning("cannot read where deleted sessions ran on Ray nodes", error=str(exc)[:300])
            placed = []
        try:
            counts = self.writer.delete_sessions(sids)
        except Exception as exc:  # noqa: BLE001 - reported to the client; the record is unchanged
            self.log.error("deleting sessions failed", error=str(exc)[:300])
            # a connection the server dropped (a restart) is said so: the client may retry; a full disk stays a
            # store_error, with its reason
            dropped = bool(getattr(exc, "connection_invalidated", False))
            if reply_to is not None:
                batch.notes.append(("refused", reply_to, "store_unavailable" if dropped else "store_error",
                                    f"could not delete: {_first_line(exc)}"))
            return
        for sid in sids:
            self.cursors.pop(sid, None)
            self._last_resend.pop(sid, None)
        self.count("sessions_deleted", counts.get("sessions", 0))
        batch.notes.append(("deleted", reply_to, sids, counts, placed))


def _first_line(exc: BaseException) -> str:
    """What a client is told of a store error: its first line (SQLAlchemy's text goes on with the statement, its
    parameters and a link), at most 300 characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _refuse_resolution(cur: SessionCursor, payload: dict[str, Any]) -> tuple[str, str] | None:
    """Why an approval resolution must not be recorded, or None if it may."""
    aid = payload.get("approval_id")
    options = cur.pending_approvals.get(aid) if isinstance(aid, str) else None
    if options is None:
        return ("not_pending", f"approval {aid} is not pending (already resolved, or unknown)")
    decision = payload.get("decision")
    if payload.get("via") == "timeout" and decision in ("approve", "reject", "fail"):
        return None  # the request's own policy applies whatever the human options were
    if decision not in options:
        return ("bad_decision", f"decision {decision!r} is not allowed here (allowed: {', '.join(options)})")
    return None
