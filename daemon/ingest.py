"""Ingest: the only writer of the store. Persists each event, then publishes it, then acknowledges it.

Runs in its own thread and owns three sockets: the runner ROUTER (signed event batches from runners),
the event PUB (live tail for clients), and an inproc PULL on which the rest of the daemon hands over
its own events (lifecycle facts a runner cannot know) and messages for runners.

Per batch (up to :data:`MAX_BATCH` events): validate -> assign each event the session's next ``seq`` ->
update projections -> one transaction -> publish on ``session.<id>`` -> ack ``next`` src_seq to each runner.
Duplicates (``src_seq`` already committed) are skipped and re-acked; a gap (a runner's batch that starts
beyond what we have) is not written and the runner is told to resend from the first missing one.

This module is the writer loop (and staging into the store's rows); what runners send is verified and staged by
:mod:`labd.daemon.runner_frames`, what the rest of the daemon hands over by :mod:`labd.daemon.daemon_items`, what
sessions' spools hold by :mod:`labd.daemon.spool_reading` (all mixins of :class:`Ingest`, on its thread), into a
:class:`~labd.daemon.ingest_batch.Batch`; what is done once a
batch is committed (publish, acknowledge, notify) by :mod:`labd.daemon.delivery`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
import zmq

from labd.daemon.acks import AckPacer
from labd.daemon.daemon_items import DaemonItems
from labd.daemon.delivery import Delivery
from labd.daemon.inbound import bind_runners, bound, rebind
from labd.daemon.ingest_batch import PUB_SNDHWM, Batch, Fragment, LiveEvents, tune_gc
from labd.daemon.ingest_commit import Committing, GivenUp
from labd.daemon.outputcap import CAPPED, OutputCaps
from labd.daemon.recordcap import DEFAULT_MAX_SESSION_RECORD, RecordCaps
from labd.daemon.runner_frames import RunnerFrames
from labd.daemon.shipped import receive as receive_shipped
from labd.daemon.shipped import receive_object
from labd.daemon.spool_reading import SpoolReading
from labd.daemon.subscriptions import LiveSubscriptions
from labd.daemon.warnlimit import WarnLimiter
from labd.ipc.wire import Codec
from labd.store.blobs import take_blobs
from labd.store.db import UNREACHABLE, unreachable
from labd.store.projections import SessionCursor, apply
from labd.store.search import IndexHints
from labd.store.writer import BatchWriter

__all__ = ["Ingest", "INGEST_IN", "INGEST_NOTIFY", "MAX_BATCH", "Batch"]

INGEST_IN = "inproc://labd-ingest-in"
INGEST_NOTIFY = "inproc://labd-ingest-notify"
MAX_BATCH = 5000
MAX_BATCH_BYTES = 4 * 1024 * 1024  # raw runner frames per batch: bounds the memory one batch holds
#: kinds that change projections (everything else only advances the session's seq)
PROJECTED = frozenset({"session.created", "session.queued", "session.launched", "session.started", "session.finished",
                       "session.stopping", "session.ended", "session.adopted", "limit.exceeded", "budget.exceeded",
                       "step.started", "step.finished", "step.planned", "resource.sample", "agent.turn.started",
                       "agent.turn.finished", "cost.recorded", "file.created", "file.changed", "file.deleted",
                       "approval.requested", "approval.resolved", "session.paused", "session.resumed",
                       "event.rejected", "session.continued"})


#: what one DAG edge costs the store (a row of dag_edges with its index; measured ~87 bytes on SQLite), charged to
#: the session's max_session_record
EDGE_ROW_BYTES = 90


class Ingest(Committing, RunnerFrames, DaemonItems, SpoolReading, Delivery, threading.Thread):
    """The store-writer thread. Communicate with it only through its sockets."""

    def __init__(self, zctx: zmq.Context, writer: BatchWriter, key: bytes, runners_endpoint: str,
                 events_endpoint: str, counters: dict[str, int], last_seen: dict[str, float],
                 max_message: int, sessions_dir: Path | None = None,
                 secure_events: Callable[[zmq.Socket], None] | None = None,
                 max_session_record: int | None = DEFAULT_MAX_SESSION_RECORD) -> None:
        super().__init__(name="labd-ingest", daemon=True)
        #: where runners keep their spools (``<sessions_dir>/<id>/events.spool``); None: no spools read
        self.sessions_dir = sessions_dir
        self.zctx = zctx
        self.writer = writer
        self._key = key
        self.max_message = max_message
        self.pub_codec = Codec(key, max_message=max_message)
        #: per-session codecs (each runner signs with its own key), created on a session's first valid frame
        self._runner_codecs: dict[str, Codec] = {}
        self.run_seqs: dict[str, int] = {}  # which run each resumed session's key is for (runner_frames.key_for)
        #: session -> routing id of its runner, learned only from frames signed with that session's key
        self.routes: dict[str, bytes] = {}
        self.runners_endpoint = runners_endpoint
        self.events_endpoint = events_endpoint
        self._secure_events = secure_events  # admits holders of the key only (daemon/events_auth.py)
        self.counters = counters
        self.last_seen = last_seen
        self.hellos: dict[str, tuple[int, float]] = {}
        self.outcap = OutputCaps(self._cap_and_chars, counters)  # the output caps' backstop
        self.records = RecordCaps(max_session_record, counters,  # labd's own kinds from runners, per session
                                  lambda sid: getattr(self.cursors.get(sid), "record_bytes", 0))
        self.log = structlog.get_logger("labd.ingest")
        self.cursors: dict[str, SessionCursor] = {}
        #: which sessions' new rows hold nothing the search index wants (read by the indexer)
        self.index_hints = IndexHints()
        self._last_resend: dict[str, float] = {}
        self._gap_at: dict[str, float] = {}
        self._gap_wait: dict[str, float] = {}
        self.acks = AckPacer()  # when runners are acknowledged (at once, or once per interval)
        self._warn = WarnLimiter(self.log).warn  # bad frames: a line a second per reason, counters exact
        self._strays: set[str] = set()  # sessions unknown to the store whose runner was said to be a stray (once)
        self.live_subs = LiveSubscriptions(self.count)  # who follows which session's live tail
        #: control messages for runners that have not said hello yet (e.g. pause right after start)
        self._waiting_for_hello: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._safe = False  # safe mode: commit event by event (after the store refused a batch)
        self._items_done = 0  # daemon items the pass processed so far (_process)
        self._deferred: list[list[bytes]] = []  # runner frames that overtook their session.created (runner_frames)
        self._later: list[tuple[Any, ...]] = []  # daemon items carried to the next pass (Batch.later)
        self._spool_at: dict[str, tuple[int, int, int]] = {}  # where reading a session's spool goes on (spool_reading)
        self._frame: tuple[list[bytes], bool] | None = None
        self.ready = threading.Event()
        #: set by the daemon as it stops (with the "stop" item): a wait for an unwritable store ends then
        self.stopping = threading.Event()
        self.failed: BaseException | None = None
        #: the last commit failed for want of the store (a full disk, a lock held elsewhere); the control plane
        #: refuses new sessions meanwhile rather than accept what it cannot record (read from another thread:
        #: a plain attribute, one writer)
        self.store_down = False
        self.store_down_since = 0.0  # ... since when (time.monotonic()), and why: `labd status` says so
        self.store_error = ""
        self.beat = time.monotonic()  # last turn of the loop: the systemd watchdog pings only while it moves
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
        tune_gc()
        z = self.zctx
        self.router = bind_runners(z, self.runners_endpoint, self.max_message)
        self.pub = self._bind_events()
        self.pull = z.socket(zmq.PULL)
        self.pull.bind(INGEST_IN)
        self.notify = z.socket(zmq.PUSH)
        self.notify.connect(INGEST_NOTIFY)
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        try:
            # before ready: the daemon launches queued sessions, and adopts runners, once ingest is ready; a resumed
            # session's run has a key of its own (runner_frames.key_for)
            self.run_seqs.update(self.writer.run_keys())
            self.ready.set()
            self._loop(poller)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which stops the daemon
            self.ready.set()
            self.failed = exc
            self.log.exception("ingest failed")
            self.notify.send_pyobj(("ingest_failed", repr(exc)))
        finally:
            for s in (self.router, self.pub, self.pull, self.notify):
                s.close(0)
            self.writer.close()

    def _bind_events(self) -> zmq.Socket:
        """The live tail's socket, bound to the events endpoint."""
        # XPUB rather than PUB: it tells us what clients subscribe to, so events nobody follows are
        # not encoded for the live tail at all (~9 % of ingest time under load).
        pub = self.zctx.socket(zmq.XPUB)
        # Bounded per subscriber: PUB_SNDHWM messages of at most ~PUB_CHUNK_BYTES (16 MiB). A follower that
        # stops reading loses live messages past that (it fills the gap from the store, as after any drop)
        # instead of growing the daemon's memory (a stalled follower of 4 stdout floods: +260 MB before).
        pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
        pub.setsockopt(zmq.LINGER, 0)
        if self._secure_events is not None:
            self._secure_events(pub)
        return bound(pub, self.events_endpoint)

    def _reset_inbound(self, poller: zmq.Poller) -> None:
        """The daemon passed its memory ceiling (daemon/inbound.py): drop every runner connection and every live-tail
        subscriber, and all libzmq held for them. The event socket's subscriptions are libzmq's to keep, ~5 KB per
        distinct topic (a key holder subscribing to 100,000 made it hold ~0.5 GB); followers resubscribe on their
        reconnect (libzmq's SUB does) and fill the gap from the store."""
        router = rebind(self.router, poller, lambda: bind_runners(self.zctx, self.runners_endpoint, self.max_message))
        pub = rebind(self.pub, poller, self._bind_events)
        if router is None or pub is None:  # no descriptor for a new socket: the old one serves on (inbound.rebind)
            self.log.error("could not bind a new socket to drop the connections of the old one; it goes on",
                           runners=router is not None, events=pub is not None)
        self.router = router or self.router
        if pub is not None:
            self.pub, self.live_subs = pub, LiveSubscriptions(self.count)

    def _loop(self, poller: zmq.Poller) -> None:
        stopping = False
        while not stopping or self._later:  # a stop waits for the sessions' ends still being read from spools
            self.beat = time.monotonic()
            # frames deferred last pass (runner_frames._unknown) get the next pass at once, not after a wait
            t_poll = time.perf_counter()
            busy = self._deferred or self._later
            ready = dict(poller.poll(0 if busy else self.acks.timeout_ms(time.monotonic(), 200)))
            # what the thread waits on, per pass (docs/design.md "Event path end to end"): a few counters a pass
            self.count("ingest.idle_us", int((time.perf_counter() - t_poll) * 1e6))
            self.count("ingest.passes")
            for sid in self.acks.owed(time.monotonic()):  # between batches: every cursor is committed
                self._ack(sid, resend=False)
            if not ready and not busy:
                continue
            if self.pub in ready:
                self.live_subs.take(self.pub)
            # Daemon-side items first: a session.created must be in before that session's runner events.
            items, self._later = self._later, []
            frames_list: list[list[bytes]] = []
            while len(items) < MAX_BATCH and not stopping:
                try:
                    item = self.pull.recv_pyobj(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if item[0] == "stop":
                    stopping = True
                    break
                if item[0] == "reset_inbound":  # the daemon passed its memory ceiling (daemon/inbound.py)
                    self._reset_inbound(poller)
                    continue
                items.append(item)
            self.records.begin()  # what this batch counts of max_session_record, taken back if it is processed again
            self.outcap.begin()  # ... and of the output caps' backstop
            batch = Batch()
            broken: Exception | None = None  # the store went away while the batch read from it
            deferred, self._deferred = self._deferred, []
            frames_list.extend(deferred)
            try:
                self._process(items, [], batch)
                # Runner frames are decoded and processed one at a time (a decoded batch is thousands of
                # objects: holding several at once costs GC time); the raw frames are kept in case the
                # batch must be processed again.
                nbytes = 0
                for frames in deferred:  # verified last pass; their sessions' items were just taken
                    self._process_frames(frames, batch, seen=True)
                while batch.size() < MAX_BATCH and nbytes < MAX_BATCH_BYTES:
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    nbytes += sum(len(f) for f in frames)
                    frames_list.append(frames)
                    self._process_frames(frames, batch, seen=False)
            except UNREACHABLE as exc:  # processed again, whole, once the store is back (_write)
                broken = exc
            if items or frames_list:
                t_write = time.perf_counter()
                try:
                    self._write(batch, items, frames_list, broken)
                except GivenUp:
                    # the daemon stops and the store still cannot be written: runners keep their unacknowledged
                    # events for the next daemon; this batch's daemon items (and those queued after) are lost
                    self.count("ingest.given_up_at_stop", len(items))
                    self.log.error("stopping while the store cannot be written: a batch is not recorded (runners "
                                   "keep their events for the next daemon)", daemon_items=len(items),
                                   runner_frames=len(frames_list), error=self.store_error)
                    return
                self.count("ingest.write_us", int((time.perf_counter() - t_write) * 1e6))
                self.count("ingest.batches")

    def _process(self, items: list[tuple[Any, ...]], frames_list: list[list[bytes]],
                 batch: Batch | None = None, skip: int = 0) -> Batch:
        """Process daemon items (but the first ``skip``) and (again: ``seen``) runner frames into a batch. Raises a
        store error that :func:`~labd.store.db.unreachable` says is the store's absence (it went away while an item
        read from it): the caller processes them all again later. :attr:`_items_done` counts the items processed
        (in safe mode: committed, so not to be processed again)."""
        batch = Batch() if batch is None else batch
        self._items_done = skip
        for item in items[skip:]:
            try:
                self._on_internal(item, batch)
            except Exception as exc:  # noqa: BLE001 - one bad item must not stop the writer
                if unreachable(exc):  # the store, not the item: processed again once it is back (_write)
                    raise
                self.count("dropped.internal.error")
                self.log.exception("daemon item dropped", op=str(item[0]))
            self._items_done += 1
        for frames in frames_list:
            self._process_frames(frames, batch, seen=True)
        return batch

    def _cap_and_chars(self, sid: str) -> tuple[int | None, int]:
        """A session's output cap and what its run has had accepted, as its cursor holds them (the backstop's
        first sight of it: daemon/outputcap.py)."""
        cur = self.cursors.get(sid)
        return (None, 0) if cur is None else (cur.output_cap, cur.output_chars)

    def _stage(self, cur: SessionCursor, ts: float, kind: str, src: str, src_seq: int | None,
               node_id: str | None, parent: int | None, payload: dict[str, Any], b: Batch) -> None:
        changes, notes = b.changes, b.notes
        seq = cur.last_seq + 1
        if kind == "file.shipped":  # a remote runner's file: the bytes go to the work directory, not the store
            payload = receive_shipped(self.sessions_dir, cur.id, payload)
        elif kind == "checkpoint.object":  # ... and its checkpoints' objects to the session's object store
            payload = receive_object(self.sessions_dir, cur.id, payload)
            if "error" in payload and payload.get("last"):  # not kept (its last chunk says so, whichever failed):
                # the runner ships it again if its node still has it, and the files made of it
                b.to_runners.append((cur.id, "objects.missing", {"names": [str(payload.get("name"))[:200]]}))
        nb = len(changes.blobs)
        payload = take_blobs(cur.id, seq, ts, payload, changes)  # full-fidelity texts -> blobs table
        text = orjson.dumps(payload, default=repr).decode()  # first: a TypeError here has changed nothing
        edges = payload.get("edges")  # each a row of the DAG's table: charged as stored, not as sent (~16 bytes)
        if src == "r" and kind not in CAPPED and self.records.add(  # labd's own kinds: daemon/recordcap.py
                cur.id, len(text) + sum(blob["size"] for blob in changes.blobs[nb:])
                + (EDGE_ROW_BYTES * len(edges) if isinstance(edges, list) else 0)):
            notes.append(("record", cur.id, *self.records.usage(cur.id)))
        self.index_hints.staged(cur.id, seq, kind)  # before the commit (store.search.IndexHints)
        if kind in PROJECTED:
            was = cur.status
            apply(cur, seq, ts, kind, src, node_id, payload, changes)
            if kind == "cost.recorded" and cur.budget is not None and cur.cost > cur.budget and not cur.budget_hit:
                cur.budget_hit = True
                notes.append(("budget", cur.id, cur.cost, cur.budget))
            elif kind == "approval.requested":
                notes.append(("approval", cur.id, payload["approval_id"], payload.get("timeout"),
                              payload.get("policy")))
            elif kind == "session.continued" and cur.status == "queued" and was != "queued":
                # a new run: a key of its own (the last run's key, copied out, signs nothing in it)
                self.run_seqs[cur.id] = seq
                self._runner_codecs.pop(cur.id, None)
            elif kind == "session.ended":
                b.ended.add(cur.id)
                # finalize() wrote the session's status and reason into the payload: store what clients are
                # told, not what arrived (the only projection that changes its event)
                text = orjson.dumps(payload, default=repr).decode()
        else:
            cur.last_seq = seq
        b.stage_row(cur.id, seq, ts, kind, src, seq if src_seq is None else src_seq, node_id, parent, text)
        if self._is_live(cur.id):  # what clients see live is exactly the stored text, encoded once
            b.pub.setdefault(cur.id, LiveEvents()).add(len(text), [seq, ts, kind, src, node_id, parent, Fragment(text),
                                                                 seq if src_seq is None else src_seq])

    def _is_live(self, sid: str) -> bool:
        return self.live_subs.follows(sid)
