"""The daemon's control plane: requests from clients, dispatched to their handlers (:mod:`labd.daemon.api`),
and the replies that wait for ingest's commit (``session.start`` and every request that posts an event)."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import zmq

from labd.daemon.api import ApiError, registry
from labd.daemon.api.base import DEFERRED
from labd.daemon.checks import Check, CheckFlow, Checks
from labd.daemon.reads import Read, Reads
from labd.daemon.reply_budget import ReplyBudget
from labd.ipc.parts import max_reply, split_reply
from labd.ipc.wire import DEFAULT_MAX_MESSAGE, OversizedFrame, PayloadError, WireError, cut_deep, nesting_ok
from labd.store.db import unreachable, unreachable_error

if TYPE_CHECKING:
    from labd.daemon.api.branch_keys import InFlight
    from labd.daemon.api.start import PendingStart

__all__ = ["ControlPlane", "MAX_REQUEST_DEPTH"]

#: a request body may nest this deep: what it carries into events (params) must stay encodable
MAX_REQUEST_DEPTH = 200
#: a reply nested deeper than JSON readers take has its containers past this many levels replaced by
#: ``{"unsent": why}`` (the reply envelope's own levels and the codec's included: well under 255)
REPLY_DEPTH = 240
#: requests not yet answered whose clients take replies in parts, remembered up to this many (the oldest go first:
#: such a request's reply is refused ``reply_too_large`` if it is over one message, as for any other client)
MAX_PARTS_PENDING = 10_000


class ControlPlane:
    """Mixed into :class:`labd.daemon.server.Daemon`, whose main loop calls :meth:`_drain_control` and
    :meth:`_drain_notes`; it owns the state used here (codec, counters, supervisor, ...)."""

    codec: Any
    counters: dict[str, int]
    log: Any
    _warn: Any
    _deferred: dict[str, Any]
    idempotent_starts: dict[str, PendingStart]
    idempotent_requests: dict[str, str]
    idempotent_waiters: dict[str, list[tuple[bytes, str]]]
    branches_in_flight: InFlight
    supervisor: Any
    launcher: Any  # daemon.launch_routing.Launchers
    retention: Any
    indexer: Any
    checkpointer: Any  # store.db.Checkpointer, None on PostgreSQL
    checks: Checks
    reads: Reads
    #: ids of unanswered requests whose clients reassemble replies in parts (labd.ipc.parts), oldest first
    _parts_ok: dict[str, None]
    #: large replies ZeroMQ still holds for clients that have not read them (daemon/reply_budget.py)
    replies_held: ReplyBudget

    def defer(self, reply_to: tuple[bytes, str], result: Any) -> None:
        """Reply to ``reply_to`` only after the event it posts is committed; ``result(seq, payload)``."""
        self._deferred[reply_to[1]] = result

    def is_deferred(self, req_id: str) -> bool:
        """Is request ``req_id`` still waiting for its event to be committed (not answered, not refused)?"""
        return req_id in self._deferred

    # ---- control requests -------------------------------------------------------------------------
    def _drain_control(self, control: zmq.Socket) -> None:
        for _ in range(100):
            try:
                frames = control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(control, frames)

    def _reply(self, control: zmq.Socket, identity: bytes, req_id: str, result: Any = None,
               error: ApiError | None = None, *, refusable: bool = True) -> None:
        """Send the reply to ``req_id``: in parts if it is over one message and the client reassembles, else
        ``reply_too_large`` if it is; ``busy`` instead of a large reply while clients hold the budget of unread
        replies, unless not ``refusable`` (the reply to a write, which a retry would repeat: see
        :meth:`_over_budget`)."""
        if error is not None:
            body = {"ok": False, "error": {"code": error.code, "message": error.message, "details": error.details}}
        else:
            body = {"ok": True, "result": result}
        in_parts = self._parts_ok.pop(req_id, ...) is None
        try:
            frames = self.codec.pack("reply", body, re=req_id)
        except PayloadError:  # nested deeper than JSON readers take: an answer, never the loop's end
            # what the store took (an event's data, an approval's context) nests up to ~253 levels, and a reply
            # carries it a few levels down: those values are cut, not the reply (approvals.list of every session)
            self.counters["control.reply_cut"] = self.counters.get("control.reply_cut", 0) + 1
            body = cut_deep(body, REPLY_DEPTH, f"nested deeper than {REPLY_DEPTH} levels in the reply: not sent")
            try:
                frames = self.codec.pack("reply", body, re=req_id)
            except PayloadError as exc:
                self.counters["control.reply_unencodable"] = self.counters.get("control.reply_unencodable", 0) + 1
                body = {"ok": False, "error": {"code": "reply_unencodable",
                                               "message": f"the reply cannot be sent: {exc}", "details": {}}}
                frames = self.codec.pack("reply", body, re=req_id)
        # the client would drop it unread and time out: say why instead (a client's limit is the default one
        # unless it was raised, whatever the daemon's own)
        limit = min(self.codec.max_message, DEFAULT_MAX_MESSAGE)
        if len(frames[1]) > limit:
            size = len(frames[1])
            parts = split_reply(self.codec, body, req_id, limit) if in_parts else None
            if parts is not None:  # a client that reassembles: the reply as it is, in parts
                if refusable and self._over_budget(control, identity, req_id, sum(len(p[1]) for p in parts)):
                    return
                self.counters["control.reply_parts"] = self.counters.get("control.reply_parts", 0) + len(parts)
                for part in parts:
                    self.replies_held.send(control, identity, part)
                return
            self.counters["control.reply_too_large"] = self.counters.get("control.reply_too_large", 0) + 1
            most = max_reply(limit) if in_parts else limit
            body = {"ok": False, "error": {"code": "reply_too_large", "message":
                                           f"the reply would be {size} bytes, over the {most}-byte limit; "
                                           "ask for less (a smaller limit or page, fewer sessions)",
                                           "details": {"bytes": size, "max": most}}}
            frames = self.codec.pack("reply", body, re=req_id)
        elif refusable and self._over_budget(control, identity, req_id, len(frames[1])):
            return
        self.replies_held.send(control, identity, frames)

    def _over_budget(self, control: zmq.Socket, identity: bytes, req_id: str, size: int) -> bool:
        """Answer ``busy`` (and return True) when a reply of ``size`` bytes would take the replies ZeroMQ holds for
        clients over the budget. The request has run; it changed nothing, so the client may simply ask again: only
        replies sent as a request ran on the loop (reads, and refusals) are refused. A write's reply comes after
        ingest committed it (``_drain_notes``) and is always sent (counted): ``session.rm`` / ``session.prune``
        list up to 10,000 deleted ids (~0.2 MB), and a retry would not repeat them. The writes that answer at once
        (stop, kill, pause, resume, remote.add/remove) answer in under 1 KiB, below the tracked size."""
        if self.replies_held.admits(size):
            return False
        held, most = self.replies_held.in_flight, self.replies_held.budget
        self.counters["control.reply_busy"] = self.counters.get("control.reply_busy", 0) + 1
        body = {"ok": False, "error": {"code": "busy", "message":
                                       f"the daemon holds {held} bytes of replies clients have not read yet (at most "
                                       f"{most}; this one is {size} bytes): try again",
                                       "details": {"bytes": size, "in_flight": held, "max": most}}}
        control.send_multipart([identity, *self.codec.pack("reply", body, re=req_id)])
        return True

    def _handle(self, control: zmq.Socket, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.counters["dropped.control.malformed"] = self.counters.get("dropped.control.malformed", 0) + 1
            return
        identity = frames[0]
        try:
            msg = self.codec.unpack(frames[1:])
        except WireError as exc:
            name = f"dropped.control.{exc.reason}"
            self.counters[name] = self.counters.get(name, 0) + 1
            self._warn.warn("control frame dropped", exc.reason, error=str(exc)[:300])  # rate-limited
            msg_id = getattr(exc, "msg_id", None)
            if msg_id:  # signed but undecodable (e.g. nested too deeply): the sender still gets an answer
                self._reply(control, identity, msg_id, error=ApiError("bad_request", f"undecodable request: {exc}"))
            elif isinstance(exc, OversizedFrame):  # signed but too large: said, not dropped (a client would wait)
                self._too_large(control, identity, frames[1:])
            return
        handler = registry.get(msg.type)
        if msg.parts:
            self._parts_ok[msg.id] = None
            if len(self._parts_ok) > MAX_PARTS_PENDING:  # requests that were never answered: forget the oldest
                del self._parts_ok[next(iter(self._parts_ok))]
        try:
            if not nesting_ok(msg.body, MAX_REQUEST_DEPTH):
                raise ApiError("bad_request", f"request nested deeper than {MAX_REQUEST_DEPTH} levels",
                               {"max_depth": MAX_REQUEST_DEPTH})
            if handler is None:
                raise ApiError("unknown_request", f"unknown request type {msg.type!r}",
                               {"known": sorted(registry)})
            result = handler(self, msg.body, (identity, msg.id)).execute()  # type: ignore[arg-type]  # a Daemon
        except ApiError as exc:
            self._reply(control, identity, msg.id, error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - never a traceback on the wire; the log has it
            self._reply(control, identity, msg.id, error=self._failed(exc, msg.type))
            return
        if isinstance(result, Generator):  # a handler that waits: workflow checks (daemon/checks.py), long reads
            context = (identity, msg.id, msg.type)
            self._suspend(control, self._run_flow(control, result, None, context), result, context)
            return
        if result is not DEFERRED:
            self._reply(control, identity, msg.id, result)

    def _too_large(self, control: zmq.Socket, identity: bytes, frames: list[bytes]) -> None:
        """Answer a request over ``max_message`` with ``request_too_large``, if it is validly signed and its id can
        be read from its first bytes; its body is never decoded. (One over twice ``max_message`` never arrives:
        libzmq drops its connection, see MAXMSGSIZE; the Python client refuses to send either.)"""
        msg_id = self.codec.oversized_id(frames)
        if msg_id is None:
            return
        size, limit = len(frames[1]), self.codec.max_message
        self._reply(control, identity, msg_id, error=ApiError(
            "request_too_large", f"the request is {size} bytes, over the daemon's {limit}-byte message limit "
            "(max_message); send less: large inputs belong in files the workflow reads",
            {"bytes": size, "max": limit}))

    def _suspend(self, control: zmq.Socket, waits_for: Check | Read | None, flow: CheckFlow,
                 context: tuple[bytes, str, str]) -> None:
        """Hand a suspended handler's :class:`Check` or :class:`Read` to what runs it (none: it replied)."""
        if waits_for is None:
            return
        try:
            if isinstance(waits_for, Read):
                self.reads.submit(waits_for, flow, context)
                self.counters["reads.long"] = self.counters.get("reads.long", 0) + 1
            else:
                self.checks.submit(waits_for, flow, context)
        except ApiError as exc:
            flow.close()
            self._refuse(control, context[0], context[1], exc)

    def _resume_checked(self, control: zmq.Socket, flow: CheckFlow, answer: Any,
                        context: tuple[bytes, str, str]) -> Check | None:
        """Run a flow on from its answered check: a next check goes back to :class:`Checks` (first in line)."""
        waits_for = self._run_flow(control, flow, answer, context)
        if isinstance(waits_for, Read):
            self._suspend(control, waits_for, flow, context)
            return None
        return waits_for

    def _resume_read(self, control: zmq.Socket, flow: CheckFlow, result: Any, error: BaseException | None,
                     context: tuple[bytes, str, str]) -> None:
        """Run a flow on from its finished read (its exception raised in the handler, where it waited)."""
        self._suspend(control, self._run_flow(control, flow, result, context, error), flow, context)

    def _run_flow(self, control: zmq.Socket, flow: CheckFlow, value: Any, context: tuple[bytes, str, str],
                  error: BaseException | None = None) -> Any:
        """Run a suspended handler on to what it next waits for (a :class:`Check` or :class:`Read`, returned) or
        to its end (replied)."""
        identity, req_id, type_ = context
        try:
            return flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as stop:
            if stop.value is not DEFERRED:
                self._reply(control, identity, req_id, stop.value)
        except ApiError as exc:
            self._refuse(control, identity, req_id, exc)
        except Exception as exc:  # noqa: BLE001 - never a traceback on the wire; the log has it
            self._refuse(control, identity, req_id, self._failed(exc, type_))
        return None

    def _failed(self, exc: Exception, type_: str) -> ApiError:
        """The error a request that raised ``exc`` is answered with: ``store_unavailable`` when the store could not
        be reached (a PostgreSQL restart: clients were told "internal error" and the driver's raw message; admin
        review), else ``internal`` (logged with its traceback)."""
        if unreachable(exc):
            self.log.warning("request failed: the store cannot be reached", type=type_, error=str(exc)[:300])
            return ApiError("store_unavailable", unreachable_error(exc))
        self.log.exception("request failed", type=type_)
        # one line: a store's error is SQLAlchemy's text of several lines, with the SQL statement and its parameters
        # (`labd ps` on a damaged database printed them all: an admin's review); its driver's error says it in one
        cause = getattr(exc, "orig", None) or exc
        said = next((line for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        return ApiError("internal", f"internal error: {said[:500]}")

    def _refuse(self, control: zmq.Socket, identity: bytes, req_id: str, error: ApiError) -> None:
        """Refuse a request, and the keyed retries that waited for it: a suspended one that failed (a start
        remembers its idempotency key before its workflow check, so retries during the check join it), or a
        start the writer refused."""
        self.idempotent_starts.pop(self.idempotent_requests.pop(req_id, ""), None)
        self._answer_retries(control, ("refused", (identity, req_id), error.code, error.message))
        self.branches_in_flight.refused(req_id)
        self._deferred.pop(req_id, None)
        self._reply(control, identity, req_id, error=error)

    def _drain_notes(self, notes: zmq.Socket, control: zmq.Socket) -> None:
        while True:
            try:
                note = notes.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            if note[0] == "committed":  # the store has the key now
                self.idempotent_starts.pop(self.idempotent_requests.pop(note[1][1], ""), None)
                self._answer_retries(control, note)
                _, (identity, req_id), sid, seq, payload = note
                formatter = self._deferred.pop(req_id, None)
                if formatter is not None:
                    self._reply(control, identity, req_id, formatter(seq, payload), refusable=False)
                    continue
                run = self.supervisor.running.get(sid)
                self._reply(control, identity, req_id, {"session": sid, "name": payload.get("name"),
                                                        "pid": run.pid if run and run.pid > 0 else None},
                            refusable=False)
            elif note[0] == "refused":
                _, (identity, req_id), code, message, *details = note  # no session
                self._refuse(control, identity, req_id, ApiError(code, message, details[0] if details else None))
            elif note[0] == "done":  # a write that is not an event (skills)
                _, (identity, req_id), result = note
                self._deferred.pop(req_id, None)
                self._reply(control, identity, req_id, result, refusable=False)
            elif note[0] == "deleted":
                _, reply_to, sids, counts, placed = note
                self.retention.remove_dirs(sids)
                if placed:  # their directories on Ray nodes (the Ray launcher's, if there is one)
                    self.launcher.clean_nodes(placed)
                self.indexer.forget(sids)
                if self.checkpointer is not None:  # the deletion's log back to nothing (SQLite)
                    self.checkpointer.compact_soon()
                if reply_to is not None:
                    formatter = self._deferred.pop(reply_to[1], None)
                    self._reply(control, reply_to[0], reply_to[1],
                                formatter(sids, counts) if formatter else {"deleted": sids, "rows": counts},
                                refusable=False)
            elif note[0] == "ingest_failed":
                self.log.error("ingest failed", error=note[1])
            else:
                self.supervisor.on_note(note)

    def _answer_retries(self, control: zmq.Socket, note: tuple[Any, ...]) -> None:
        """Answer the keyed retries that waited for this start's commit (or share its refusal)."""
        for identity, req_id in self.idempotent_waiters.pop(note[1][1], ()):
            if note[0] == "committed":
                sid, payload = note[2], note[4]
                run = self.supervisor.running.get(sid)
                self._reply(control, identity, req_id, {"session": sid, "name": payload.get("name"),
                                                        "pid": run.pid if run and run.pid > 0 else None,
                                                        "replayed": True}, refusable=False)
            else:
                self._reply(control, identity, req_id, error=ApiError(note[2], note[3]))
