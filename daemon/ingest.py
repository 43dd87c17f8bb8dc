"""Ingest: the only writer of the store. Persists each event, then publishes it, then acknowledges it.

Runs in its own thread and owns three sockets: the runner ROUTER (signed event batches from runners),
the event PUB (live tail for clients), and an inproc PULL on which the rest of the daemon hands over
its own events (lifecycle facts a runner cannot know) and messages for runners.

Per batch (up to :data:`MAX_BATCH` events): validate -> assign each event the session's next ``seq`` ->
update projections -> one transaction -> publish on ``session.<id>`` -> ack ``next`` src_seq to each runner.
Duplicates (``src_seq`` already committed) are skipped and re-acked; a gap (a runner's batch that starts
beyond what we have) is not written and the runner is told to resend from the first missing one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import structlog
import zmq

from ipc.events import DAEMON_KINDS, EventError, quick_valid, validate
from ipc.wire import Codec, WireError
from store.projections import RowChanges, SessionCursor, apply
from store.writer import BatchWriter, EventRow

__all__ = ["Ingest", "INGEST_IN", "INGEST_NOTIFY", "MAX_BATCH"]

INGEST_IN = "inproc://labd-ingest-in"
INGEST_NOTIFY = "inproc://labd-ingest-notify"
MAX_BATCH = 5000
_NUMBER = (int, float)
RESEND_INTERVAL_S = 0.5
#: kinds that change projections (everything else only advances the session's seq)
PROJECTED = frozenset({"session.created", "session.launched", "session.started", "session.finished",
                       "session.stopping", "session.ended", "session.adopted", "limit.exceeded",
                       "step.started", "step.finished", "resource.sample", "agent.turn.started",
                       "agent.turn.finished", "cost.recorded", "file.created", "file.changed",
                       "approval.requested", "approval.resolved", "session.paused", "session.resumed",
                       "event.rejected"})


class Ingest(threading.Thread):
    """The store-writer thread. Communicate with it only through its sockets."""

    def __init__(self, zctx: zmq.Context, writer: BatchWriter, key: bytes, runners_endpoint: str,
                 events_endpoint: str, counters: dict[str, int], last_seen: dict[str, float],
                 max_message: int) -> None:
        super().__init__(name="labd-ingest", daemon=True)
        self.zctx = zctx
        self.writer = writer
        self.runner_codec = Codec(key, max_message=max_message)
        self.pub_codec = Codec(key, max_message=max_message)
        self.runners_endpoint = runners_endpoint
        self.events_endpoint = events_endpoint
        self.counters = counters
        self.last_seen = last_seen
        self.log = structlog.get_logger("labd.ingest")
        self.cursors: dict[str, SessionCursor] = {}
        self._last_resend: dict[str, float] = {}
        self.topics: set[bytes] = set()  # live-tail subscriptions (see _on_subscriptions)
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        # sockets are created in run(): a ZeroMQ socket belongs to the thread that uses it
        self.pull: zmq.Socket
        self.notify: zmq.Socket

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _cursor(self, sid: str) -> SessionCursor | None:
        cur = self.cursors.get(sid)
        if cur is None:
            cur = self.writer.load_cursor(sid)
            if cur is not None:
                self.cursors[sid] = cur
        return cur

    def run(self) -> None:
        z = self.zctx
        self.router = z.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting runner takes over its identity
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, 2 * self.runner_codec.max_message)
        self.router.bind(self.runners_endpoint)
        # XPUB rather than PUB: it tells us what clients subscribe to, so events nobody follows are
        # not encoded for the live tail at all (~9 % of ingest time under load).
        self.pub = z.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(self.events_endpoint)
        self.pull = z.socket(zmq.PULL)
        self.pull.bind(INGEST_IN)
        self.notify = z.socket(zmq.PUSH)
        self.notify.connect(INGEST_NOTIFY)
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        self.ready.set()
        try:
            self._loop(poller)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which stops the daemon
            self.failed = exc
            self.log.exception("ingest failed")
            self.notify.send_pyobj(("ingest_failed", repr(exc)))
        finally:
            for s in (self.router, self.pub, self.pull, self.notify):
                s.close(0)
            self.writer.close()

    def _loop(self, poller: zmq.Poller) -> None:
        stopping = False
        while not stopping:
            ready = dict(poller.poll(200))
            if not ready:
                continue
            if self.pub in ready:
                self._on_subscriptions()
            rows: list[EventRow] = []
            changes = RowChanges()
            acks: dict[str, tuple[bytes, bool]] = {}
            pub: dict[str, list[list[Any]]] = {}
            notes: list[tuple[Any, ...]] = []
            to_runners: list[tuple[str, str, dict[str, Any]]] = []
            # Daemon-side items first: a session.created must be in before that session's runner events.
            while len(rows) < MAX_BATCH:
                try:
                    item = self.pull.recv_pyobj(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if item[0] == "stop":
                    stopping = True
                    break
                self._on_internal(item, rows, changes, pub, notes, to_runners)
            while len(rows) < MAX_BATCH:
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_runner_frames(frames, rows, changes, pub, acks, notes, to_runners)
            if rows or changes.session_updates:
                self.writer.commit(rows, changes, self.cursors)
                self.count("events_persisted", len(rows))
            for sid, evs in pub.items():  # persisted: now publish
                for chunk in _chunks(evs):
                    self.pub.send_multipart([f"session.{sid}".encode(),
                                             *self.pub_codec.pack("events", {"session": sid, "events": chunk})])
            for sid, (identity, resend) in acks.items():
                cur = self.cursors[sid]
                body = {"next": cur.runner_seq + 1, "resend": resend}
                self.router.send_multipart([identity, *self.runner_codec.pack("ack", body)])
            for sid, type_, body in to_runners:  # e.g. an approval's resolution, now that it is durable
                self.router.send_multipart([sid.encode(), *self.runner_codec.pack(type_, body)])
            for note in notes:
                self.notify.send_pyobj(note)

    def _on_subscriptions(self) -> None:
        """Track live-tail subscriptions (XPUB passes each topic's first subscribe and last unsubscribe)."""
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.topics.add(msg[1:])
            elif msg[:1] == b"\x00":
                self.topics.discard(msg[1:])

    # ---- daemon-side items ------------------------------------------------------------------------
    def _on_internal(self, item: tuple[Any, ...], rows: list[EventRow], changes: RowChanges,
                     pub: dict[str, list[list[Any]]], notes: list[tuple[Any, ...]],
                     to_runners: list[tuple[str, str, dict[str, Any]]]) -> None:
        op = item[0]
        if op == "event":
            _, sid, kind, payload, node_id, reply_to = item
            if kind == "session.created":
                self.cursors[sid] = SessionCursor(id=sid)
            cur = self._cursor(sid)
            if cur is None:
                self.log.error("daemon event for unknown session dropped", session_id=sid, kind=kind)
                if reply_to is not None:
                    notes.append(("refused", reply_to, "not_found", f"no session {sid!r}"))
                return
            if kind == "approval.resolved":
                # The one place an approval is resolved: ingest is single-threaded, so exactly once.
                refusal = _refuse_resolution(cur, payload)
                if refusal is not None:
                    if reply_to is not None:
                        notes.append(("refused", reply_to, *refusal))
                    return
                to_runners.append((sid, "approval.resolved", payload))
            self._append(cur, time.time(), kind, "d", None, node_id, None, payload, rows, changes, pub, notes)
            if reply_to is not None:
                notes.append(("committed", reply_to, sid, cur.last_seq, payload))
        elif op == "send":  # a message for a runner, e.g. cancel
            _, sid, type_, body = item
            self.router.send_multipart([sid.encode(), *self.runner_codec.pack(type_, body)])

    # ---- runner frames ----------------------------------------------------------------------------
    def _on_runner_frames(self, frames: list[bytes], rows: list[EventRow], changes: RowChanges,
                          pub: dict[str, list[list[Any]]], acks: dict[str, tuple[bytes, bool]],
                          notes: list[tuple[Any, ...]], to_runners: list[tuple[str, str, dict[str, Any]]]) -> None:
        identity, rest = frames[0], frames[1:]
        try:
            msg = self.runner_codec.unpack(rest)
        except WireError as exc:
            self.count(f"dropped.runner.{exc.reason}")
            self.log.warning("runner frame dropped", reason=exc.reason, error=str(exc))
            return
        sid = msg.body.get("session")
        if not isinstance(sid, str) or sid.encode() != identity:
            self.count("dropped.runner.bad_session")
            self.log.warning("runner frame dropped", reason="bad_session", session_id=str(sid)[:64])
            return
        cur = self._cursor(sid)
        if cur is None:
            self.count("dropped.runner.unknown_session")
            self.log.warning("runner frame for unknown session dropped", session_id=sid)
            return
        self.last_seen[sid] = time.time()
        if msg.type == "hello":
            acks[sid] = (identity, acks.get(sid, (identity, False))[1])
            waiting = [a for a in msg.body.get("waiting_approvals") or [] if isinstance(a, str)][:100]
            for r in self.writer.resolutions(sid, waiting):  # answered while we could not tell it
                to_runners.append((sid, "approval.resolved", {
                    "approval_id": r["id"], "decision": r["decision"], "feedback": r["feedback"],
                    "hypothesis": r["hypothesis"], "by": r["resolved_by"], "via": r["resolved_via"]}))
            return
        if msg.type == "heartbeat":
            return
        if msg.type != "events":
            self.count("dropped.runner.unknown_type")
            return
        evs = msg.body.get("events")
        if not isinstance(evs, list):
            self.count("dropped.runner.malformed")
            return
        resend = acks.get(sid, (identity, False))[1]
        live = self._is_live(sid)
        live_list = pub.setdefault(sid, []) if live else None
        dumps = orjson.dumps
        for ev in evs:
            if not (isinstance(ev, list) and len(ev) == 6 and isinstance(ev[0], int)):
                # Without a readable src_seq nothing after it can be placed; asking for a resend would
                # only bring the same bytes back, so the rest of this batch is dropped and counted.
                self.count("dropped.runner.malformed")
                break
            bad_ts = not isinstance(ev[1], _NUMBER)
            src_seq = ev[0]
            if src_seq <= cur.runner_seq:
                self.count("duplicates_ignored")
                continue
            if src_seq != cur.runner_seq + 1:
                # a gap: something before this was lost in transit (e.g. across a daemon restart)
                now = time.monotonic()
                if now - self._last_resend.get(sid, 0.0) > RESEND_INTERVAL_S:
                    self._last_resend[sid] = now
                    resend = True
                break
            cur.runner_seq = src_seq
            _, ts, kind, node_id, parent, payload = ev
            if bad_ts:
                self.count("events_rejected")
                self._append(cur, time.time(), "event.rejected", "r", src_seq, None, None,
                             {"kind": str(kind)[:64], "reason": "timestamp is not a number"}, rows, changes, pub,
                             notes)
                continue
            if parent is None and quick_valid(kind, payload, node_id):
                # hot path (output, log, custom): no projection to update
                seq = cur.last_seq = cur.last_seq + 1
                rows.append((sid, seq, ts, kind, "r", src_seq, node_id, None, dumps(payload, default=repr).decode()))
                if live_list is not None:
                    live_list.append([seq, ts, kind, "r", node_id, None, payload, src_seq])
                continue
            try:
                validate(kind, payload, node_id)
                if parent is not None and not isinstance(parent, int):
                    raise EventError("parent must be an integer (the src_seq of the enclosing event)")
                if kind in DAEMON_KINDS:
                    raise EventError(f"{kind} may only be recorded by the daemon")
            except EventError as exc:
                self.count("events_rejected")
                self.log.warning("event rejected", session_id=sid, kind=str(kind)[:64], error=str(exc))
                self._append(cur, float(ts), "event.rejected", "r", src_seq, None, None,
                             {"kind": str(kind)[:64], "reason": str(exc)}, rows, changes, pub, notes)
                continue
            if kind == "approval.requested" and payload["approval_id"] in cur.pending_approvals:
                self.count("events_rejected")
                self._append(cur, float(ts), "event.rejected", "r", src_seq, None, None,
                             {"kind": kind, "reason": "duplicate approval id"}, rows, changes, pub, notes)
                continue
            self._append(cur, float(ts), kind, "r", src_seq, node_id, parent, payload, rows, changes, pub, notes)
        acks[sid] = (identity, resend)

    def _append(self, cur: SessionCursor, ts: float, kind: str, src: str, src_seq: int | None,
                node_id: str | None, parent: int | None, payload: dict[str, Any], rows: list[EventRow],
                changes: RowChanges, pub: dict[str, list[list[Any]]], notes: list[tuple[Any, ...]]) -> None:
        seq = cur.last_seq + 1
        if kind in PROJECTED:
            apply(cur, seq, ts, kind, src, node_id, payload, changes)
            if kind == "cost.recorded" and cur.budget is not None and cur.cost > cur.budget and not cur.budget_hit:
                cur.budget_hit = True
                notes.append(("budget", cur.id, cur.cost, cur.budget))
            elif kind == "approval.requested":
                notes.append(("approval", cur.id, payload["approval_id"], payload.get("timeout"),
                              payload.get("policy")))
        else:
            cur.last_seq = seq
        text = orjson.dumps(payload, default=repr).decode()
        rows.append((cur.id, seq, ts, kind, src, seq if src_seq is None else src_seq, node_id, parent, text))
        if self._is_live(cur.id):
            pub.setdefault(cur.id, []).append([seq, ts, kind, src, node_id, parent, payload,
                                               seq if src_seq is None else src_seq])

    def _is_live(self, sid: str) -> bool:
        """Does any client follow this session's live tail?"""
        if not self.topics:
            return False
        topic = f"session.{sid}".encode()
        return any(topic.startswith(t) for t in self.topics)


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


PUB_CHUNK_BYTES = 4 * 1024 * 1024


def _chunks(evs: list[list[Any]]) -> list[list[list[Any]]]:
    """Split a live batch so no message nears the clients' size limit (output chunks can be 64 KiB)."""
    out: list[list[list[Any]]] = []
    cur: list[list[Any]] = []
    size = 0
    for ev in evs:
        payload = ev[6]
        text = payload.get("text") if isinstance(payload, dict) else None
        size += 100 + (len(text) if isinstance(text, str) else 0)
        cur.append(ev)
        if size > PUB_CHUNK_BYTES:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out
