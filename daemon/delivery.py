"""What ingest does once a batch is committed: publish its events on the live tail, acknowledge runners, hand
control messages to runners, tell the rest of the daemon, and forget sessions that ended.

A mixin of :class:`labd.daemon.ingest.Ingest` (on its thread, with its sockets); split from the writer loop
because it is the other half of persist-then-publish: nothing here runs before the batch's transaction committed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import zmq

from labd.daemon.acks import AckPacer
from labd.daemon.ingest_batch import Batch, LiveRun
from labd.daemon.recordcap import RecordCaps
from labd.daemon.spools import remove_spool, spool_of
from labd.ipc.wire import Codec, PayloadError
from labd.store.projections import SessionCursor

__all__ = ["Delivery"]


class Delivery:
    """After-commit delivery (mixin of the ingest thread; see the module docstring)."""

    # provided by Ingest
    pub: zmq.Socket
    pub_codec: Codec
    router: zmq.Socket
    notify: zmq.Socket
    acks: AckPacer
    records: RecordCaps
    cursors: dict[str, SessionCursor]
    routes: dict[str, bytes]
    last_seen: dict[str, float]
    sessions_dir: Path | None
    _last_resend: dict[str, float]
    _spool_at: dict[str, tuple[int, int, int]]
    _gap_at: dict[str, float]
    _gap_wait: dict[str, float]
    _runner_codecs: dict[str, Codec]
    run_seqs: dict[str, int]
    _waiting_for_hello: dict[str, list[tuple[str, dict[str, Any]]]]

    def count(self, name: str, n: int = 1) -> None:
        raise NotImplementedError

    def _codec_for(self, session_id: str) -> Codec:
        raise NotImplementedError

    def _send_batch(self, batch: Batch) -> None:
        for sid, evs in batch.pub.items():  # persisted: now publish, in seq order (runs and per-event items)
            for chunk in evs.messages():
                try:
                    if isinstance(chunk, LiveRun):  # a runner frame's events as it sent them: spliced, O(1) here
                        frames = self.pub_codec.pack_run(sid, chunk.offset, chunk.span)
                    else:
                        frames = self.pub_codec.pack("events", {"session": sid, "events": chunk})
                except PayloadError:  # too deep to wrap in a message: clients fill the gap from the store
                    self.count("dropped.pub.unencodable")
                    continue
                self.pub.send_multipart([f"session.{sid}".encode(), *frames])
        now = time.monotonic()
        for sid, (_identity, resend, prompt) in batch.acks.items():
            if self.acks.now_or_later(sid, now, prompt or resend):
                self._ack(sid, resend)
        for sid, type_, body in batch.to_runners:  # e.g. an approval's resolution, now that it is durable
            self._to_runner(sid, type_, body, queue=True)
        for note in batch.notes:
            self.notify.send_pyobj(note)
        for sid in batch.ended:  # nothing more will change for it: free its memory
            self.cursors.pop(sid, None)
            self._last_resend.pop(sid, None)
            self.acks.forget(sid)
            self.records.forget(sid)
            self._spool_at.pop(sid, None)
            self._gap_at.pop(sid, None)
            self._gap_wait.pop(sid, None)
            self._runner_codecs.pop(sid, None)
            self.run_seqs.pop(sid, None)
            self.routes.pop(sid, None)
            # per-session entries kept for weeks of uptime would grow with every session ever run; and a control
            # message still waiting for a hello belongs to the run that ended (a resumed run must not get it)
            self.last_seen.pop(sid, None)
            self._waiting_for_hello.pop(sid, None)
            if self.sessions_dir is not None:  # its events are committed: the spool has served
                remove_spool(spool_of(self.sessions_dir, sid))

    def _ack(self, sid: str, resend: bool) -> None:
        """Tell a runner which ``src_seq`` ingest expects next (everything before it is committed)."""
        cur = self.cursors.get(sid)
        if cur is not None:
            self.count("acks.sent")
            self._to_runner(sid, "ack", {"next": cur.runner_seq + 1, "resend": resend}, queue=False)

    def _to_runner(self, sid: str, type_: str, body: dict[str, Any], *, queue: bool) -> None:
        """Send to a session's runner; a control message for a runner that is not connected (yet) waits for
        its hello."""
        identity = self.routes.get(sid)
        try:
            if identity is None:
                raise zmq.ZMQError(zmq.EHOSTUNREACH)
            self.router.send_multipart([identity, *self._codec_for(sid).pack(type_, body)], zmq.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH (ROUTER_MANDATORY) or a full pipe
            if queue:
                self._waiting_for_hello.setdefault(sid, []).append((type_, body))
