"""`labd ui` where it used to break: files whose names a URL must escape, node details late in a long session, a
port out of range, a stream whose client went away mid-replay, a stop while the daemon is stuck, and the small
print of the API (status codes, body errors, the stream's errors in the page). Real daemon, real `labd ui`
process; plain HTTP, and headless Chromium only where the fault was in the page's JavaScript."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
no_browser = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")


class Ui:
    """A running `labd ui`: its base URL, token and process; its stderr is kept in a file."""

    def __init__(self, home: Path, stderr: Path) -> None:
        self.stderr_path = stderr
        self._err = open(stderr, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(home), "ui"],
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:(\d+))/#token=(\S+)", line)
        assert m, f"no URL printed: {line!r} {self.stderr()}"
        self.url, self.base, self.port, self.token = m.group(0), m.group(1), int(m.group(2)), m.group(3)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def request(self, path: str, data: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
        """(status, body) of a request with the token (a POST with ``data``)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, headers=headers, data=data)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._err.close()


@contextmanager
def running_ui(home: Path, stderr: Path) -> Iterator[Ui]:
    u = Ui(home, stderr)
    try:
        yield u
    finally:
        u.stop()


@pytest.fixture
def ui(daemon, tmp_path: Path) -> Iterator[Ui]:
    """`labd ui` on the test's own daemon (for tests that stop or freeze the daemon)."""
    with running_ui(daemon.home, tmp_path / "ui-stderr.log") as u:
        yield u


@pytest.fixture
def shared_ui(shared_daemon, tmp_path: Path) -> Iterator[Ui]:
    """`labd ui` (the test's own) on the module's shared daemon."""
    with running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as u:
        yield u


@pytest.fixture
def page(ui: Ui) -> Iterator[Any]:
    """A logged-in Chromium page on the dashboard of the test's own daemon."""
    with browser_page(ui) as pg:
        yield pg


@pytest.fixture
def shared_page(shared_ui: Ui) -> Iterator[Any]:
    """A logged-in Chromium page on the dashboard of the module's shared daemon."""
    with browser_page(shared_ui) as pg:
        yield pg


@contextmanager
def browser_page(ui: Ui) -> Iterator[Any]:
    """A logged-in Chromium page on the dashboard (the token kept in the origin's localStorage)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            ctx = b.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            pg = ctx.new_page()
            pg.set_default_timeout(30_000)
            pg.goto(ui.url)
            pg.wait_for_function("localStorage.getItem('labd_ui_token') !== null")
            yield pg
            ctx.close()
        finally:
            b.close()


def _wait_completed(daemon: Any, sid: str, timeout: float = 120) -> dict[str, Any]:
    with daemon.client() as c:
        row = c.wait(sid, timeout=timeout)
    assert row["status"] == "completed", row
    return row


# ---- 1. file names a URL must escape --------------------------------------------------------------------------

AWKWARD = ["report", "report#draft", "q?.txt", "100%.txt", "sub dir/a&b#1.txt"]


@pytest.mark.timeout(180)
@pytest.mark.browser
@no_browser
def test_file_links_and_previews_fetch_the_named_file_whatever_its_characters(shared_daemon, shared_ui: Ui,
                                                                              shared_page: Any) -> None:
    """A file's download link and preview fetch that very file when its name holds ``#``, ``?``, ``%``, ``&`` or
    a space, in a subdirectory too. With encodeURI, ``q?.txt`` asked for ``q`` (404) and ``report#draft``
    silently downloaded ``report``: each path segment is now encoded whole, the ``/`` between them kept."""
    daemon, ui, page = shared_daemon, shared_ui, shared_page
    with daemon.client() as c:
        sid = c.start("labd_testflows:awkward_names")
    _wait_completed(daemon, sid)
    page.goto(f"{ui.base}/#/s/{sid}")
    page.click("#tab-files")
    for name in AWKWARD:
        row = page.locator("#files tbody tr").filter(has=page.get_by_text(name, exact=True))
        with page.expect_download() as dl:
            row.locator("a").click()
        assert Path(dl.value.path()).read_text() == f"this is {name}\n", name
        row.locator("button").click()  # the preview, fetched the same way
        page.wait_for_function("([name]) => document.querySelector('#file-preview').textContent === "
                               "`${name}\\n\\nthis is ${name}\\n`", arg=[name])


@pytest.mark.timeout(180)
@pytest.mark.browser
@no_browser
def test_bidi_overrides_in_names_and_output_show_as_escapes(shared_daemon, shared_ui: Ui, shared_page: Any) -> None:
    """A right-to-left override (U+202E) in a file name, a step name and the output shows as ``\\u202e`` on the
    page, as `labd top` and the CLI show it: read as written, the file ``invoice<U+202E>fdp.exe`` showed as
    ``invoiceexe.pdf`` (an attack review)."""
    daemon, ui, page = shared_daemon, shared_ui, shared_page
    with daemon.client() as c:
        sid = c.start("labd_testflows:bidi_names")
    _wait_completed(daemon, sid)
    page.goto(f"{ui.base}/#/s/{sid}")
    page.wait_for_function("document.querySelector('#output') && "
                           "document.querySelector('#output').textContent.includes('line')")
    assert "line\\u202etxet" in page.inner_text("#output")
    page.click("#tab-files")
    page.wait_for_selector("#files tbody tr")
    files = page.inner_text("#files")
    assert "invoice\\u202efdp.exe" in files and "\u202e" not in files, files
    assert "\u202e" not in page.inner_text("body")


# ---- 2. node details late in a long session ---------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_node_events_are_found_after_the_first_page_of_the_session(shared_daemon, shared_ui: Ui) -> None:
    """``/api/sessions/{id}/events?node=N`` asks the daemon for N's events (N and the nodes nested in it), so a
    step late in a long session has its events. Before, the server read the session's first 5000 events and
    filtered those: every node after them had an empty detail."""
    daemon, ui = shared_daemon, shared_ui
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 1500, "delay": 0})
        row = c.wait(sid, timeout=200)
        assert row["status"] == "completed", row
        assert row["last_seq"] > 5000  # else the test would not reach past the first page
        nodes = {n["name"]: n["node_id"] for n in c.dag(sid)["dag"]["nodes"]}
    for name in ("count 1500", "count 1"):
        status, raw = ui.request(f"/api/sessions/{sid}/events?node={urllib.parse.quote(nodes[name])}")
        assert status == 200, raw
        got = json.loads(raw)
        assert got["events"], f"no events for node {name!r}"
        assert {e["node_id"] for e in got["events"]} == {nodes[name]}
        assert any(e["kind"] == "output" and e["payload"]["text"] == f"{name}/1500\n" for e in got["events"])
        assert got["more"] is False  # a page of the node's events: all of them


# ---- 3. a port out of range -------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("port", ["70000", "-1", "65536"])
def test_a_port_out_of_range_is_a_usage_error_not_a_traceback(isolated_env: Path, port: str) -> None:
    """``labd ui --port 70000`` (or -1) is the option's usage error, exit 2, naming the range: it was bind()'s
    OverflowError traceback, exit 1."""
    r = subprocess.run([sys.executable, "-m", "labd", "--home", str(isolated_env), "ui", "--port", port],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(r"argument --port: .*0-65535", r.stderr), r.stderr


@pytest.mark.timeout(60)
def test_run_with_a_port_out_of_range_says_so_in_one_line(isolated_env: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """:func:`labd.frontends.ui.run` itself (for callers other than the CLI) turns bind()'s OverflowError into
    the one-line ``labd: cannot listen`` error and 2, as it does for a port in use."""
    from labd.frontends.ui.serve import run

    assert run(str(isolated_env), port=70000) == 2
    err = capsys.readouterr().err
    assert err.startswith("labd: cannot listen on 127.0.0.1:70000") and err.count("\n") == 1, err


# ---- 4. a stream closed while it replays a long history ---------------------------------------------------------

def _server_socket_inode(ui_port: int, client_port: int) -> str | None:
    """The inode of the dashboard's end of our connection (from /proc/net/tcp), or None."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(f":{ui_port:04X}") and f[2].endswith(f":{client_port:04X}"):
            return f[9]
    return None


def _holds_socket(pid: int, inode: str) -> bool:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                return True
        except FileNotFoundError:
            continue
    return False


@pytest.mark.timeout(240)
def test_a_stream_closed_mid_replay_stops_at_once_without_a_flood(shared_daemon, shared_ui: Ui) -> None:
    """A tab closed while its stream replays a long history: the stream notices within a chunk, stops formatting
    events for the dead connection, and `labd ui`'s stderr gets no flood of "socket.send() raised exception."
    (one line per event of the page, ~2000, before); the server goes on serving."""
    daemon, ui = shared_daemon, shared_ui
    with daemon.client() as c:
        sid = c.start("demo.events", params={"n": 6000})
    _wait_completed(daemon, sid)
    for _attempt in range(3):  # the client goes while the server writes: do it a few times
        s = socket.create_connection(("127.0.0.1", ui.port), timeout=30)
        s.sendall(f"GET /api/sessions/{sid}/stream HTTP/1.1\r\nHost: 127.0.0.1:{ui.port}\r\n"
                  f"Authorization: Bearer {ui.token}\r\n\r\n".encode())
        got = b""
        while b"data:" not in got or len(got) < 400:
            chunk = s.recv(400)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200"), got
        inode = wait_until(lambda s=s: _server_socket_inode(ui.port, s.getsockname()[1]), timeout=10,
                           what="the connection in /proc/net/tcp")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # as a closed tab: a reset
        s.close()
        wait_until(lambda inode=inode: not _holds_socket(ui.proc.pid, inode), timeout=60,
                   what="the dashboard closed its end of the connection")
    flood = [line for line in ui.stderr().splitlines() if "socket.send" in line]
    assert len(flood) < 10, f"{len(flood)} lines, e.g. {flood[:3]}"
    status, raw = ui.request("/api/status")
    assert status == 200, raw
    status, raw = ui.request(f"/api/sessions/{sid}/events?since=5990")
    assert status == 200 and json.loads(raw)["events"], raw


# ---- 5. a stop while the daemon is stuck ------------------------------------------------------------------------

def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.timeout(120)
def test_stop_with_the_daemon_stuck_is_prompt_and_quiet(daemon, ui: Ui) -> None:
    """SIGTERM while requests wait on a daemon that does not answer (SIGSTOPped): `labd ui` exits within its
    grace period, with no traceback; a request cut off by the stop gets a JSON 503. Before, uvicorn cancelled
    them after the grace period with a CancelledError traceback and a plain-text 500 each, then the process
    waited for the blocked worker threads (~14 s in all)."""
    from labd.frontends.ui.serve import SHUTDOWN_GRACE_S

    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 600})
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="the session running")
    replies: dict[str, tuple[int, bytes] | BaseException] = {}

    def ask(key: str, path: str) -> None:
        try:
            replies[key] = ui.request(path, timeout=60)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            replies[key] = exc

    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        asking = []
        for key, path in (("status", "/api/status"), ("sessions", "/api/sessions"),
                          ("stream", f"/api/sessions/{sid}/stream")):
            before = _threads(ui.proc.pid)
            t = threading.Thread(target=ask, args=(key, path), daemon=True)
            t.start()
            asking.append(t)
            # a request waiting on the daemon holds a thread of the dashboard (the daemon never answers)
            wait_until(lambda before=before: _threads(ui.proc.pid) > before, timeout=30,
                       what=f"the {key} request waiting on the daemon")
        assert not replies, replies  # all three still waiting
        started = time.monotonic()
        ui.proc.send_signal(signal.SIGTERM)
        ui.proc.wait(60)
        took = time.monotonic() - started
        for t in asking:
            t.join(30)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert ui.proc.returncode == 128 + signal.SIGTERM
    err = ui.stderr()
    assert "Traceback" not in err and "Exception in ASGI application" not in err, err
    assert took < SHUTDOWN_GRACE_S + 2, f"took {took:.1f}s to stop"
    for key, reply in replies.items():
        assert isinstance(reply, tuple), f"{key}: {reply!r}"
        status, raw = reply
        assert status == 503, (key, raw)
        assert json.loads(raw)["error"]["code"] == "stopping", (key, raw)
    assert set(replies) == {"status", "sessions", "stream"}
    with daemon.client() as c:
        c.stop(sid)


# ---- 6. the API's small print -----------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_download_errors_get_the_status_of_the_json_api(daemon, ui: Ui) -> None:
    """A file download maps daemon errors as the JSON API does: an unknown session or file is a 404, but no daemon
    is a 503 (it was a 404 for every error, as if the file did not exist)."""
    with daemon.client() as c:
        sid = c.start("labd_testflows:writes_files")
    _wait_completed(daemon, sid)
    status, raw = ui.request(f"/api/sessions/{sid}/files/report.md")
    assert (status, raw) == (200, b"# Report\n\nall good\n")
    assert ui.request(f"/api/sessions/{sid}/files/nope.md")[0] == 404
    assert ui.request("/api/sessions/000000000000/files/report.md")[0] == 404
    daemon.stop()
    status, raw = ui.request(f"/api/sessions/{sid}/files/report.md")
    assert status == 503, raw
    assert json.loads(raw)["error"]["code"] == "no_daemon"
    assert ui.request(f"/api/sessions/{sid}")[0] == 503  # as the JSON API says


@pytest.mark.timeout(120)
def test_a_body_without_a_required_field_or_with_a_wrong_type_says_which(shared_daemon, shared_ui: Ui) -> None:
    """A start or resolve body missing a required field says ``missing field 'workflow'`` (it was the bare
    KeyError text ``'workflow'``); a field that is not a string says it must be one (``"workflow": null`` was
    ``unknown workflow 'None'``). Both are 400 bad_request; a good body still starts a session."""
    daemon, ui = shared_daemon, shared_ui

    def post(path: str, body: Any) -> tuple[int, dict[str, Any]]:
        status, raw = ui.request(path, json.dumps(body).encode())
        return status, json.loads(raw)

    for path, body, message in [
        ("/api/sessions", {}, "missing field 'workflow'"),
        ("/api/sessions", {"name": "x"}, "missing field 'workflow'"),
        ("/api/sessions", {"workflow": None}, "field 'workflow' must be a string, not null"),
        ("/api/sessions", {"workflow": 3}, "field 'workflow' must be a string, not 3"),
        ("/api/approvals/resolve", {"decision": "approve"}, "missing field 'session'"),
        ("/api/approvals/resolve", {"session": "abc"}, "missing field 'decision'"),
        ("/api/approvals/resolve", {"session": None, "decision": "approve"},
         "field 'session' must be a string, not null"),
    ]:
        status, got = post(path, body)
        assert status == 400, (body, got)
        assert got["error"] == {"code": "bad_request", "message": message}, body
    status, got = post("/api/sessions", {"workflow": "demo.count", "params": {"n": 1, "delay": 0}})
    assert status == 200, got
    _wait_completed(daemon, got["session"])


def test_bad_query_numbers_and_unknown_paths_get_the_apis_json_errors(shared_ui: Ui) -> None:
    """A ``limit`` or ``since`` that is not a whole number is a 400 saying which parameter and what it must be (it
    was Python's ``invalid literal for int() with base 10`` text), and an unknown API path or method gets the same
    JSON error shape as every other error (it was Starlette's plain text)."""
    for path, name in (("/api/sessions?limit=ten", "limit"), ("/api/sessions?limit=-3", "limit"),
                       ("/api/sessions/abc/events?since=1e3", "since")):
        status, raw = shared_ui.request(path)
        assert status == 400, raw
        error = json.loads(raw)["error"]
        assert error["code"] == "bad_request" and error["message"].startswith(f"{name} must be a whole number"), error
        assert "int()" not in error["message"]
    status, raw = shared_ui.request("/api/no-such-thing")
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found", raw
    status, raw = shared_ui.request("/api/status", b"{}")  # POST where only GET is served
    assert status == 405 and json.loads(raw)["error"]["code"] == "method_not_allowed", raw


@pytest.mark.timeout(180)
@pytest.mark.browser
@no_browser
def test_a_session_page_shows_while_its_stream_cannot_read_the_daemon(daemon, ui: Ui, page: Any) -> None:
    """The stream's ``event: error`` (the daemon gone) shows a notice on the session page, which was silent; the
    notice goes once the daemon answers again."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 600})
    page.goto(f"{ui.base}/#/s/{sid}")
    page.wait_for_function("document.querySelector('#output') && "
                           "document.querySelector('#output').textContent.includes('sleeping')")
    assert page.locator("#stream-error").is_hidden()
    daemon.stop()
    page.wait_for_selector("#stream-error:not([hidden])")
    assert "no_daemon" in page.inner_text("#stream-error")
    daemon.start()
    page.wait_for_selector("#stream-error[hidden]", state="attached")
    with daemon.client() as c:
        if c.session(sid)["status"] not in ("completed", "failed", "cancelled", "lost"):
            c.stop(sid)


# ---- 7. request bodies too large, or cut off ---------------------------------------------------------------------

def _post_head(ui: Ui, framing: str) -> bytes:
    return (f"POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1:{ui.port}\r\nAuthorization: Bearer {ui.token}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()


def _response_head(s: socket.socket) -> bytes:
    """The status line and headers the server sends on ``s`` (socket timeout: the test's deadline)."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    return got


@pytest.mark.timeout(120)
def test_a_body_over_the_limit_is_refused_as_it_arrives_never_read_whole(shared_ui: Ui) -> None:
    """A start body over 1 MB is a 413 ``too_large`` at once when its Content-Length says so, and as soon as 1 MB of
    a chunked body has arrived: the server read every body whole into memory and only then refused it (a 300 MB
    body took `labd ui` from 40 to 326 MB of RSS, kept), and waited for all of a 2 GB one. A client that hangs up
    mid-body leaves no "Exception in ASGI application" traceback (ClientDisconnect) in stderr."""
    ui = shared_ui
    with socket.create_connection(("127.0.0.1", ui.port), timeout=10) as s:  # 2 GB announced, 64 KiB sent
        s.sendall(_post_head(ui, "Content-Length: 2000000000") + b" " * 65536)
        head = _response_head(s)
    assert head.startswith(b"HTTP/1.1 413"), head
    with socket.create_connection(("127.0.0.1", ui.port), timeout=10) as s:  # chunked: 1.2 MB sent, never ended
        s.sendall(_post_head(ui, "Transfer-Encoding: chunked"))
        for _ in range(12):
            s.sendall(b"%x\r\n%s\r\n" % (100_000, b" " * 100_000))
        head = _response_head(s)
    assert head.startswith(b"HTTP/1.1 413"), head
    # just over the limit, as the body starts to arrive: the refusal and its error code (a client sending the whole
    # body, as urllib does, can get EPIPE: the server answers and closes before it has read it, as it should)
    with socket.create_connection(("127.0.0.1", ui.port), timeout=10) as s:
        s.sendall(_post_head(ui, "Content-Length: 1000001") + b" " * 1000)
        head = _response_head(s)
        lines = head.lower().split(b"\r\n")
        size = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
        raw = head.split(b"\r\n\r\n", 1)[1]
        while len(raw) < size:
            chunk = s.recv(4096)
            assert chunk, raw
            raw += chunk
    assert head.startswith(b"HTTP/1.1 413") and json.loads(raw)["error"]["code"] == "too_large", (head, raw)

    s = socket.create_connection(("127.0.0.1", ui.port), timeout=10)  # hangs up with 499,000 bytes to come
    s.sendall(_post_head(ui, "Content-Length: 500000") + b" " * 1000)
    inode = wait_until(lambda: _server_socket_inode(ui.port, s.getsockname()[1]), timeout=10,
                       what="the connection in /proc/net/tcp")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_until(lambda: not _holds_socket(ui.proc.pid, inode), timeout=30,
               what="the dashboard closed its end of the connection")
    assert ui.request("/api/status")[0] == 200  # served after the cut-off request was handled
    assert "Traceback" not in ui.stderr(), ui.stderr()


# ---- 8. framed by another local page -----------------------------------------------------------------------------

@contextmanager
def _local_page(html: str) -> Iterator[str]:
    """A page served by a server of our own on another 127.0.0.1 port (any local user can run one): its URL."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *_: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.timeout(180)
@pytest.mark.browser
@no_browser
def test_no_other_page_can_frame_the_logged_in_dashboard(shared_ui: Ui, shared_page: Any) -> None:
    """Another local server's page (127.0.0.1, another port: *same-site*, so the browser does not partition the
    framed dashboard's storage) framed the dashboard logged in — token in its localStorage, approvals with their
    approve/reject buttons — under a page of its own: a click there could be a click on "approve" or "stop"
    (clickjacking). Every response now forbids framing (``frame-ancestors 'none'``, ``X-Frame-Options: DENY``), and
    the page, under its Content-Security-Policy, still renders with no policy violation."""
    ui, pg = shared_ui, shared_page
    violations: list[str] = []
    pg.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    pg.goto(f"{ui.base}/#/")
    pg.wait_for_selector("#start-button")
    assert pg.eval_on_selector("#start-button", "b => b.closest('.card').getBoundingClientRect().width") == 340
    pg.goto(f"{ui.base}/#/approvals")
    pg.wait_for_selector("#approvals > *")

    html = (f'<h1>a prize!</h1><iframe id="f" src="{ui.base}/#/approvals" width="900" height="600" '
            f'onload="window.framed = true"></iframe>')
    with _local_page(html) as evil:
        attacker = pg.context.new_page()
        attacker.goto(evil)
        attacker.wait_for_function("window.framed === true")
        for frame in attacker.frames:
            if frame is attacker.main_frame:
                continue
            try:  # a blocked frame holds the browser's error page: nothing of ours to read
                token, ours = frame.evaluate("[localStorage.getItem('labd_ui_token'), "
                                             "document.querySelector('#main') !== null]")
            except Exception:  # noqa: BLE001 - the error page may not even let us ask
                token, ours = None, False
            assert token != ui.token and not ours, "the dashboard, logged in, rendered in another page's frame"
        attacker.close()
    assert violations == [], violations
    status, raw = ui.request("/api/status")
    assert status == 200, raw


# ---- 9. a link with someone else's token -------------------------------------------------------------------------

@pytest.mark.timeout(180)
@pytest.mark.browser
@no_browser
def test_a_link_with_a_wrong_token_does_not_log_the_browser_out(shared_ui: Ui, shared_page: Any) -> None:
    """Opening ``/#token=<not ours>`` (any web page, or another local user's link, can send the browser there) keeps
    the token the browser has: it replaced it unchecked, and the dashboard then answered every request with 403
    until the user opened the printed URL again. A link with our token still replaces a stale one."""
    ui, pg = shared_ui, shared_page
    pg.goto("about:blank")  # a new document, as a navigation from another site is (not a same-page hash change)
    pg.goto(f"{ui.base}/#token=someone-elses")
    pg.wait_for_selector("#start-button", timeout=15_000)
    assert pg.evaluate("localStorage.getItem('labd_ui_token')") == ui.token
    assert pg.evaluate("location.hash") == "#/"  # the given token left the address bar all the same

    pg.evaluate("localStorage.setItem('labd_ui_token', 'stale')")
    pg.goto("about:blank")
    pg.goto(ui.url)
    pg.wait_for_selector("#start-button", timeout=15_000)
    assert pg.evaluate("localStorage.getItem('labd_ui_token')") == ui.token


# ---- 10. many tabs on running sessions ---------------------------------------------------------------------------

_HIDE = ("Object.defineProperty(document, 'hidden', {value: %s, configurable: true});"
         "Object.defineProperty(document, 'visibilityState', {value: %r, configurable: true});"
         "document.dispatchEvent(new Event('visibilitychange'))")


@pytest.mark.timeout(300)
@pytest.mark.browser
@no_browser
def test_tabs_in_the_background_leave_the_browser_connections_for_the_one_in_front(shared_daemon, shared_ui: Ui,
                                                                                  shared_page: Any) -> None:
    """Six tabs, each on a running session, then a seventh: a browser opens at most 6 connections to a host and each
    tab's stream held one for as long as its session ran, so the seventh tab never loaded and every tab's polls
    (status, approvals) hung. A tab in the background (hidden: as the browser says of a tab behind another) now lets
    its stream go, and once it shows again follows on from its last event: the session's end arrives, and no
    output twice."""
    daemon, ui, pg = shared_daemon, shared_ui, shared_page
    with daemon.client() as c:
        sids = [c.start("demo.sleep", params={"seconds": 600}) for _ in range(7)]
    sleeping = ("document.querySelector('#output') && "
                "document.querySelector('#output').textContent.includes('sleeping')")
    tabs = []
    try:
        for sid in sids[:6]:
            tab = pg.context.new_page()
            tab.goto(f"{ui.base}/#/s/{sid}", timeout=15_000)
            tab.wait_for_function(sleeping, timeout=15_000)
            tab.evaluate(_HIDE % ("true", "hidden"))  # the next tab opens in front of it
            tabs.append(tab)
        front = pg.context.new_page()
        front.goto(f"{ui.base}/#/s/{sids[6]}", timeout=15_000)
        front.wait_for_function(sleeping, timeout=15_000)
        front.goto(f"{ui.base}/#/approvals")
        front.wait_for_selector("#approvals > *", timeout=15_000)

        first = tabs[0]
        with daemon.client() as c:
            c.stop(sids[0])  # while its tab is hidden: seen once the tab shows again
            wait_until(lambda: c.session(sids[0])["status"] in ("cancelled", "completed", "failed"), timeout=60,
                       what="the first session stopped")
        first.evaluate(_HIDE % ("false", "visible"))
        first.wait_for_selector("#activity [data-kind='session.ended']", timeout=30_000)
        assert first.inner_text("#output").count("sleeping") == 1
    finally:
        with daemon.client() as c:
            for sid in sids:
                if c.session(sid)["status"] not in ("completed", "failed", "cancelled", "lost"):
                    c.stop(sid)


@pytest.mark.timeout(120)
def test_a_connection_that_never_finishes_its_headers_or_body_is_closed(shared_daemon, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends part of a request's headers and then waits (another local user needs no token to
    connect) is disconnected once the headers are late (``HEADERS_S``, 10 s; 3 s here through
    ``LABD_UI_HEADERS_S``): such connections each held a descriptor for good, ~18,000 of them brought the dashboard
    to its limit (an attack review). The same holds for a second request on a kept-alive connection; a client that
    sends its headers in time is served."""
    headers_s = 3.0
    monkeypatch.setenv("LABD_UI_HEADERS_S", str(headers_s))
    monkeypatch.setenv("LABD_UI_BODY_S", str(headers_s))
    with running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as ui:
        _late_headers_are_closed(ui, headers_s)
        _late_body_is_answered_and_closed(ui, headers_s)
        _refused_body_is_closed(ui)
        assert "Traceback" not in ui.stderr(), ui.stderr()


def _late_body_is_answered_and_closed(ui: Ui, body_s: float) -> None:
    """With the token, a start whose body stops arriving is answered 408 ``body_timeout`` once ``BODY_S`` passed
    (3 s here through ``LABD_UI_BODY_S``; 30 s by default) and the connection closed: it held a connection, its
    descriptor and a request task for good. Nothing is started, and the dashboard serves the next request."""
    with socket.create_connection(("127.0.0.1", ui.port), timeout=body_s + 30) as s:
        s.sendall(_post_head(ui, "Content-Length: 100") + b'{"workflow": "demo.hello", "name": "late-bo')
        start = time.monotonic()
        got = b""
        while chunk := s.recv(65536):  # the answer, then the server's close
            got += chunk
        assert time.monotonic() - start >= body_s - 1
    head, _, raw = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), got
    assert json.loads(raw)["error"]["code"] == "body_timeout", got
    status, listed = ui.request("/api/sessions")
    assert status == 200 and b"late-bo" not in listed, listed


def _refused_body_is_closed(ui: Ui) -> None:
    """A POST without the token whose chunked body keeps coming, a chunk a second, is answered 403 and then closed
    (it is not read on): such connections held a descriptor each for as long as the client went on (an attack
    review held 3,000 and starved the dashboard of descriptors)."""
    with socket.create_connection(("127.0.0.1", ui.port), timeout=30) as s:
        s.sendall(f"POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1:{ui.port}\r\nContent-Type: application/json\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n".encode())
        assert _response_head(s).startswith(b"HTTP/1.1 403")
        s.settimeout(1.0)
        deadline, closed = time.monotonic() + 15, False
        while not closed and time.monotonic() < deadline:
            try:
                closed = s.recv(65536) == b""  # the rest of the 403, then the server's close
            except TimeoutError:
                try:
                    s.sendall(b"1\r\n \r\n")  # one more chunk of the body
                except OSError:  # reset: closed by the server
                    closed = True
            except OSError:
                closed = True
        assert closed, "the refused request's connection was kept open while its body kept coming"


def _late_headers_are_closed(ui: Ui, headers_s: float) -> None:
    with socket.create_connection(("127.0.0.1", ui.port), timeout=headers_s + 30) as s:
        s.sendall(b"GET /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        start = time.monotonic()
        assert s.recv(4096) == b""  # closed by the server, nothing sent back
        assert time.monotonic() - start >= headers_s - 1
    with socket.create_connection(("127.0.0.1", ui.port), timeout=headers_s + 30) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{ui.port}\r\n\r\n".encode())
        assert _response_head(s).startswith(b"HTTP/1.1 200")  # served: the page itself needs no token
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127")  # a second request, its headers never finished
        while s.recv(65536):  # the rest of the first response, then the server's close
            pass
