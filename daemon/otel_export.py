"""OpenTelemetry export (opt-in): the record, sent as spans to an OTLP/HTTP collector.

``[telemetry] otlp_endpoint = "http://127.0.0.1:4318"`` turns it on. A thread of the daemon reads the store —
never the live stream — and sends the spans that :mod:`labd.daemon.otel_spans` maps from each session's events,
encoded by the OpenTelemetry SDK's OTLP encoder and posted by :mod:`labd.daemon.otel_http` (bounded: a deadline
per request, a capped answer, a redirect is no success). Its cursor (per session: the last seq whose spans the
collector acknowledged) lives in ``<home>/otel-export.db`` (:mod:`labd.daemon.otel_cursor`), committed after
each acknowledged batch. So a collector outage loses nothing (the cursor does not move; the next pass sends the
same spans), a daemon restart resumes where the last acknowledged batch ended, and nothing is sent twice unless a
collector stored a batch but its reply was lost — and then the span ids are the same (deterministic), so the
collector sees the same spans again, not new ones.

The cursor moves after each acknowledged batch, past the events all of whose spans it held. A batch whose
encoding is over :data:`MAX_BATCH_BYTES`, or that the collector answers 413, is split in halves. One the collector
answers 400 is checked by an empty request: if that is refused too, the collector refuses everything (a proxy in
front of it answering bad credentials so), which is a failure to retry; else the batch is split down to the spans
refused, which are left out (counted as skipped: sent again they would be refused again). While the collector fails, the
passes wait for its ``Retry-After``, else twice as long each time, up to :data:`MAX_BACKOFF_S`.

A span that cannot be sent — its event's own time is not a time, or the collector's encoder refuses it — is
skipped and counted (``skipped``, ``telemetry.skipped_spans`` in ``daemon.status``), never retried: one bad event
must not hold back the spans after it, nor any other session's (:mod:`labd.daemon.otel_spans` clamps what it
can: a start that is not a time becomes the end, an out-of-range int attribute is left out).

Sessions are exported oldest first. A pass reads every session's ``last_seq`` once a minute (the first pass
too), and in between only the sessions that are live, ended since the previous pass, or left with spans unsent:
a session resumed long after it ended is live again and goes on from its cursor, its second end a ``session``
span of its own (``session@<seq>``).
"""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy import Engine, func, select

from labd.daemon.otel_cursor import ExportCursor
from labd.daemon.otel_http import OtlpHttp, TlsFiles
from labd.daemon.otel_spans import CLOSERS, MAX_TIME, SpanRecord, span_id, spans_from_events, trace_id
from labd.store.growth import GrowthScan
from labd.store.schema import events, sessions, steps

__all__ = ["OtelExporter"]

BATCH_SPANS = 512
MAX_BATCH_BYTES = 4 << 20  # a batch encoded larger is split (collectors refuse bodies past 4-20 MiB)
MAX_BACKOFF_S = 60.0  # the longest wait between passes while the collector fails (without a Retry-After)
PAGE_EVENTS = 2000
PAGE_BYTES = 32 << 20  # payload read per page, past its first event (a page is decoded whole)


class OtelExporter(threading.Thread):
    """Sends spans for every session's record to an OTLP/HTTP endpoint, resuming from its cursor file."""

    def __init__(self, engine: Engine, endpoint: str, cursor_file: Path, *, service_name: str = "labd",
                 interval: float = 2.0, headers: dict[str, str] | None = None, timeout: float = 10.0,
                 tls: TlsFiles | None = None, gzip: bool = False) -> None:
        super().__init__(name="labd-otel", daemon=True)
        from opentelemetry.sdk.resources import Resource

        url = endpoint.rstrip("/")
        self.http = OtlpHttp(url if url.endswith("/v1/traces") else f"{url}/v1/traces", headers, timeout, tls=tls,
                             gzip=gzip)
        self.resource = Resource.create({"service.name": service_name})
        self.engine = engine
        self.interval = interval
        self.log = structlog.get_logger("labd.otel")
        self._halt = threading.Event()
        self.exported = 0  # spans acknowledged by the collector (for status/tests)
        self.failures = 0
        self.skipped = 0  # spans that could not be made or sent, left out for good (for status/tests)
        self.last_error: str | None = None  # why the last batch that failed did (None once one is taken again)
        self._wait = interval  # until the next pass: longer while the collector fails (Retry-After, backoff)
        self.cursor = ExportCursor(cursor_file, engine, legacy=cursor_file.with_name("otel-export.json"))
        self.scan = GrowthScan()  # which sessions' records may have grown (store/growth.py)
        self._behind: set[str] = set()  # sessions a pass left with spans unsent (the collector failed)

    # ---- the loop -------------------------------------------------------------------------------
    def stop(self) -> None:
        self._halt.set()
        self.http.close()  # a request in progress ends now, not at its deadline

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.export_pass()
            except Exception:  # noqa: BLE001 - the exporter must never take the daemon down
                self.failures += 1
                self.log.exception("telemetry export pass failed")
            self._halt.wait(self._wait)
        self.cursor.close()

    def export_pass(self) -> bool:
        """One pass over sessions with unexported events, oldest first; returns False when the collector refused
        a batch. Reads every session's ``last_seq`` about once a minute (the first pass too), else
        only the sessions that are live, ended since the previous pass, or left behind by it: a session resumed
        long after it ended is live again, and goes on from its cursor."""
        with self.engine.connect() as conn:
            rows, full = self.scan.read(conn, sessions.c.id, sessions.c.last_seq, sessions.c.created_at,
                                        also=self._behind)
        if full:
            gone = self.cursor.known() - {sid for sid, _, _ in rows}
            self.cursor.forget(gone)  # deleted sessions (labd rm, retention)
        todo = sorted((created, sid) for sid, last, created in rows if last > self.cursor.get(sid))
        self._behind = {sid for _, sid in todo}
        for _, sid in todo:
            if self._halt.is_set():
                return False
            with self.engine.connect() as conn:
                row = conn.execute(select(sessions).where(sessions.c.id == sid)).mappings().first()
            if row is None:
                self._behind.discard(sid)
                continue
            if not self._export_session(dict(row)):
                return False
            self._behind.discard(sid)
        self._wait = self.interval  # a whole pass went through: the backoff is over
        return True

    def _export_session(self, session: dict[str, Any]) -> bool:
        sid = session["id"]
        since = self.cursor.get(sid)
        upto = session["last_seq"]
        while since < upto:
            with self.engine.connect() as conn:
                page_end, evs = self._page(conn, sid, since, upto)
                if any(ev["kind"] == "session.ended" for ev in evs):  # a resumed session ends again: its own span
                    session["first_end_seq"] = conn.execute(select(func.min(events.c.seq)).where(
                        events.c.session_id == sid, events.c.kind == "session.ended")).scalar()
                spans = spans_from_events(session, evs, lambda nid: self._node(conn, sid, nid),
                                          lambda src_seq, before: self._opener(conn, sid, src_seq, before),
                                          skipped=lambda ev, why: self._skip(sid, ev.get("seq"), why))
            for start in range(0, len(spans), BATCH_SPANS):
                if not self._send(spans[start:start + BATCH_SPANS]):
                    return False
                # Past every event whose spans are all acknowledged now: a batch that fails later does not send
                # these again (a collector taking three batches of four then refusing the fourth was sent the
                # first three over and over)
                after = start + BATCH_SPANS
                if after < len(spans) and not self._moved(sid, spans[after].seq - 1):
                    return False
            since = page_end
            if not self._moved(sid, since):
                return False
        return True

    def _moved(self, sid: str, seq: int) -> bool:
        """Move the cursor; False (a failure, as the collector's: the passes back off) when it cannot be written
        (a full disk): the spans since the last move are sent again later, not every ``interval`` for ever."""
        try:
            self.cursor.move(sid, seq)
            return True
        except (sqlite3.Error, OSError) as exc:
            self._failed(f"the export's progress cannot be recorded ({self.cursor.path.name}): {exc}"[:300], None)
            return False

    @staticmethod
    def _page(conn: Any, sid: str, since: int, upto: int) -> tuple[int, list[dict[str, Any]]]:
        """``(the seq the page ends at, its span-closing events)`` after ``since``: at most :data:`PAGE_EVENTS`
        events and, past the first, :data:`PAGE_BYTES` of payload (400 code runs of a megabyte of output each held
        the daemon at 866 MB: a page is read whole)."""
        closers = (events.c.session_id == sid, events.c.seq > since, events.c.seq <= upto, events.c.kind.in_(CLOSERS))
        heads = conn.execute(select(events.c.seq, func.length(events.c.payload)).where(*closers)
                             .order_by(events.c.seq).limit(PAGE_EVENTS)).all()
        if not heads:
            return upto, []
        total, count = 0, 0
        for _, size in heads:
            if count and total + (size or 0) > PAGE_BYTES:
                break
            total += size or 0
            count += 1
        last = heads[count - 1][0]
        end = upto if count == len(heads) < PAGE_EVENTS else last
        rows = conn.execute(select(events.c.seq, events.c.ts, events.c.kind, events.c.node_id, events.c.parent,
                                   events.c.payload).where(*closers, events.c.seq <= last)
                            .order_by(events.c.seq)).all()
        return end, [{"seq": r[0], "ts": r[1], "kind": r[2], "node_id": r[3], "parent": r[4],
                      "payload": orjson.loads(r[5])} for r in rows]

    @staticmethod
    def _node(conn: Any, sid: str, nid: str) -> dict[str, Any] | None:
        row = conn.execute(select(steps).where(steps.c.session_id == sid, steps.c.node_id == nid)).mappings().first()
        return dict(row) if row else None

    @staticmethod
    def _opener(conn: Any, sid: str, src_seq: int, before: int) -> dict[str, Any] | None:
        """The runner event with ``src_seq`` (a request, a call) before seq ``before``: looked for backwards from
        there along the key (``src_seq`` has no index, and an opener is usually just before what it opens: a
        search from the start made a long session's export quadratic)."""
        row = conn.execute(select(events.c.ts, events.c.kind).where(
            events.c.session_id == sid, events.c.seq < before, events.c.src == "r", events.c.src_seq == src_seq)
            .order_by(events.c.seq.desc()).limit(1)).first()
        return {"ts": row[0], "kind": row[1]} if row else None

    def _skip(self, sid: str, what: Any, why: BaseException) -> None:
        """Count (and log) a span left out for good: the cursor moves past it."""
        self.skipped += 1
        self.log.warning("telemetry: span skipped", session=sid, span=what, error=str(why)[:300])

    def _send(self, records: list[SpanRecord]) -> bool:
        """Send one batch; True once the collector took it (or what of it can never be taken was left out),
        False to try again later (the cursor stays before it)."""
        spans = []
        for r in records:
            try:
                spans.append(self._to_otel(r))
            except (ValueError, TypeError, OverflowError) as exc:
                self._skip(r.session_id, r.key, exc)
        return self._post(spans) if spans else True

    def _post(self, spans: list[Any], checked: bool = False) -> bool:
        """Send encoded ``spans``, split when too large; ``checked``: the collector took an empty request since a
        400 (so a 400 now is about these spans)."""
        body = self._encode(spans)
        if body is None:  # a span the encoder refuses: left out, the rest sent
            spans, _ = self._encodable(spans)
            body = self._encode(spans) if spans else b""
            if not spans or body is None:
                return True
        if len(body) > MAX_BATCH_BYTES and len(spans) > 1:  # a collector's request limit (4 MiB gRPC, 20 MiB HTTP)
            return self._halves(spans, checked)
        answer = self.http.post(body)
        if answer.outcome in ("too_large", "reset") and len(spans) > 1:
            return self._halves(spans, checked)
        if answer.outcome == "refused" and not checked:
            # A 400 about the batch, or about every request? An empty request is valid OTLP that a collector takes:
            # refused too, it is the collector (a proxy answering bad credentials with 400 had every span skipped)
            probe = self.http.post(b"")
            if probe.outcome != "ok":
                self._failed(f"{answer.message}; an empty request was refused too ({probe.message or probe.outcome}): "
                             "the collector refuses every request, the spans wait for it", probe.retry_after,
                             spans=len(spans))
                return False
            checked = True
        if answer.outcome == "refused" and len(spans) > 1:  # only the spans it refuses are left out
            return self._halves(spans, checked)
        if answer.outcome in ("too_large", "refused"):  # never taken, however often sent: left out, counted
            for sp in spans:
                self._skip(str(sp.attributes.get("labd.session.id", "?")), sp.name, ValueError(answer.message))
            return True
        if answer.outcome == "ok":
            self.exported += len(spans) - min(answer.rejected, len(spans))
            if answer.rejected:
                self.skipped += min(answer.rejected, len(spans))
                self.log.warning("telemetry: the collector rejected spans of a batch", rejected=answer.rejected,
                                 spans=len(spans))
            self.last_error = None
            return True
        self._failed(answer.message, answer.retry_after, spans=len(spans))
        return False

    def _halves(self, spans: list[Any], checked: bool) -> bool:
        """Send ``spans`` as two batches, the second only once the first is through."""
        half = len(spans) // 2
        return self._post(spans[:half], checked) and self._post(spans[half:], checked)

    def _failed(self, why: str, retry_after: float | None, **fields: Any) -> None:
        """Count a failed batch; the next pass after ``retry_after`` (the collector's), else twice the last wait (up
        to :data:`MAX_BACKOFF_S`)."""
        self.failures += 1
        self.last_error = why
        wait = retry_after if retry_after is not None else min(max(self._wait * 2, self.interval), MAX_BACKOFF_S)
        self._wait = max(wait, self.interval)
        self.log.warning("telemetry export failed; will retry", error=why, retry_in_s=round(self._wait, 1), **fields)

    @staticmethod
    def _encode(spans: list[Any]) -> bytes | None:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        try:
            return encode_spans(spans).SerializeToString()  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - whatever the encoder raises, the batch cannot be sent as it is
            return None

    def _to_otel(self, r: SpanRecord) -> Any:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        tid = trace_id(r.session_id)
        ctx = SpanContext(tid, span_id(r.session_id, r.key), is_remote=False, trace_flags=TraceFlags(1))
        parent = SpanContext(tid, span_id(r.session_id, r.parent_key), is_remote=False,
                             trace_flags=TraceFlags(1)) if r.parent_key else None
        status = Status(StatusCode.ERROR, r.error) if r.error else Status(StatusCode.OK)
        return ReadableSpan(r.name, context=ctx, parent=parent, resource=self.resource, attributes=r.attributes,
                            kind=SpanKind.CLIENT if r.kind == "client" else SpanKind.INTERNAL, status=status,
                            start_time=_nanos(r.start), end_time=_nanos(max(r.end, r.start)))

    def _encodable(self, spans: list[Any]) -> tuple[list[Any], int]:
        """``(the spans that encode, how many did not)``; those that do not are counted as skipped."""
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        def encodes(batch: list[Any]) -> bool:
            try:
                encode_spans(batch).SerializePartialToString()
                return True
            except Exception:  # noqa: BLE001 - whatever the encoder raises, the batch cannot be sent
                return False

        if encodes(spans):
            return spans, 0
        good = []
        for sp in spans:
            if encodes([sp]):
                good.append(sp)
            else:
                self._skip(str(sp.attributes.get("labd.session.id", "?")), sp.name, ValueError("cannot be encoded"))
        return good, len(spans) - len(good)


def _nanos(t: float) -> int:
    """Seconds since the epoch as OTLP's nanoseconds; ValueError for a time that has none (NaN, inf, negative,
    past :data:`~labd.daemon.otel_spans.MAX_TIME`)."""
    if not (math.isfinite(t) and 0.0 <= t <= MAX_TIME):
        raise ValueError(f"span time {t!r} is not a time in seconds since the epoch")
    return int(t * 1e9)
