"""`labd ui` after the front-end review of 2026-12-06, in a real browser (headless Chromium) against a real daemon:
an approval shows the code or plan it asks about, a budget the page cannot read is refused rather than dropped, a
stream resumed at an ended session's last event ends, output the page let go of is said to be gone, and a session
older than the list's newest is found by its name."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_daemon, wait_until
from tests.integration.test_ui import browser, logged_in_page, own_ui, page, ui, ui_server  # noqa: F401
from tests.integration.test_ui import pytestmark as ui_marks

pytestmark = ui_marks


def test_an_approval_shows_the_code_it_asks_about_whole(page: Any, ui: dict[str, Any]) -> None:
    """A code approval's card shows its code, all 200 lines of it, though the list of approvals leaves a context
    that long out (the page reads the session's approvals whole); before, only the prompt and the buttons."""
    with ui["daemon"].client() as c:
        sid = c.start("labd_testflows:review_code")
        wait_until(lambda: c.approvals(session=sid), timeout=60, what="the approval")
        aid = c.approvals(session=sid)[0]["id"]
        page.goto(ui["base"] + "/#/approvals")
        card = f'[data-approval="{aid}"]'
        page.wait_for_selector(f'{card} pre[data-field="code"]')
        code = page.inner_text(f'{card} pre[data-field="code"]')
        assert code.startswith("print(0)  # step 0 of the program") and code.rstrip().endswith("# the last line")
        assert "language: python" in page.inner_text(card)
        assert page.locator(f'{card} button[data-decision]').count() == 2
        c.kill(sid)


def test_a_plan_approval_shows_the_plan(page: Any, ui: dict[str, Any]) -> None:
    """hitl's approval after planning shows the plan's steps (its context), a line each."""
    with ui["daemon"].client() as c:
        sid = c.start("hitl", params={"task": "Plain.\n- one\n- two", "max_steps": 2})
        wait_until(lambda: c.approvals(session=sid), timeout=60, what="the approval")
        aid = c.approvals(session=sid)[0]["id"]
        page.goto(ui["base"] + "/#/approvals")
        page.wait_for_selector(f'[data-approval="{aid}"] pre[data-field="plan"]')
        plan = page.inner_text(f'[data-approval="{aid}"] pre[data-field="plan"]').splitlines()
        assert len(plan) == 2 and all(line.startswith("- ") for line in plan)
        assert '"goal":"one"' in plan[0].replace(" ", "")
        c.kill(sid)


def test_a_budget_the_page_cannot_read_is_refused_not_dropped(page: Any, ui: dict[str, Any]) -> None:
    """"2,50" in the start form's budget is refused with the daemon's error and nothing starts; before, the page
    sent it as null and the session ran with no budget at all."""
    with ui["daemon"].client() as c:
        before = {s["id"] for s in c.sessions(limit=10_000)}
    page.wait_for_selector("#start-workflow")
    page.select_option("#start-workflow", "demo.count")
    page.fill("#start-params", '{"n": 1}')
    page.fill("#start-budget", "2,50")
    page.click("#start-button")
    page.wait_for_selector("#toast.error")
    assert "budget" in page.inner_text("#toast")
    with ui["daemon"].client() as c:
        assert {s["id"] for s in c.sessions(limit=10_000)} == before


def test_a_stream_resumed_at_an_ended_sessions_last_event_ends(ui: dict[str, Any]) -> None:
    """A client that resumes a stream from the last event it got (``Last-Event-ID``: the session's end) gets
    ``event: end`` at once; before, the stream waited for an end that was not coming and held its connection."""
    with ui["daemon"].client() as c:
        sid = c.start("demo.count", params={"n": 1, "delay": 0})
        last = c.wait(sid, timeout=60)["last_seq"]
    for headers, query in (({"Last-Event-ID": str(last)}, ""), ({}, f"?since={last}")):
        req = urllib.request.Request(f"{ui['base']}/api/sessions/{sid}/stream{query}",
                                     headers={"Authorization": f"Bearer {ui['token']}", **headers})
        with urllib.request.urlopen(req, timeout=20) as r:
            body = r.read().decode()
        assert body.rstrip().endswith("event: end\ndata: {}") and "id:" not in body


def test_output_the_page_lets_go_of_is_said_to_be_gone(page: Any, ui: dict[str, Any]) -> None:
    """Past two million characters the output pane keeps the last million, from a line's start, and says that
    `labd logs` has the rest; before, it cut mid-line and said nothing."""
    with ui["daemon"].client() as c:
        sid = c.start("labd_testflows:long_lines", params={"lines": 30, "width": 100_000})
        assert c.wait(sid, timeout=60)["status"] == "completed"
    page.goto(ui["base"] + f"/#/s/{sid}")
    page.wait_for_selector("#output-note:not([hidden])")
    assert f"labd logs {sid}" in page.inner_text("#output-note")
    first = page.evaluate("document.querySelector('#output').textContent.split('\\n')[0]")
    assert first.startswith("line ") and len(first) > 100_000


def test_a_session_older_than_the_lists_newest_is_found_by_its_name(browser: Any, tmp_path: Path,  # noqa: F811
                                                                     request: pytest.FixtureRequest) -> None:
    """With more sessions than the list shows (200), the list says so, and a filter naming an older session finds
    it; before, the filter looked only at the newest 200, found nothing and said nothing. (A daemon of one run slot:
    the 200 newer sessions wait in its run queue, started in milliseconds each.)"""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[daemon]\nmax_sessions = 1\n")
    with running_daemon(home) as d, d.client() as c:
        old = c.start("demo.count", name="the-oldest-one", params={"n": 1, "delay": 0})
        c.wait(old, timeout=60)
        c.start("demo.sleep", params={"seconds": 600})
        for _ in range(200):
            c.start("demo.count", params={"n": 1, "delay": 0})
        with ui_server(d) as u, logged_in_page(browser, u, request) as pg:
            pg.wait_for_selector("#sessions-note:has-text('the newest 200 sessions shown')")
            assert pg.locator(f'tr[data-session="{old}"]').count() == 0
            pg.fill("#filter", "the-oldest-one")
            pg.wait_for_selector(f'tr[data-session="{old}"]')
