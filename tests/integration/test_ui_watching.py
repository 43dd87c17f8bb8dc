"""`labd ui` as a user watching sessions sees it (UI review of 2026-12-06, part two), in a real browser (headless
Chromium) against a real daemon: terminal control sequences in output, the approvals badge past 20 pending in one
session, and the history tab of a long session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import wait_until
from tests.integration.test_ui import browser, logged_in_page, own_page, own_ui, page, ui, ui_server  # noqa: F401
from tests.integration.test_ui import pytestmark as ui_marks

pytestmark = ui_marks

FLOWS = '''
import threading


def colours(ctx):
    print("\\x1b[31mRED\\x1b[0m \\x1b]0;TITLE\\x07 end")
    print("progress 10%\\rprogress 50%")


def asks(ctx, n: int = 25):
    threads = [threading.Thread(target=ctx.approval, args=(f"q{i}", f"question {i}"), kwargs={"options": ("approve",)})
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def many_steps(ctx, n: int = 1100):
    for i in range(n):
        with ctx.step(f"s{i}"):
            pass
'''


def _flows(tmp_path: Path) -> Path:
    f = tmp_path / "watchflows.py"
    f.write_text(FLOWS)
    return f


def test_output_drops_colours_and_shows_other_controls_as_escapes(page: Any, ui: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    """Colour sequences are dropped, other control characters shown as visible escapes, and a carriage return
    starts a new line, as `labd top` shows them. Before, ESC was invisible and its sequences read as corrupted text
    (``[31mRED[0m``), and progress updates ran together."""
    with ui["daemon"].client() as c:
        sid = c.start(f"{_flows(tmp_path)}:colours")
        assert c.wait(sid, timeout=60)["status"] == "completed"
    page.goto(ui["base"] + f"/#/s/{sid}")
    wait_until(lambda: "end" in page.inner_text("#output"), timeout=30, what="the output shown")
    shown = page.evaluate("document.querySelector('#output').textContent")
    assert "RED " in shown and "\x1b" not in shown and "[31m" not in shown
    assert "\\x1b]0;TITLE\\x07 end" in shown and "progress 10%\nprogress 50%" in shown


def test_the_badge_counts_every_pending_approval_and_history_says_what_it_leaves_out(own_page: Any,
                                                                                     own_ui: dict[str, Any],
                                                                                     tmp_path: Path) -> None:
    """25 approvals pending in one session: the header's badge says 25 (the daemon lists 20 per session and counts
    the rest; the badge showed 20). A session of 1,100 steps: its history tab shows the newest 2,000 state changes
    and says how many there are and where all of them are (it showed 2,000 as if they were all)."""
    flows = _flows(tmp_path)
    with own_ui["daemon"].client() as c:
        asking = c.start(f"{flows}:asks")
        wait_until(lambda: len(c.approvals(asking)) == 25, timeout=60, what="the approvals asked")
        long = c.start(f"{flows}:many_steps")
        assert c.wait(long, timeout=120)["status"] == "completed"
        total = len(c.state_history(long))
    try:
        wait_until(lambda: own_page.inner_text("#approval-count") == "25", timeout=30, what="the badge at 25")
        own_page.goto(own_ui["base"] + f"/#/s/{long}")
        own_page.click("#tab-history")
        note = own_page.wait_for_selector("#history-note").inner_text()
        assert f"the newest 2000 of {total} state changes" in note and f"labd history {long}" in note
        assert total > 2000
    finally:
        with own_ui["daemon"].client() as c:
            c.stop(asking, 1.0)


def test_a_dag_of_forty_steps_in_a_row_is_drawn_readable_and_its_newest_node_clicks(page: Any,
                                                                                    ui: dict[str, Any]) -> None:
    """40 steps in a row: the DAG is drawn at its own size in a box that scrolls (the newest at the right, in view),
    so a node is as wide as drawn and a click on the newest shows its details. Before, the graph was scaled to the
    page's width: nodes 28x5 px, and a click landed on the SVG, not the node."""
    with ui["daemon"].client() as c:
        sid = c.start("demo.count", params={"n": 40, "delay": 0})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        steps = [n for n in c.dag(sid)["dag"]["nodes"] if n["kind"] == "step"]
    page.goto(ui["base"] + f"/#/s/{sid}")
    page.click("#tab-dag")
    page.wait_for_function(f"document.querySelectorAll('svg.dag g.node').length >= {len(steps)}")
    last = steps[-1]
    node = page.locator(f'svg.dag g.node[data-node="{last["node_id"]}"] rect')
    box = node.bounding_box()
    assert box is not None and box["width"] >= 150 and box["height"] >= 25, box
    node.click()
    page.wait_for_function(f"document.querySelector('#node-detail').textContent.includes('({last['node_id']})')")


def test_a_pause_inside_a_long_step_says_it_is_pausing(page: Any, ui: dict[str, Any]) -> None:
    """Pause on a session inside a long step: the header says it is pausing at the next step boundary while the
    status is still ``running`` (a toast for four seconds was all, and the session looked as if nothing had been
    asked). So does a page that did not ask (the pause came from the CLI), and the session list, from the daemon's
    ``pausing`` (before: only the tab that asked knew); a resume takes it away."""
    with ui["daemon"].client() as c:
        sid = c.start("demo.sleep", params={"seconds": 120})
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="running")
    try:
        page.goto(ui["base"] + f"/#/s/{sid}")
        page.click("#action-pause")
        page.wait_for_selector("#pausing")
        assert "pausing at the next step boundary" in page.inner_text("#session-head")
        assert page.get_attribute("#session-head .status", "data-status") == "running"
        with ui["daemon"].client() as c:
            c.resume(sid)
            assert "pausing" not in c.session(sid)
        page.reload()
        wait_until(lambda: page.query_selector("#session-head h2") is not None, timeout=30, what="the header")
        assert page.query_selector("#pausing") is None
        with ui["daemon"].client() as c:  # asked elsewhere: this page was not the one that asked
            c.pause(sid)
            assert c.session(sid)["pausing"] == {"by": "client", "reason": "pause requested"}
        page.wait_for_selector("#pausing", timeout=30_000)  # the header's next refresh
        page.goto(ui["base"] + "/#/")
        page.wait_for_function("[...document.querySelectorAll('td')].some(t => t.textContent === 'running, pausing')",
                               timeout=30_000)
    finally:
        with ui["daemon"].client() as c:
            c.stop(sid, 1.0)
