"""OpenTelemetry export: sessions, steps, agent turns, LLM calls, tool calls and code runs reach a real OTLP/HTTP
receiver (served by the test) as spans with the right parents and gen_ai.* attributes; a receiver that is down
and comes back gets every span exactly once; a daemon restart resumes from the cursor."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import running_daemon, wait_until

pytestmark = pytest.mark.timeout(240)


class Receiver:
    """A real OTLP/HTTP endpoint on loopback: decodes every POST /v1/traces and keeps the spans."""

    def __init__(self, port: int = 0) -> None:
        self.spans: list[dict[str, Any]] = []
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            attrs = {a.key: _value(a.value) for a in sp.attributes}
                            outer.spans.append({"name": sp.name, "trace": sp.trace_id.hex(), "id": sp.span_id.hex(),
                                                "parent": sp.parent_span_id.hex(), "attrs": attrs,
                                                "service": service, "status": sp.status.code,
                                                "start": sp.start_time_unix_nano, "end": sp.end_time_unix_nano})
                outer.posts += 1
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, sid_trace: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["attrs"].get("labd.session.id") == sid_trace]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(home: Path, port: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{port}"\nservice_name = "labd-test"\ninterval = 0.2\n')


def _expected(c: Any, sid: str) -> Counter[str]:
    """Span counts the record implies: 1 session, one per finished node, LLM response, tool result, code run."""
    kinds = Counter(e["kind"] for e in c.history(sid))
    return Counter({"session": 1, "node": kinds["step.finished"] + kinds["agent.turn.finished"],
                    "chat": kinds["llm.response"], "tool": kinds["tool.result"], "code": kinds["code.execution"]})


def _got(spans: list[dict[str, Any]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in spans:
        if s["name"].startswith("session "):
            out["session"] += 1
        elif s["name"].startswith("chat "):
            out["chat"] += 1
        elif s["name"].startswith("execute_tool "):
            out["tool"] += 1
        elif s["name"] == "run_code":
            out["code"] += 1
        else:
            out["node"] += 1
    return out


def test_an_agent_session_is_exported_as_a_span_tree_with_genai_attributes(isolated_env: Path) -> None:
    """planning_and_control on the offline model: every span arrives once, in one trace, each parent is a span
    of the trace (or none, for the session), and LLM spans carry gen_ai.* attributes and token counts."""
    rx = Receiver()
    _config(isolated_env, rx.port)
    try:
        with running_daemon(isolated_env) as d, d.client() as c:
            sid = c.start("planning_and_control", params={"task": "Step 1 of 2: fit. Step 2 of 2: plot"})
            assert c.wait(sid, timeout=90)["status"] == "completed"
            want = _expected(c, sid)
            wait_until(lambda: _got(rx.of(sid)) == want, timeout=30, what=f"spans {want}")
            # the exporter counts a batch once the collector answered it: after the spans arrived here
            status = wait_until(lambda: (lambda st: st if st["telemetry"]["exported_spans"] >= len(rx.of(sid))
                                         else None)(c.status()), timeout=30, what="the exporter's count")
            assert d.stop() == 0, d.log()[-2000:]  # the exporter thread stops cleanly with the daemon
        spans = rx.of(sid)
        assert len({s["id"] for s in spans}) == len(spans)  # none twice
        assert len({s["trace"] for s in spans}) == 1
        ids = {s["id"] for s in spans}
        roots = [s for s in spans if not s["parent"] or set(s["parent"]) == {"0"}]
        assert [r["name"] for r in roots] == ["session planning_and_control"]
        assert all(s["parent"] in ids for s in spans if s not in roots)
        chat = [s for s in spans if s["name"].startswith("chat ")]
        assert chat and all(s["attrs"]["gen_ai.system"] == "offline" and s["attrs"]["gen_ai.request.model"] ==
                            "labd-offline" and s["attrs"]["gen_ai.usage.input_tokens"] > 0 and
                            s["attrs"]["gen_ai.conversation.id"] == sid for s in chat)
        assert all(s["service"] == "labd-test" and s["end"] >= s["start"] for s in spans)
        assert status["telemetry"]["exported_spans"] >= len(spans)
    finally:
        rx.close()


def test_a_receiver_outage_loses_nothing_and_duplicates_nothing(isolated_env: Path) -> None:
    """The collector is down while two sessions run and end; when it comes back on the same port, every span
    arrives, and none twice; after a daemon restart nothing already acknowledged is sent again."""
    port = _free_port()
    _config(isolated_env, port)
    with running_daemon(isolated_env) as d, d.client() as c:
        sids = [c.start("one_shot", params={"task": "Say hi"}), c.start("demo.count", params={"n": 2})]
        for sid in sids:
            assert c.wait(sid, timeout=90)["status"] == "completed"
        wait_until(lambda: c.status()["telemetry"]["failures"] > 0, timeout=30, what="export attempts fail")
        want = {sid: _expected(c, sid) for sid in sids}
        rx = Receiver(port)
        try:
            wait_until(lambda: all(_got(rx.of(s)) == want[s] for s in sids), timeout=60, what="spans after outage")
            sent = len(rx.spans)
            # the receiver holds the spans a moment before the exporter reads its answer and moves its cursor: a
            # stop in between would send the last batch again after the restart
            wait_until(lambda: c.status()["telemetry"]["exported_spans"] >= sent, timeout=30, what="answers read")
        finally:
            rx.close()
    assert len({s["id"] for s in rx.spans}) == len(rx.spans) == sent
    # A restart resumes from the cursor: the next session is exported, the old ones are not sent again.
    rx = Receiver(port)
    try:
        with running_daemon(isolated_env) as d, d.client() as c:
            new = c.start("demo.count", params={"n": 1})
            assert c.wait(new, timeout=60)["status"] == "completed"
            wait_until(lambda: _got(rx.of(new)) == _expected(c, new), timeout=30, what="new session's spans")
        assert all(s["attrs"]["labd.session.id"] == new for s in rx.spans)
    finally:
        rx.close()


def test_bad_telemetry_config_is_refused(isolated_env: Path) -> None:
    """An endpoint that is not an http(s) URL stops the daemon at start with a clear message."""
    import subprocess
    import sys

    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text('[telemetry]\notlp_endpoint = "grpc://x:4317"\n')
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(isolated_env), "serve"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "otlp_endpoint" in out.stderr
