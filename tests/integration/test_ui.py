"""`labd ui` in a real browser: headless Chromium (the OS package, driven by Playwright) against a real
dashboard server and a real daemon. The list updates live, a DAG renders with the record's node count, an
approval answered in the page resolves the session (exactly once across two tabs), and a wrong token gets 403.
A screenshot of the page is saved under tests/artifacts/ when a test fails (and for the docs on demand)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DOCS_SHOTS = os.environ.get("LABD_UI_SCREENSHOTS")  # a folder: save each page's screenshot there (docs)

pytestmark = [pytest.mark.timeout(180), pytest.mark.browser]
if CHROMIUM is None:  # scripts/test installs the chromium package; elsewhere say so
    pytestmark.append(pytest.mark.skip(reason="Chromium not installed (apt-get install chromium)"))


@contextmanager
def ui_server(daemon: Any) -> Iterator[dict[str, Any]]:
    """A `labd ui` server on a free port for ``daemon``: its URL (with token), base, process and daemon."""
    proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(daemon.home), "ui"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+)/#token=(\S+)", line)
    assert m, f"no URL printed: {line!r}"
    try:
        yield {"url": m.group(0), "base": m.group(1), "token": m.group(2), "proc": proc, "daemon": daemon}
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def ui(shared_daemon) -> Iterator[dict[str, Any]]:
    """`labd ui` (the test's own) on the module's shared daemon, for tests that look only at their own sessions."""
    with ui_server(shared_daemon) as u:
        yield u


@pytest.fixture
def own_ui(daemon) -> Iterator[dict[str, Any]]:
    """`labd ui` on the test's own fresh daemon (for tests that stop it, or need it to have no approvals)."""
    with ui_server(daemon) as u:
        yield u


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


@contextmanager
def logged_in_page(browser: Any, ui: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    """A logged-in page (the token URL's fragment is kept in the origin's localStorage); screenshot saved if the
    test fails."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(ui["url"])
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    ctx.close()


@pytest.fixture
def page(browser: Any, ui: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    """A logged-in page on the dashboard of the module's shared daemon."""
    with logged_in_page(browser, ui, request) as pg:
        yield pg


@pytest.fixture
def own_page(browser: Any, own_ui: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    """A logged-in page on the dashboard of the test's own daemon."""
    with logged_in_page(browser, own_ui, request) as pg:
        yield pg


def _shot(pg: Any, name: str) -> None:
    if DOCS_SHOTS:
        Path(DOCS_SHOTS).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(DOCS_SHOTS) / f"{name}.png"))


def _status(ui: dict[str, Any], path: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> int:
    try:
        req = urllib.request.Request(ui["base"] + path, headers=headers or {}, data=data)
        with urllib.request.urlopen(req) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_wrong_or_missing_token_gets_403(ui: dict[str, Any]) -> None:
    """Without the token, with a wrong one, or with a foreign Host header, every API, stream and download answers
    403; the page's shell and its scripts (static, no data) are served to our own Host only; a cookie is never the
    credential."""
    status = functools.partial(_status, ui)
    good = {"Authorization": f"Bearer {ui['token']}"}
    assert status("/") == 200
    assert status("/", {"Host": "evil.example:80"}) == 403
    assert status("/static/app.js") == 200
    assert status("/static/app.js", {"Host": "evil.example:80"}) == 403
    assert status("/api/sessions") == 403
    assert status("/?token=wrong") == 403
    assert status("/api/sessions", {"Authorization": "Bearer wrong"}) == 403
    assert status("/api/sessions", good) == 200
    assert status("/api/sessions", {**good, "Host": "evil.example:80"}) == 403
    assert status("/api/sessions", {"Cookie": f"labd_ui={ui['token']}"}) == 403
    assert status("/api/sessions/abc/stream") == 403
    assert status("/api/sessions/abc/files/x.txt") == 403
    # each refusal says which check failed (all said "wrong token": a user behind an SSH tunnel on another port,
    # sent there by the Host check, looked for a token problem)
    assert "missing or wrong token" in _refusal(ui, "/api/sessions", {})
    host = _refusal(ui, "/api/sessions", {**good, "Host": "localhost:8080"})
    assert "not 'localhost:8080'" in host and "ssh -L" in host and "token" not in host.split(":", 1)[0]
    origin = _refusal(ui, "/api/sessions", {**good, "Origin": "http://evil.example",
                                             "Content-Type": "application/json"}, b"{}")
    assert "must come from the dashboard's own page" in origin and "evil.example" in origin


def _refusal(ui: dict[str, Any], path: str, headers: dict[str, str], data: bytes | None = None) -> str:
    """The message of the 403 a request gets."""
    try:
        urllib.request.urlopen(urllib.request.Request(ui["base"] + path, headers=headers, data=data))
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
        return str(json.loads(exc.read())["error"]["message"])
    raise AssertionError(f"{path} was served")


def test_bad_stream_and_body_input_gets_a_clear_4xx(ui: dict[str, Any]) -> None:
    """A non-numeric or negative `since` / Last-Event-ID is a 400 and a stream of an unknown session a 404 (both were
    a 500 or a stream of errors that never ended), as is a `since` past the session's last event (a stream that sent
    nothing, for ever); a 100,000-deep JSON body is a 400, not a 500."""
    status = functools.partial(_status, ui)
    good = {"Authorization": f"Bearer {ui['token']}"}
    assert status("/api/sessions/abc/stream?since=abc", good) == 400
    assert status("/api/sessions/abc/stream?since=-5", good) == 400
    assert status("/api/sessions/abc/stream", {**good, "Last-Event-ID": "x"}) == 400
    assert status("/api/sessions/000000000000/stream", good) == 404
    with ui["daemon"].client() as c:  # a seq past the session's last: it was a stream that never sent anything
        sid = c.start("demo.sleep", params={"seconds": 60})
        try:
            assert status(f"/api/sessions/{sid}/stream?since=999999999999999999", good) == 400
        finally:
            c.stop(sid)
    deep = b'{"workflow": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert status("/api/sessions", {**good, "Content-Type": "application/json"}, deep) == 400


def test_the_token_never_reaches_another_local_server(page: Any, ui: dict[str, Any]) -> None:
    """The attack that a cookie allowed: a logged-in browser follows a link to another server on 127.0.0.1 (any
    local user can run one). Cookies for 127.0.0.1 go to every port, so that server received the token and could
    start sessions as us. Now the browser holds no cookie, the other server receives no credential, and a page of
    its own origin cannot read the dashboard's localStorage."""
    import http.server
    import threading

    seen: list[str] = []

    class Spy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            seen.append(str(self.headers))
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<!doctype html><title>spy</title><img src='/pixel.png'>")

        def log_message(self, *args: Any) -> None:
            pass

    spy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Spy)
    threading.Thread(target=spy.serve_forever, daemon=True).start()
    try:
        page.wait_for_function("document.querySelector('#daemon-status').textContent.startsWith('daemon pid')")
        assert page.evaluate("localStorage.getItem('labd_ui_token')") == ui["token"]
        assert "token" not in page.url  # taken out of the address bar (and history) at once
        assert page.context.cookies() == []
        page.goto(f"http://127.0.0.1:{spy.server_address[1]}/")
        wait_until(lambda: len(seen) >= 2, timeout=30, what="the spy page and its image requested")
        assert not any(ui["token"] in h for h in seen), seen
        assert page.evaluate("localStorage.getItem('labd_ui_token')") is None
    finally:
        spy.shutdown()


def test_session_list_updates_live_and_a_session_page_follows_output(page: Any, ui: dict[str, Any]) -> None:
    """A session started after the page loaded appears in the list without a reload; its page shows the
    output the session printed."""
    page.wait_for_selector("#sessions")
    with ui["daemon"].client() as c:
        sid = c.start("demo.count", params={"n": 3}, name="live-one")
    page.wait_for_selector(f'tr[data-session="{sid}"]')
    page.click(f'tr[data-session="{sid}"]')
    page.wait_for_function("document.querySelector('#output') && "
                           "document.querySelector('#output').textContent.split('\\n').length > 3")
    page.wait_for_selector('#session-head [data-status="completed"]')
    # the lines are the session's own output, in order (not merely some lines)
    page.wait_for_function("document.querySelector('#output').textContent.includes('count 3/3')")
    assert page.inner_text("#output").split() == ["count", "1/3", "count", "2/3", "count", "3/3"]
    _shot(page, "session")


def test_the_dag_of_a_long_session_draws_its_newest_nodes_and_says_so(page: Any, ui: dict[str, Any]) -> None:
    """A session of 520 nodes: the DAG tab draws the newest 500 (read as such from the daemon, not the whole graph)
    and says how many the session has; before, the page read and laid out the whole graph, however large."""
    with ui["daemon"].client() as c:
        sid = c.start("labd_testflows:deep", params={"n": 520})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        newest = {n["node_id"] for n in c.dag(sid, newest=500)["dag"]["nodes"]}
    page.goto(ui["base"] + f"/#/s/{sid}")
    page.click("#tab-dag")
    page.wait_for_function("document.querySelectorAll('svg.dag g.node').length === 500")
    assert page.inner_text("#dag-note").startswith("the newest 500 of 520 nodes")
    drawn = page.eval_on_selector_all("svg.dag g.node", "gs => gs.map(g => g.dataset.node)")
    assert set(drawn) == newest and "n1" not in drawn  # n1, the oldest, left out


def test_the_dag_note_says_how_many_agent_turns_are_hidden(page: Any, ui: dict[str, Any]) -> None:
    """Agent turns are hidden by default: the DAG tab says how many of the nodes read are not drawn (a session of
    mostly agent turns drew a handful of boxes under a note promising hundreds), and drawing them clears it."""
    with ui["daemon"].client() as c:
        sid = c.start("labd_testflows:graph_rounds", params={"rounds": 30, "code": False})
        assert c.wait(sid, timeout=120)["status"] == "completed"
        nodes = c.dag(sid)["dag"]["nodes"]
    turns = sum(n["kind"] == "agent" for n in nodes)
    assert turns == 30
    page.goto(ui["base"] + f"/#/s/{sid}")
    page.click("#tab-dag")
    page.wait_for_function(f"document.querySelectorAll('svg.dag g.node').length === {len(nodes) - turns}")
    assert page.inner_text("#dag-note") == "30 agent turns hidden"
    page.check("#show-agents")
    page.wait_for_function(f"document.querySelectorAll('svg.dag g.node').length === {len(nodes)}")
    assert page.inner_text("#dag-note") == ""


def test_the_cost_charts_of_a_long_session_show_its_costliest_rows(page: Any, ui: dict[str, Any]) -> None:
    """A session of 55 agent turns, each an LLM call of its own node: the cost tab's "by node" chart draws the 50
    costliest and says how many more there are (it drew a bar per node, 100,000 for a days-long session), and the
    page reads the sums only (the API's reply has no list of every call)."""
    with ui["daemon"].client() as c:
        sid = c.start("labd_testflows:graph_rounds", params={"rounds": 55, "code": False})
        assert c.wait(sid, timeout=120)["status"] == "completed"
        by_node = c.cost(sid, calls=False)["by_node"]
    assert len([g for g in by_node if g["node_id"]]) == 55
    page.goto(ui["base"] + f"/#/s/{sid}")
    page.click("#tab-cost")
    page.wait_for_selector('[data-chart="by node"] .bar')
    assert page.locator('[data-chart="by node"] .bar').count() == 50
    assert page.inner_text('[data-chart="by node"] .more').startswith(f"{len(by_node) - 50} more, costing no more")
    # the 50 drawn are the costliest: none left out costs more than any drawn
    drawn = set(page.eval_on_selector_all('[data-chart="by node"] .bar span:first-child',
                                          "ss => ss.map(s => s.textContent)"))
    cost = {g["node_id"] or "—": g["cost"] for g in by_node}
    assert len(drawn) == 50 and drawn <= set(cost)
    assert min(cost[n] for n in drawn) >= max(c for n, c in cost.items() if n not in drawn)
    req = urllib.request.Request(ui["base"] + f"/api/sessions/{sid}/cost",
                                 headers={"Authorization": f"Bearer {ui['token']}"})
    with urllib.request.urlopen(req) as r:
        assert "calls" not in json.loads(r.read())


def test_dag_renders_with_the_record_node_count(page: Any, ui: dict[str, Any]) -> None:
    """planning_and_control's DAG: with agent turns shown, one SVG node per node of the record."""
    with ui["daemon"].client() as c:
        sid = c.start("planning_and_control", params={"task": "Step 1 of 2: fit. Step 2 of 2: plot"})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        nodes = c.dag(sid)["dag"]["nodes"]
    page.goto(ui["base"] + f"/#/s/{sid}")
    page.click("#tab-dag")
    page.check("#show-agents")
    page.wait_for_function(f"document.querySelectorAll('svg.dag g.node').length === {len(nodes)}")
    page.click("svg.dag g.node >> nth=0")
    page.wait_for_selector("#node-detail b")
    _shot(page, "dag")
    page.click("#tab-cost")
    page.wait_for_selector('[data-chart="by agent"] .bar')
    _shot(page, "cost")
    page.click("#tab-files")  # files with their step and agent; a text file previews in place
    page.click('tr[data-file="step_1.json"] button')
    page.wait_for_function("document.querySelector('#file-preview').textContent.includes('\"step\": 1')")
    with page.expect_download() as dl:  # a one-time link the page asked for with its token: the browser saves it
        page.click('tr[data-file="step_1.json"] a')
    assert b'"step": 1' in Path(dl.value.path()).read_bytes()


def test_approval_answered_in_the_page_resolves_the_session_once(browser: Any, page: Any, ui: dict[str, Any]) -> None:
    """A hitl session waits; approving in the page lets it go on; a second tab answering the same approval
    gets a clear refusal (exactly once)."""
    daemon = ui["daemon"]
    with daemon.client() as c:
        sid = c.start("hitl", params={"task": "Sum the squares of 1..4"})
        wait_until(lambda: c.approvals(session=sid), timeout=60, what="approval requested")
        first = c.approvals(session=sid)[0]["id"]
    other = browser.new_context()
    tab2 = other.new_page()
    tab2.goto(ui["url"])
    for pg in (page, tab2):
        pg.goto(ui["base"] + "/#/approvals")
        pg.wait_for_selector(f'[data-approval="{first}"]')
    _shot(page, "approvals")
    page.click(f'[data-approval="{first}"] button[data-decision="approve"]')
    with daemon.client() as c:
        wait_until(lambda: c.approvals(session=sid, status="all")[0]["status"] == "resolved", timeout=30,
                   what="resolved")
        assert c.approvals(session=sid, status="all")[0]["resolved_by"] == "ui"
    tab2.click(f'[data-approval="{first}"] button[data-decision="reject"]')
    tab2.wait_for_selector("#toast.error")
    assert "not_pending" in tab2.inner_text("#toast")
    other.close()
    with daemon.client() as c:
        assert c.approvals(session=sid, status="all")[0]["decision"] == "approve"
        for _ in range(30):  # approve the later checkpoints so the session ends
            if c.session(sid)["status"] in ("completed", "failed"):
                break
            if c.approvals(session=sid):
                c.approve(sid)
            wait_until(lambda: c.approvals(session=sid) or c.session(sid)["status"] in ("completed", "failed"),
                       timeout=60, what="next approval or end")
        assert c.session(sid)["status"] == "completed"


def test_start_a_session_from_the_form(page: Any, ui: dict[str, Any]) -> None:
    """The start form lists workflows with their parameters; starting one opens its page."""
    page.wait_for_selector("#start-workflow")
    page.select_option("#start-workflow", "demo.count")
    page.fill("#start-params", '{"n": 2}')
    page.fill("#start-name", "from-the-form")
    page.click("#start-button")
    page.wait_for_selector("#session-head h2:has-text('from-the-form')")
    with ui["daemon"].client() as c:
        assert any(s["name"] == "from-the-form" for s in c.sessions())
    _shot(page, "sessions-start")
    page.goto(ui["base"] + "/#/")
    page.wait_for_selector("#sessions tbody tr")
    _shot(page, "sessions")



def test_a_session_page_open_on_a_failed_session_follows_its_resume(page: Any, ui: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    """A session page left open on a failed session picks the session up again when it is resumed (`labd
    resume`): the resume and the rerun's end appear in its activity, and the header turns `completed`."""
    counter = tmp_path / "counts"
    counter.mkdir()
    with ui["daemon"].client() as c:
        sid = c.start("labd_testflows:durable_four", params={"counter": str(counter), "fail_three": 1})
        assert c.wait(sid, timeout=60)["status"] == "failed"
        page.goto(ui["base"] + f"/#/s/{sid}")
        page.wait_for_selector('#session-head [data-status="failed"]')
        page.wait_for_selector('#activity [data-kind="session.ended"]')
        c.resume(sid, reason="fixed the input")
    page.wait_for_selector('#activity [data-kind="session.continued"]', timeout=30_000)
    page.wait_for_selector('#session-head [data-status="completed"]', timeout=30_000)
    assert page.locator('#activity [data-kind="session.ended"]').count() == 2
    assert "fixed the input" in page.locator('#activity [data-kind="session.continued"]').inner_text()


def test_a_page_left_while_it_loads_never_overwrites_the_next(own_page: Any) -> None:
    """The sessions page waits for its start form's workflow list; the user moves to the approvals page meanwhile,
    and only then does that request fail. The approvals page stays (no error of the page left behind replaces
    it), and keeps updating. (Found as a CI flake: a request hanging across a daemon restart wiped the page the
    test was on 15 s later.) (A daemon of its own: the page must show that the daemon has no approvals at all.)"""
    page = own_page
    held: list[Any] = []
    page.route("**/api/workflows", lambda route: held.append(route))  # held until the test fails it
    with page.expect_request("**/api/workflows"):
        page.reload()  # a fresh load of the sessions page, whose start form's request is held
    # (the sync API runs the route handler while the test calls into the page)
    wait_until(lambda: page.evaluate("true") and bool(held), timeout=30, what="the held request")
    page.evaluate("location.hash = '#/approvals'")
    page.wait_for_selector("#no-approvals")
    with page.expect_event("requestfailed"):
        held[0].abort()
    page.evaluate("new Promise(r => setTimeout(r, 0))")  # let the page run what the failure queued
    page.evaluate("new Promise(r => setTimeout(r, 0))")
    assert page.locator("#page-error").count() == 0 and page.locator("#sessions").count() == 0
    assert page.locator("#no-approvals").is_visible()


def test_a_page_whose_first_load_fails_keeps_trying_and_recovers(own_page: Any, own_ui: dict[str, Any]) -> None:
    """With the daemon down, the approvals page says it could not load (it does not go blank or stop); once a
    daemon answers again, the same page, without a reload, shows the current state. (A daemon of its own: it is
    stopped and started again, and the page must show no approvals.)"""
    page, ui = own_page, own_ui
    daemon = ui["daemon"]
    daemon.stop()
    page.goto(ui["base"] + "/#/approvals")
    page.wait_for_selector("#load-error:not([hidden])")
    assert "could not load" in page.inner_text("#load-error")
    daemon.start()
    page.wait_for_selector("#no-approvals")
    page.wait_for_selector("#load-error[hidden]", state="attached")
