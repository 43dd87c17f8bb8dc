"""Span times and int attributes from hostile numbers (daemon/otel_spans.py) and the exporter's handling of a span
it cannot send (daemon/otel_export.py): clamped or skipped and counted, never blocking what comes after."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from labd.daemon import otel_spans as om
from labd.daemon.otel_export import OtelExporter
from labd.daemon.otel_spans import SpanRecord, spans_from_events
from labd.store.db import migrate, open_engine
from labd.store.projections import SessionCursor
from labd.store.writer import BatchWriter
from tests.unit.test_store import CREATED, Batch

SESSION = {"id": "s1", "name": "n", "workflow": "w", "status": "completed", "created_at": 1000.0, "cost": 0.0}
CODE = {"agent": "engineer", "language": "python", "code": "print(1)", "exit_code": 0, "output": "1\n"}


def _code(seq: int, ts: Any, **payload: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": ts, "kind": "code.execution", "node_id": None, "parent": None,
            "payload": {**CODE, **payload}}


def _spans(evs: list[dict[str, Any]], skipped: list[Any] | None = None) -> list[SpanRecord]:
    more: dict[str, Any] = {} if skipped is None else {"skipped": lambda ev, why: skipped.append((ev["seq"], why))}
    return spans_from_events(SESSION, evs, lambda nid: None, lambda seq, before: None, **more)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, 1e300, 9.3e9, 10**400, True, "5", None])
def test_seconds_refuses_what_is_not_a_representable_time(value: Any) -> None:
    """NaN, infinities, negatives, times past 2261 (they do not fit 64-bit nanoseconds), ints past float's range,
    booleans, strings and None are not span times."""
    assert om.seconds(value) is None


def test_seconds_and_int_attr_keep_sane_values() -> None:
    """Ordinary times and ints pass unchanged; int attributes out of int64 range, booleans and (for token
    counts) negatives are left out."""
    assert om.seconds(1_700_000_000.5) == 1_700_000_000.5 and om.seconds(0) == 0.0
    assert om.int_attr(7) == 7 and om.int_attr(-3) == -3 and om.int_attr(2**63 - 1) == 2**63 - 1
    assert om.int_attr(2**63) is None and om.int_attr(-(2**63) - 1) is None and om.int_attr(True) is None
    assert om.int_attr(-1, minimum=0) is None and om.int_attr(1.5) is None


@pytest.mark.parametrize("duration", [1e300, -5.0, math.nan, math.inf, 10**30])
def test_a_duration_that_is_no_duration_gives_a_zero_length_span_at_the_event(duration: Any) -> None:
    """A code.execution whose duration is huge, negative, NaN or infinite is clamped: start = end = the event's
    own time, marked ``labd.time.clamped``; nothing is skipped."""
    skipped: list[Any] = []
    (span,) = _spans([_code(5, 2000.0, duration=duration)], skipped)
    assert (span.start, span.end) == (2000.0, 2000.0) and span.attributes["labd.time.clamped"] is True
    assert not skipped


def test_window_clamps_a_start_after_the_end_and_keeps_a_good_one() -> None:
    """A start after the end (clock skew) is clamped to the end; a sane start or duration is kept and not marked."""
    assert om.window(100.0, 150.0) == (100.0, 100.0, True)
    assert om.window(100.0, 40.0) == (40.0, 100.0, False)
    assert om.window(100.0, None, 2.5) == (97.5, 100.0, False)
    assert om.window(100.0) == (100.0, 100.0, False)
    (span,) = _spans([_code(5, 2000.0, duration=1.5)])
    assert (span.start, span.end) == (1998.5, 2000.0) and "labd.time.clamped" not in span.attributes


def test_an_event_whose_own_time_is_not_representable_is_skipped_and_the_rest_kept() -> None:
    """An event time ingest accepts (below 1e11 s) but OTLP cannot carry (past 2261) skips that one span, reported
    to ``skipped``; the events around it still become spans."""
    skipped: list[Any] = []
    spans = _spans([_code(1, 2000.0, duration=1.0), _code(2, 5e10, duration=1.0), _code(3, 2001.0, duration=1.0)],
                   skipped)
    assert [s.key for s in spans] == ["seq:1", "seq:3"]
    assert [seq for seq, _ in skipped] == [2]


def test_int_attributes_out_of_range_are_left_out() -> None:
    """Token counts past int64 (or negative) are not attributes; an exit code past int64 is recorded as -1."""
    llm = {"seq": 4, "ts": 2000.0, "kind": "llm.response", "node_id": None, "parent": None,
           "payload": {"agent": "a", "model": "m", "provider": "p", "offline": True, "status": "ok", "duration": 1.0,
                       "usage": {"prompt_tokens": 2**64 - 1, "completion_tokens": -4}}}
    chat, code = _spans([llm, _code(5, 2000.0, duration=1.0, exit_code=2**63)])
    assert "gen_ai.usage.input_tokens" not in chat.attributes and "gen_ai.usage.output_tokens" not in chat.attributes
    assert code.attributes["labd.code.exit_code"] == -1


def test_long_texts_are_cut() -> None:
    """A huge tool name or error text is cut, so no batch of spans can approach a collector's request limit."""
    tool = {"seq": 4, "ts": 2000.0, "kind": "tool.result", "node_id": None, "parent": None,
            "payload": {"agent": "a", "call_id": "c", "name": "t" * 100_000, "status": "error", "duration": 1.0,
                        "error": "e" * 100_000}}
    (span,) = _spans([tool])
    assert len(span.name) < 5000 and len(span.attributes["gen_ai.tool.name"]) < 5000 and len(span.error or "") < 5000


class FakeCollector:
    """Stands in for the exporter's transport (``OtlpHttp``): decodes each posted batch and takes it (answers ok),
    keeping each span's name, attributes and times."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def post(self, body: bytes) -> Any:
        from types import SimpleNamespace

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        from labd.daemon.otel_http import Answer

        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in sp.attributes}
                    self.sent.append(SimpleNamespace(name=sp.name, attributes=attrs, start_time=sp.start_time_unix_nano,
                                                     end_time=sp.end_time_unix_nano))
        return Answer("ok")

    def close(self) -> None:
        pass


def test_the_exporter_skips_and_counts_spans_it_cannot_convert_or_encode(tmp_path: Path) -> None:
    """A record whose time has no nanoseconds, and one the encoder refuses (a name that is not a string), are
    skipped and counted; the other spans of the batch are sent; nothing counts as a failure."""
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    exporter = OtelExporter(engine, "http://127.0.0.1:9", tmp_path / "otel.json")
    fake = FakeCollector()
    exporter.http = fake  # type: ignore[assignment]
    try:
        good = SpanRecord("s1", "seq:1", "run_code", 1000.0, 1001.0, "session")
        records = [good, SpanRecord("s1", "seq:2", "run_code", -1e300, 1001.0, "session"),
                   SpanRecord("s1", "seq:3", 12345, 1000.0, 1001.0, "session"),  # type: ignore[arg-type]
                   SpanRecord("s1", "seq:4", "run_code", 1000.0, 1002.0, "session")]
        assert exporter._send(records)
        assert [s.name for s in fake.sent] == ["run_code", "run_code"]
        assert (exporter.exported, exporter.skipped, exporter.failures) == (2, 2, 0)
    finally:
        engine.dispose()


def test_an_export_pass_moves_past_a_hostile_event_to_later_sessions(tmp_path: Path) -> None:
    """A session whose code.execution has ``duration: 1e300`` and one with an unrepresentable event time: the pass
    exports every other span of it and of the session created after it, counts the skip, and the cursor covers
    both sessions (nothing retried)."""
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    writer = BatchWriter(engine)
    cursors: dict[str, SessionCursor] = {}
    exporter = OtelExporter(engine, "http://127.0.0.1:9", tmp_path / "otel.json")
    fake = FakeCollector()
    exporter.http = fake  # type: ignore[assignment]
    try:
        for sid, base in (("bad", 0.0), ("later", 100.0)):
            b = Batch(cursors)
            b.add(sid, "session.created", CREATED, ts=base + 1)
            if sid == "bad":
                b.add(sid, "code.execution", {**CODE, "duration": 1e300}, src="r", ts=base + 2)
                b.add(sid, "code.execution", {**CODE, "duration": 1.0}, src="r", ts=5e10)
            b.add(sid, "code.execution", {**CODE, "duration": 0.5}, src="r", ts=base + 3)
            b.add(sid, "session.ended", {"ended_by": "runner", "exit_code": 0, "status": "completed"}, ts=base + 4)
            b.commit(writer)
        assert exporter.export_pass()
        names = sorted(s.name for s in fake.sent)
        assert names == ["run_code"] * 3 + ["session demo.count"] * 2
        clamped = [s for s in fake.sent if s.attributes.get("labd.time.clamped")]
        assert len(clamped) == 1 and clamped[0].start_time == clamped[0].end_time
        assert (exporter.skipped, exporter.failures) == (1, 0)
        assert exporter.cursor.get("bad") == 5 and exporter.cursor.get("later") == 3  # both done: nothing retried
    finally:
        writer.close()
        engine.dispose()
