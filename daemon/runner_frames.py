"""Ingest's side facing runners: verify a runner's frames, decode them, and stage its events in a batch.

A mixin of :class:`labd.daemon.ingest.Ingest` (it runs on the ingest thread and uses its cursors, writer and
counters); split from the writer loop because it is a concern of its own: what a runner may send. A frame must
verify with the key of the session its routing id claims, and name that session in its body; an event must
carry the next ``src_seq`` (duplicates are skipped, a gap asks for a resend), must not be of a daemon kind, and
must pass its kind's schema — an invalid one is stored as ``event.rejected`` in its ``src_seq`` slot.

The hot loop (:meth:`RunnerFrames._on_events`) is the per-event cost of the whole event path (docs/design.md,
"Ingest per event"): sequence numbers are kept in locals, the commonest kinds are checked inline, and each
payload is encoded once — the text stored is the text the live tail splices in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from labd.daemon.ingest_batch import LIVE_OVERHEAD, Batch, Fragment, LiveEvents, LiveRun
from labd.daemon.outputcap import CAPPED, OutputCaps
from labd.daemon.recordcap import RecordCaps
from labd.daemon.runner_wire import BadIdentity, run_span, runner_session
from labd.ipc.events import APPROVALS_PENDING_MAX, DAEMON_KINDS, NODE_ID_MAX, TS_MAX, EventError, quick_valid, validate
from labd.ipc.signing import derive_key
from labd.ipc.wire import Codec, Message, WireError
from labd.store.db import unreachable
from labd.store.projections import SessionCursor
from labd.store.search import IndexHints

if TYPE_CHECKING:
    from labd.store.writer import BatchWriter

__all__ = ["RunnerFrames", "RESEND_INTERVAL_S"]

#: message ids remembered per session's runner for the replay window. A session's own code can sign frames with its
#: runner's key: with the default (a million) it made the daemon hold ~300 MB per session in unique ids (an attack
#: review). Runner frames need little of the guard: their events are taken exactly once by sequence number, and only
#: a process of the user could capture frames to replay (the socket is the user's); 4,096 ids cost at most ~1.5 MB.
RUNNER_REPLAY_IDS = 4096

RESEND_INTERVAL_S = 0.5  # at most one resend request per session this often (a gap shows in every later frame)
MAX_HELLOS = 4096  # runners' hellos remembered (RunnerFrames.hellos)
_NUMBER = (int, float)
_dumps = orjson.dumps
#: the streams of an output event the output cap sizes by its text alone (what the runner sends)
_STREAMS = ("stdout", "stderr")


class RunnerFrames:
    """Runner frames -> staged events (mixin of the ingest thread; see the module docstring)."""

    # provided by Ingest
    _key: bytes
    max_message: int
    writer: BatchWriter
    sessions_dir: Path | None
    outcap: OutputCaps
    records: RecordCaps
    log: Any
    cursors: dict[str, SessionCursor]
    index_hints: IndexHints
    routes: dict[str, bytes]
    last_seen: dict[str, float]
    #: session -> (pid, create time) its runner's last ``hello`` said, newest last (bounded: MAX_HELLOS)
    hellos: dict[str, tuple[int, float]]
    _runner_codecs: dict[str, Codec]
    #: session -> the seq of the ``session.continued`` its current run began with (resumed sessions only): the
    #: run its runner key is derived for (ipc.signing.derive_key; loaded at start, kept by ingest)
    run_seqs: dict[str, int]
    _last_resend: dict[str, float]
    _gap_at: dict[str, float]  # session whose runner's frames show a gap -> when to fill it from its spool
    _gap_wait: dict[str, float]  # session -> the last wait after a fill from its spool that filled nothing
    _fill_gap: Callable[[SessionCursor, Batch], None]  # (labd.daemon.spool_reading)
    _waiting_for_hello: dict[str, list[tuple[str, dict[str, Any]]]]
    _safe: bool
    _warn: Callable[..., None]  # a line a second per reason (WarnLimiter)
    _strays: set[str]
    #: verified frames of a session ingest did not know yet, processed again in the next pass (see _unknown)
    _deferred: list[list[bytes]]
    _frame: tuple[list[bytes], bool] | None  # the frame being processed, and whether for the first time

    def count(self, name: str, n: int = 1) -> None:
        raise NotImplementedError

    def _cursor(self, sid: str) -> SessionCursor | None:
        raise NotImplementedError

    def _is_live(self, sid: str) -> bool:
        raise NotImplementedError

    def _append(self, cur: SessionCursor, ts: float, kind: str, src: str, src_seq: int | None,
                node_id: str | None, parent: int | None, payload: dict[str, Any], b: Batch) -> bool:
        raise NotImplementedError

    # ---- per-session credentials ------------------------------------------------------------------
    def key_for(self, session_id: str) -> bytes:
        """The key the runner of a session's current run signs with (docs/security.md): never the daemon's own."""
        return derive_key(self._key, session_id, self.run_seqs.get(session_id, 0))

    def _codec_for(self, session_id: str) -> Codec:
        codec = self._runner_codecs.get(session_id)
        if codec is None:  # cached by the caller once a frame verified with it
            codec = Codec(self.key_for(session_id), max_message=self.max_message, replay_ids=RUNNER_REPLAY_IDS)
        return codec

    # ---- frames -----------------------------------------------------------------------------------
    def _process_frames(self, frames: list[bytes], batch: Batch, *, seen: bool) -> None:
        """Verify, decode and stage one runner message ``[identity, signature, body]``; a bad one is counted."""
        sid = runner_session(frames[0])
        try:
            if sid is None:
                raise BadIdentity()
            codec = self._codec_for(sid)
            msg = codec.unpack(frames[1:], seen=seen)
            self._runner_codecs.setdefault(sid, codec)
        except WireError as exc:
            if not seen:
                self.count(f"dropped.runner.{exc.reason}")
                self._warn("runner frame dropped", exc.reason, error=str(exc)[:300])
            return
        self._frame = (frames, not seen)
        try:
            self._on_runner_message(frames[0], msg, batch)
        except Exception as exc:  # noqa: BLE001 - a frame we cannot handle is counted and dropped
            if unreachable(exc):  # the store, not the frame: processed again once it is back (ingest_commit._write)
                raise
            self.count("dropped.runner.error")
            self.log.exception("runner frame dropped")
        finally:
            self._frame = None

    def _unknown(self, sid: str) -> None:
        """A verified frame of a session the store does not have (yet). A runner's first frame can overtake its
        ``session.created``: the daemon queued that before the launch, but this pass took the daemon's items
        before the runner existed. Such a frame waits for one more pass (which takes the daemon's items first)
        instead of being dropped, which would cost its runner a resend timeout; still unknown then, it is dropped.
        Only frames signed with the session's own key get here, at most one pass's worth."""
        assert self._frame is not None
        frames, first = self._frame
        if first:
            self._deferred.append(frames)
            self.count("runner.deferred")
            return
        if not any(frames is f for f in self._deferred):  # (a store retry's pass over a frame deferred just now)
            self.count("dropped.runner.unknown_session")
            if sid in self._strays:
                return
            if len(self._strays) < 10_000:  # once per session: it resends every second until it ends (admin review)
                self._strays.add(sid)
            self.log.warning("a runner of this home reports a session the store does not have: its output is not "
                             "recorded and nothing supervises it (an older store served?). Stop it: "
                             f"pkill -f ' #{sid[:64]}$'", session_id=sid[:64])

    def _on_runner_message(self, identity: bytes, msg: Message, b: Batch) -> None:
        sid = msg.body.get("session")
        if not isinstance(sid, str) or sid != runner_session(identity):
            self.count("dropped.runner.bad_session")
            self._warn("runner frame dropped", "bad_session", session_id=str(sid)[:64])
            return
        cur = self._cursor(sid)
        if cur is None:
            self._unknown(sid)
            return
        self.last_seen[sid] = time.time()
        self.routes[sid] = identity  # signed with this session's key: this is where its runner is now
        for type_, msg_body in self._waiting_for_hello.pop(sid, []):  # control sent before it could be delivered
            b.to_runners.append((sid, type_, msg_body))
        if msg.type == "hello":
            self._on_hello(sid, identity, msg.body, b)
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
        if cur.terminal:
            # Its end is recorded, after everything its runner sent and spooled (daemon_items: the spool is read
            # before session.ended): nothing a runner sends now belongs to the record. The key is the session's for
            # good, and code that copied it out wrote steps, outcomes and approvals into finished sessions.
            # Counted as dropped: the events the record does not hold. A frame sent again of what the record took
            # from the spool (a runner killed, its frames still in the socket, the end recorded from the spool) is
            # no loss; counting it made `dropped.` counters say events were lost when none were
            late = sum(1 for ev in evs if not (ev.__class__ is list and ev and ev[0].__class__ is int
                                               and ev[0] <= cur.runner_seq))
            if late:
                self.count("dropped.runner.ended", late)
                self._warn("runner events of an ended session dropped", "ended", session_id=sid, status=cur.status)
            # Acked all the same (the ack says what the record holds, which took its spool before the end): a runner
            # still alive waits in its close for an ack of what it sent last, and one the daemon ended from its
            # spool (adopted late after a restart) had waited its whole flush timeout, 30 s, for one never sent
            b.acks[sid] = (identity, False, True)
            return
        self._on_events(cur, identity, evs, b, self._frame[0][-1] if self._frame is not None else None)
        if msg.body.get("ack") is True and sid in b.acks:  # the runner waits for it (daemon/acks.py)
            self.count("acks.asked")
            b.acks[sid] = (identity, b.acks[sid][1], True)

    def _on_hello(self, sid: str, identity: bytes, body: dict[str, Any], b: Batch) -> None:
        pid, ctime = body.get("pid"), body.get("create_time")
        if isinstance(pid, int) and not isinstance(pid, bool) and isinstance(ctime, int | float):
            # which process is the runner, for a restarted daemon that found several titled as it (orphans.Claims);
            # only the last few thousand are kept: claims are settled within seconds of a start
            self.hellos[sid] = (pid, float(ctime))
            if len(self.hellos) > MAX_HELLOS:
                del self.hellos[next(iter(self.hellos))]
        b.acks[sid] = (identity, b.acks.get(sid, (identity, False, False))[1], True)  # where to resend from: now
        waiting = body.get("waiting_approvals")
        ids = [a for a in waiting if isinstance(a, str)][:100] if isinstance(waiting, list) else []
        for r in self.writer.resolutions(sid, ids):  # answered while we could not tell it
            b.to_runners.append((sid, "approval.resolved", {
                "approval_id": r["id"], "decision": r["decision"], "feedback": r["feedback"],
                "hypothesis": r["hypothesis"], "by": r["resolved_by"], "via": r["resolved_via"]}))

    # ---- events -----------------------------------------------------------------------------------
    def _on_events(self, cur: SessionCursor, identity: bytes | None, evs: list[Any], b: Batch,
                   raw: bytes | None = None) -> None:
        """Stage a runner's events ``[src_seq, ts, kind, node_id, parent, payload]`` in order.

        The loop keeps the session's ``runner_seq`` and ``last_seq`` in locals and writes them back to the
        cursor around anything that reads or changes it (the slow path, and the end).

        ``raw``: the frame's body as received. When the session is followed live and every event takes the hot
        path in order, the live copy is that frame's ``events`` array as the runner sent it (one
        :class:`~labd.daemon.ingest_batch.LiveRun`, no per-event work); the per-event live items are built only
        once something else happens (docs/design.md, "Live tail: a runner frame as it arrived")."""
        sid = cur.id
        _, resend, prompt = b.acks.get(sid, (identity, False, False))
        live = b.pub.setdefault(sid, LiveEvents()) if self._is_live(sid) else None
        span = run_span(raw, sid) if live is not None and raw is not None else None
        deferred = span is not None  # the live items of hot events are not built (yet): they may be one run
        live_sizes = live.sizes.append if live is not None and not deferred else None
        live_events = live.events.append if live is not None and not deferred else None
        p0, n0, offset = len(b.plain), len(b.noded), cur.last_seq - cur.runner_seq
        plain_append = b.plain.append
        noded_append = b.noded.append
        fast = not self._safe
        hot = 0
        gap = False
        runner_seq, last_seq = cur.runner_seq, cur.last_seq
        self.index_hints.writing(sid, last_seq + 1)  # the hot rows below are never indexable kinds
        in_slow = False  # True while a slow path runs: then the cursor, not the locals, is current
        try:
            for ev in evs:
                if ev.__class__ is not list or len(ev) != 6 or not isinstance(ev[0], int):
                    # Without a readable src_seq nothing after it can be placed; asking for a resend would
                    # only bring the same bytes back, so the rest of this batch is dropped and counted.
                    self.count("dropped.runner.malformed")
                    break
                src_seq, ts, kind, node_id, parent, payload = ev
                if src_seq != runner_seq + 1:
                    if src_seq <= runner_seq:
                        self.count("duplicates_ignored")
                        continue
                    # a gap: something before this was lost in transit (e.g. across a daemon restart)
                    gap = True
                    now = time.monotonic()
                    if now - self._last_resend.get(sid, 0.0) > RESEND_INTERVAL_S:
                        self._last_resend[sid] = now
                        resend = True
                    break
                runner_seq = src_seq
                text = None
                if kind in CAPPED:  # output, log, custom: what the workflow writes counts against its output cap
                    out = None
                    if kind == "output" and payload.__class__ is dict and len(payload) == 2 and (
                            payload.get("stream") in _STREAMS):  # as the runner sends it: sized by its text
                        out = payload.get("text")
                    if out.__class__ is str:
                        size = len(out)
                    else:  # its stored text, encoded once (the hot path below stores it); an output event of
                        # another shape (extra fields, a long stream, a text that is no string) by all of it
                        try:
                            text = _dumps(payload, default=repr).decode()
                        except TypeError:  # nested too deeply: rejected below
                            pass
                        size = 0 if text is None else len(text)
                    cut = self.outcap.drop(sid, kind, size)
                else:
                    cut = False
                if cut is not False:  # past the cap
                    if cut is not True:
                        cur.runner_seq, cur.last_seq, in_slow = runner_seq, last_seq, True
                        if deferred:  # what the slow path publishes must come after the hot events before it
                            live_sizes, live_events, deferred = self._undefer(live, b, p0, n0)
                        self._append(cur, time.time(), "output.truncated", "r", src_seq, None, None, cut, b)
                        runner_seq, last_seq, in_slow = cur.runner_seq, cur.last_seq, False  # (safe mode reloads)
                    continue
                # Hot path: custom, log and output events, which update no projection. A custom event is checked
                # inline (the commonest kind in bulk); the others by quick_valid.
                if fast and parent is None and ts.__class__ is float and 0.0 <= ts < TS_MAX and (
                        (kind == "custom" and payload.__class__ is dict and payload.get("name").__class__ is str
                         and (node_id is None or (node_id.__class__ is str and len(node_id) <= NODE_ID_MAX)))
                        or quick_valid(kind, payload, node_id)):
                    try:
                        if text is None:
                            text = _dumps(payload, default=repr).decode()
                    except TypeError:  # nested too deeply to store
                        cur.runner_seq, cur.last_seq, in_slow = runner_seq, last_seq, True
                        if deferred:
                            live_sizes, live_events, deferred = self._undefer(live, b, p0, n0)
                        self._reject(cur, src_seq, kind, "payload cannot be stored (nested too deeply)", b)
                        runner_seq, last_seq, in_slow = cur.runner_seq, cur.last_seq, False
                        continue
                    last_seq += 1
                    if node_id is None:  # no NULLs to bind (store.writer.PlainRow); the parent is None here
                        plain_append((sid, last_seq, ts, kind, "r", src_seq, text))
                    else:
                        noded_append((sid, last_seq, ts, kind, "r", src_seq, node_id, text))
                    if live_events is not None:  # the live copy is the stored text, spliced in (not encoded again)
                        live_sizes(len(text) + LIVE_OVERHEAD)  # type: ignore[misc]
                        live_events([last_seq, ts, kind, "r", node_id, None, Fragment(text), src_seq])
                    hot += 1
                    continue
                cur.runner_seq, cur.last_seq, in_slow = runner_seq, last_seq, True
                if deferred:
                    live_sizes, live_events, deferred = self._undefer(live, b, p0, n0)
                self._slow_event(cur, src_seq, ts, kind, node_id, parent, payload, b)
                runner_seq, last_seq, in_slow = cur.runner_seq, cur.last_seq, False
        finally:
            # Also when an exception ends the frame (it is counted and dropped by the caller): the rows staged
            # so far keep their seqs, so the cursor must cover them.
            if not in_slow:
                cur.runner_seq, cur.last_seq = runner_seq, last_seq
            b.count += hot
            if deferred and hot:
                if hot == len(evs):  # all hot, in order: seq = src_seq + offset throughout
                    live.add_run(LiveRun(offset, span))  # type: ignore[union-attr,arg-type]
                else:  # a duplicate, a gap, a drop or an error: the per-event form
                    self._undefer(live, b, p0, n0)
        if identity is not None:
            b.acks[sid] = (identity, resend, prompt)
            if gap:
                self._fill_gap(cur, b)
            elif self._gap_at:
                self._gap_at.pop(sid, None)
                self._gap_wait.pop(sid, None)

    @staticmethod
    def _undefer(live: LiveEvents | None, b: Batch, p0: int, n0: int) -> tuple[Any, Any, bool]:
        """Build the per-event live items of the hot rows this frame staged so far (from ``b.plain[p0:]`` and
        ``b.noded[n0:]``, in seq order); returns the appenders for the rest of the frame."""
        assert live is not None
        rows: list[tuple[int, float, str, str | None, int, str]] = [
            (r[1], r[2], r[3], None, r[5], r[6]) for r in b.plain[p0:]]
        rows += [(r[1], r[2], r[3], r[6], r[5], r[7]) for r in b.noded[n0:]]
        rows.sort(key=lambda r: r[0])
        for seq, ts, kind, node_id, src_seq, text in rows:
            live.add(len(text), [seq, ts, kind, "r", node_id, None, Fragment(text), src_seq])
        return live.sizes.append, live.events.append, False

    def _slow_event(self, cur: SessionCursor, src_seq: int, ts: Any, kind: Any, node_id: Any, parent: Any,
                    payload: Any, b: Batch) -> None:
        """One event off the hot path (projected kinds, anything invalid, safe mode); the cursor is
        current (``runner_seq`` already covers ``src_seq``)."""
        if kind not in CAPPED and self.records.over(cur.id):  # past [daemon] max_session_record: being stopped
            self.records.dropped()
            return
        try:
            if not isinstance(ts, _NUMBER) or isinstance(ts, bool) or not 0 <= ts < TS_MAX:
                raise EventError("timestamp is not a number of seconds")
            validate(kind, payload, node_id)
            if parent is not None and not (isinstance(parent, int) and 0 < parent < 2**63):
                raise EventError("parent must be an integer (the src_seq of the enclosing event)")
            if kind in DAEMON_KINDS:
                raise EventError(f"{kind} may only be recorded by the daemon")
            if kind == "approval.requested" and payload["approval_id"] in cur.pending_approvals:
                raise EventError("duplicate approval id")
            if kind == "approval.requested" and len(cur.pending_approvals) >= APPROVALS_PENDING_MAX:
                raise EventError(f"the session has {APPROVALS_PENDING_MAX} approvals pending already (the most it may)")
        except EventError as exc:
            self._reject(cur, src_seq, kind, str(exc), b)
            return
        try:
            self._append(cur, float(ts), kind, "r", src_seq, node_id, parent, payload, b)
        except TypeError:  # nested too deeply to store (_stage encodes before it changes anything)
            self._reject(cur, src_seq, kind, "payload cannot be stored (nested too deeply)", b)

    def _reject(self, cur: SessionCursor, src_seq: int, kind: Any, reason: str, b: Batch) -> None:
        """Record an ``event.rejected`` in the runner's ``src_seq`` slot (the runner's sequence stays gap-free).
        A rejection is counted by ``[daemon] max_session_record`` (of an output kind too): past it, none is
        stored."""
        self.count("events_rejected")
        if self.records.over(cur.id):
            self.records.dropped()
            return
        self._warn("event rejected", "rejected", session_id=cur.id, kind=str(kind)[:64], error=reason[:300])
        self._append(cur, time.time(), "event.rejected", "r", src_seq, None, None,
                     {"kind": str(kind)[:64], "reason": reason}, b)
