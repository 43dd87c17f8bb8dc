"""`labd ui`'s live streams, as a tab left open for days sees them: an idle stream costs the daemon nothing (it was
a new client and a request every 0.3 s per tab), new events still arrive at once, and the stream goes on, each
event once and in order, across a daemon restart.

The request counts come from the dashboard's own process: the app (``build_app``) is served by uvicorn in a thread
of the test, and every request its SDK clients send is counted (the daemon keeps no count of the requests it
serves). The restart test runs the real `labd ui` process."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, wait_until
from tests.integration.test_ui_robust import running_ui
from tests.support.procmem import memory_mb

pytestmark = pytest.mark.timeout(180)


class DaemonRequests:
    """What the dashboard asked the daemon: ``events.query`` requests for one session's events (a stream's store
    reads) and clients built (each one a connection set up), counted in the SDK's :class:`~labd.ipc.Client`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from labd.ipc.client import Client

        self.sid: str | None = None
        self.reads = 0
        self.clients = 0
        self._lock = threading.Lock()
        request, init = Client.request, Client.__init__

        def counted_request(client: Any, type_: str, **body: Any) -> Any:
            if type_ == "events.query" and body.get("session") == self.sid:
                with self._lock:
                    self.reads += 1
            return request(client, type_, **body)

        def counted_init(client: Any, *args: Any, **kwargs: Any) -> None:
            with self._lock:
                self.clients += 1
            init(client, *args, **kwargs)

        monkeypatch.setattr(Client, "request", counted_request)
        monkeypatch.setattr(Client, "__init__", counted_init)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.reads, self.clients


@dataclass
class Message:
    """One message of a Server-Sent Events stream, and the dashboard's request counts when it was read."""

    event: str = "message"
    id: int | None = None
    data: Any = None
    counts: tuple[int, int] = (0, 0)


@dataclass
class StreamReader:
    """A tab's live stream, read in a thread with urllib as the page reads it (the token as a Bearer header)."""

    url: str
    token: str
    counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
    messages: list[Message] = field(default_factory=list)

    def start(self) -> StreamReader:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        req = urllib.request.Request(self.url, headers={"Authorization": f"Bearer {self.token}"})
        msg = Message()
        with urllib.request.urlopen(req, timeout=120) as r:
            for raw in r:
                line = raw.decode().rstrip("\n")
                if not line:
                    if msg.data is not None:
                        msg.counts = self.counts()
                        self.messages.append(msg)
                    msg = Message()
                elif line.startswith("event: "):
                    msg.event = line[7:]
                elif line.startswith("id: "):
                    msg.id = int(line[4:])
                elif line.startswith("data: "):
                    msg.data = json.loads(line[6:])

    def events(self) -> list[dict[str, Any]]:
        return [m.data for m in list(self.messages) if m.event == "message"]

    def output(self, text: str) -> Message | None:
        """The first event whose output holds ``text``."""
        for m in list(self.messages):
            if m.event == "message" and m.data["kind"] == "output" and text in m.data["payload"].get("text", ""):
                return m
        return None

    def named(self, event: str) -> list[Message]:
        return [m for m in list(self.messages) if m.event == event]


@contextmanager
def dashboard_in_process(home: Path) -> Iterator[tuple[str, str]]:
    """The dashboard app served by uvicorn in a thread of this process: (base URL, token)."""
    import uvicorn

    from labd.frontends.ui.server import build_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port_ref = [sock.getsockname()[1]]
    token = secrets.token_urlsafe(16)
    server = uvicorn.Server(uvicorn.Config(build_app(str(home), token, port_ref, lambda: server.should_exit),
                                           log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, what="the dashboard serving")
        yield f"http://127.0.0.1:{port_ref[0]}", token
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _gap_free(reader: StreamReader, daemon: DaemonProc, sid: str) -> list[int]:
    """The seqs the stream sent: each stored event of the session once, in order (checked); returned."""
    seqs = [ev["seq"] for ev in reader.events()]
    with daemon.client() as c:
        stored = [ev["seq"] for ev in c.history(sid)]
    assert seqs == stored, f"sent {len(seqs)} events, stored {len(stored)}; missing " \
                           f"{sorted(set(stored) - set(seqs))[:10]}, repeated {len(seqs) - len(set(seqs))}"
    return seqs


def test_an_idle_open_stream_does_not_make_the_daemon_serve_a_request_per_poll(daemon: DaemonProc,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """While its session is quiet (8 s between two lines of output), an open stream reads the store a few times at
    most and builds no new client; the next line still arrives, then the end, each event once. Before, the stream
    polled: a new client (connection, key set-up) and an ``events.query`` every 0.3 s, ~26 in that spell."""
    asks = DaemonRequests(monkeypatch)
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 2, "delay": 8})
    asks.sid = sid
    with dashboard_in_process(daemon.home) as (base, token):
        reader = StreamReader(f"{base}/api/sessions/{sid}/stream", token, asks.snapshot).start()
        second = wait_until(lambda: reader.output("count 2/2"), timeout=60, what="the second line streamed")
        first = reader.output("count 1/2")
        assert first is not None
        reads, clients = second.counts[0] - first.counts[0], second.counts[1] - first.counts[1]
        # quiet checks of the store after the live tail goes quiet: 1 s, then 2, 4, ... apart (3 in 8 s)
        assert reads <= 6, f"{reads} store reads in 8 quiet seconds: the stream polls"
        assert clients <= 1, f"{clients} clients built in 8 quiet seconds: a connection set up per poll"
        wait_until(lambda: reader.named("end"), timeout=60, what="the stream's end")
        _gap_free(reader, daemon, sid)


def test_an_event_long_after_the_last_reaches_an_idle_stream_at_once(daemon: DaemonProc,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream idle for a while (its quiet checks of the store 8 s and more apart by then) sends a new event as it
    is written, from the live tail, not at its next check: a session stopped from elsewhere shows its end within
    seconds."""
    asks = DaemonRequests(monkeypatch)
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 600})
    asks.sid = sid
    with dashboard_in_process(daemon.home) as (base, token):
        reader = StreamReader(f"{base}/api/sessions/{sid}/stream", token, asks.snapshot).start()
        wait_until(lambda: reader.output("sleeping"), timeout=60, what="the session's first line streamed")
        start = asks.snapshot()[0]
        # the initial read, then checks 1, 3, 7 and 15 s after it (the next one 16 s later): counted, not slept
        wait_until(lambda: asks.snapshot()[0] >= start + 4, timeout=60, what="the stream's quiet checks")
        with daemon.client() as c:
            c.stop(sid)
        wait_until(lambda: reader.named("end"), timeout=10, what="the end streamed before the next quiet check")
        _gap_free(reader, daemon, sid)


def test_a_stream_goes_on_across_a_daemon_restart_each_event_once(daemon: DaemonProc, tmp_path: Path) -> None:
    """The daemon stopped (``labd shutdown``) and started again while a session runs and a tab streams it: the
    stream says the daemon is gone (``event: error``), then ``event: resumed`` once the new daemon answers, and
    goes on to the session's end with every event once, in order (the events written meanwhile included), and
    `labd ui` logs no traceback."""
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 40, "delay": 0.25})
    with running_ui(daemon.home, tmp_path / "ui-stderr.log") as ui:
        reader = StreamReader(f"{ui.base}/api/sessions/{sid}/stream", ui.token).start()
        wait_until(lambda: reader.output("count 3/40"), timeout=60, what="the stream under way")
        daemon.stop()
        wait_until(lambda: reader.named("error"), timeout=30, what="the stream saying the daemon is gone")
        assert reader.named("error")[0].data["code"] == "no_daemon"
        daemon.start()
        wait_until(lambda: reader.named("end"), timeout=120, what="the stream's end")
        order = [m.event for m in reader.messages]
        assert "resumed" in order[order.index("error"):], order
        seqs = _gap_free(reader, daemon, sid)
        assert reader.output("count 40/40") is not None and seqs == list(range(1, len(seqs) + 1))
        logged = ui.stderr()
    assert "Traceback" not in logged and "Exception in ASGI application" not in logged, logged


@pytest.mark.timeout(300)
def test_a_stream_whose_client_stops_reading_holds_bounded_memory_and_misses_nothing(daemon: DaemonProc,
                                                                                      tmp_path: Path) -> None:
    """A client that stops reading its stream (a frozen tab, a slow link) while the session prints ~120 MB: `labd
    ui` holds a bounded number of the live tail's messages for it (its SUB socket's high-water mark) and drops the
    rest, instead of queueing all of them (the mark was 100,000 messages of up to 256 KiB: RSS grew by about what
    the session printed, 610 MB for 600 MB, and stayed). Once the client reads again the stream sends every event
    once and in order, the dropped ones read from the store, and ends."""
    import http.client

    with running_ui(daemon.home, tmp_path / "ui-stderr.log") as ui:
        proc, port, token = ui.proc, ui.port, ui.token
        with daemon.client() as c:
            sid = c.start("demo.chatty", params={"lines": 600_000, "width": 200})
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes block soon
        s.connect(("127.0.0.1", port))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.sock = s
        conn.request("GET", f"/api/sessions/{sid}/stream", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        before = memory_mb(proc.pid)
        peak = [before]

        def ended() -> bool:  # and the dashboard's memory meanwhile, while the client reads nothing
            peak[0] = max(peak[0], memory_mb(proc.pid))
            with daemon.client() as c:
                return c.session(sid)["status"] in ("completed", "failed", "cancelled", "lost")

        wait_until(ended, timeout=180, interval=0.25, what="the session's end")
        assert peak[0] - before < 60, f"`labd ui` grew from {before} to {peak[0]} MB for one stalled stream"

        seqs, end = [], False
        for raw in resp:  # the client reads again: every event, then the end
            if raw.startswith(b"id: "):
                seqs.append(int(raw[4:]))
            elif raw.startswith(b"event: end"):
                end = True
                break
        conn.close()
        with daemon.client() as c:
            last = c.session(sid)["last_seq"]
        assert end and seqs == list(range(1, last + 1)), (len(seqs), last, seqs[:5], seqs[-5:])
        logged = ui.stderr()
    assert "Traceback" not in logged, logged


def test_a_stream_of_a_session_deleted_meanwhile_ends_instead_of_erring(daemon: DaemonProc,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A tab that had every event of an ended session but its end (it resumes after the last seq it got) and whose
    session is then deleted (``labd rm``, retention): its stream ends, and the page, reconnecting, gets the 404 of a
    session that is not there. Before, the stream sent ``event: error`` (not_found) every 2 s for as long as the tab
    stayed open."""
    asks = DaemonRequests(monkeypatch)
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 1, "delay": 0})
        wait_until(lambda: c.session(sid)["status"] == "completed", timeout=60, what="the session's end")
        last = list(c.history(sid))[-1]["seq"]
    asks.sid = sid
    with dashboard_in_process(daemon.home) as (base, token):
        reader = StreamReader(f"{base}/api/sessions/{sid}/stream?since={last}", token, asks.snapshot).start()
        wait_until(lambda: asks.snapshot()[0] >= 1, timeout=30, what="the stream's first store read")
        with daemon.client() as c:
            c.rm(sid)
        wait_until(lambda: not reader.thread.is_alive(), timeout=30, what="the stream of a deleted session ending")
        assert len(reader.named("error")) <= 1, reader.messages


def test_a_stream_opened_by_an_id_prefix_follows_that_session_only(daemon: DaemonProc) -> None:
    """A page opened at an id prefix (``#/s/7``, as the README allows any unique prefix) streams that session only.
    The stream subscribed to the live tail with the text given, and ZeroMQ topics match by prefix: once another
    session whose id starts so began, those of its events past the followed session's last seq came down the stream
    (and the cursor, moved past them, would drop the session's own). Here short sessions are started until one shares
    the first character of the followed one's id (1 in 16 does); none of their lines may reach the stream, and the
    followed session's events reach it each once, in order."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 600})  # a few events, then quiet: others' seqs pass its own
    with dashboard_in_process(daemon.home) as (base, token):
        reader = StreamReader(f"{base}/api/sessions/{sid[0]}/stream", token).start()
        wait_until(lambda: reader.output("sleeping"), timeout=60, what="the followed session's first line streamed")
        with daemon.client() as c:
            for _ in range(300):  # (15/16)**300: never in practice
                other = c.start("demo.count", params={"n": 3, "delay": 0, "label": "FOREIGN"})
                c.wait(other, timeout=60)
                if other[0] == sid[0]:
                    break
            assert other[0] == sid[0]
            c.stop(sid)
        wait_until(lambda: reader.named("end"), timeout=60, what="the followed session's end streamed")
        assert reader.output("FOREIGN") is None
        _gap_free(reader, daemon, sid)
