"""`labd top`, driven headless with Textual's pilot (key presses, screen contents) against real daemons."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from labd.frontends.top.app import TopApp
from tests.conftest import DaemonProc, kill_runners

SIZE = (140, 44)
SNAPSHOTS = Path(__file__).parent / "snapshots"


def screen_text(app: TopApp) -> str:
    """What the terminal shows, as plain text lines."""
    return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips())


def output_lines(app: TopApp) -> list[str]:
    return [line for line in app.output_log.lines if line]


def table_rows(app: TopApp) -> dict[str, list[str]]:
    table = app.table
    return {str(key.value): [str(c) for c in table.get_row(key)] for key in table.rows}


async def until(pred: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Await ``pred()`` becoming truthy while the app keeps running; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        await asyncio.sleep(0.05)


async def answered_elsewhere(app: TopApp, c: Any, sid: str) -> None:
    """``two_reviews``' first approval approved by another client, and top polled the second since."""
    c.approve(sid)
    await until(lambda: any(a["prompt"] == "Run the second program?" for a in app.pending.get(sid, [])),
                what="the second approval pending in top")


def run_app(home: Path, scenario: Callable[[TopApp, Any], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        app = TopApp(home, **kw)
        async with app.run_test(size=SIZE) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())


def test_list_shows_sessions_and_updates_live(daemon: DaemonProc) -> None:
    """The list shows running sessions with live figures, gains a session started later, and shows a stop."""
    c = daemon.client()
    first = c.start("demo.sleep", params={"seconds": 60})

    async def scenario(app: TopApp, pilot: Any) -> None:
        rows = await until(lambda: table_rows(app).get(first), what="first session listed")
        assert "running" in rows[2] or "starting" in rows[2]
        await until(lambda: table_rows(app)[first][5] not in ("-", ""), what="live memory figure")
        second = c.start("demo.sleep", params={"seconds": 60})
        await until(lambda: second in table_rows(app), what="a session started later appears")
        c.stop(second, grace=0)
        await until(lambda: table_rows(app)[second][2] == "cancelled", what="the stop shows")
        assert table_rows(app)[first][2] == "running"
        assert "1 live / 2 sessions" in (app.sub_title or "")

    try:
        run_app(daemon.home, scenario)
    finally:
        c.close()


def test_selecting_a_session_follows_its_output(daemon: DaemonProc) -> None:
    """The newest session is followed at first; moving the cursor follows another one's output instead."""
    c = daemon.client()
    alpha = c.start("demo.count", params={"n": 400, "delay": 0.05, "label": "alpha"})
    beta = c.start("demo.count", params={"n": 400, "delay": 0.05, "label": "beta"})

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == beta, what="newest session selected")
        await until(lambda: any(line.startswith("beta ") for line in output_lines(app)), what="beta's output")
        await pilot.press("down")
        await until(lambda: app.selected == alpha, what="alpha selected")
        await until(lambda: len(output_lines(app)) >= 5, what="alpha's output")
        lines = output_lines(app)
        assert all(not line.startswith("beta ") for line in lines), lines[:10]
        assert any(line.startswith("alpha ") for line in lines)
        n = len(output_lines(app))
        await until(lambda: len(output_lines(app)) > n + 3, what="alpha's output grows live")
        await pilot.press("3")  # the DAG tab: the steps, with their statuses
        await until(lambda: "alpha 1" in screen_text(app) and "✓" in screen_text(app), what="the DAG tree")

    try:
        run_app(daemon.home, scenario)
    finally:
        c.close()


def test_agent_activity_and_dag(daemon: DaemonProc) -> None:
    """An agent session's activity tab shows its turns, LLM calls, tool calls, code runs and costs; the detail
    pane counts them; the DAG tab shows the agent-turn nodes with their cost and the file a turn wrote."""
    c = daemon.client()
    sid = c.start("labd_testflows:agent_flow")
    c.wait(sid, timeout=60)
    c.close()

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid, what="selected")
        await pilot.press("2")
        await until(lambda: "→ run_code(" in screen_text(app), what="the tool call in the activity tab")
        text = screen_text(app)
        assert "▶ my_engineer turn starts" in text and "ran python → exit 0" in text and "$0.0" in text
        assert "tool calls 1  code runs 1" in text
        await pilot.press("3")
        await until(lambda: "step_7.json" in screen_text(app), what="the file on its node in the DAG tab")
        assert "✓ n1" in screen_text(app)

    run_app(daemon.home, scenario)


def test_long_output_shows_its_tail(daemon: DaemonProc) -> None:
    """Selecting a session that printed 200,000 lines loads only its tail: the last line is shown, the tab
    holds at most its 5,000 lines, and a line says that earlier events were not loaded."""
    c = daemon.client(timeout=30)
    sid = c.start("demo.chatty", params={"lines": 200_000, "width": 40})
    c.wait(sid, timeout=60)
    c.close()

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid and any("line 000199999" in x for x in output_lines(app)),
                    what="the last line")
        lines = output_lines(app)
        assert len(lines) <= 5001
        await until(lambda: "earlier events not loaded" in screen_text(app), what="the note above the log")
        assert len(set(lines)) == len(lines), "a line shown twice"
        assert lines[-1].startswith("== session completed")

    run_app(daemon.home, scenario)


def test_approval_answered_in_place(daemon: DaemonProc) -> None:
    """`a` approves the selected session's pending approval; `m` + feedback + Enter modifies another's."""
    c = daemon.client()
    first = c.start("labd_testflows:review_once")
    second = c.start("labd_testflows:review_once")

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == second, what="newest selected")
        await until(lambda: "approval waiting" in screen_text(app), what="the approval shows")
        assert "Publish the draft?" in screen_text(app)
        await pilot.press("m")
        await until(lambda: app.screen.query("#feedback"), what="the feedback box")
        await pilot.press(*["space" if ch == " " else ch for ch in "use blue"], "enter")
        await until(lambda: c.session(second)["status"] == "completed", what="second completed")
        await until(lambda: "decision=modify feedback=use blue" in output_lines(app), what="modified in output")
        # Live sessions are listed first: the ended one moved below the one still waiting.
        await until(lambda: list(table_rows(app)) == [first, second], what="the ended session moves down")
        await pilot.press("up")
        await until(lambda: app.selected == first and "approval waiting" in screen_text(app), what="first waits")
        await pilot.press("a")
        await until(lambda: c.session(first)["status"] == "completed", what="first completed")
        await until(lambda: "decision=approve feedback=None" in output_lines(app), what="approved in output")
        approvals = {a["session_id"]: a for a in c.approvals(status="all")}
        assert approvals[first]["resolved_by"] == "labd top"
        assert approvals[second]["decision"] == "modify"

    try:
        run_app(daemon.home, scenario)
    finally:
        c.close()


def test_an_approval_shows_the_code_it_asks_about_and_v_shows_all_of_it(daemon: DaemonProc) -> None:
    """An approval of code shows the code beside its keys (it showed only the prompt: a human approved code never
    shown), only the keys of its options (no ``m modify`` for approve / reject), and ``v`` opens the whole approval,
    whose context the polled list leaves out when long (here 200 lines), where ``a`` approves it."""
    c = daemon.client()
    sid = c.start("labd_testflows:review_code")

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid and "approval waiting" in screen_text(app), what="the approval")
        await until(lambda: "context is too long to list here" in screen_text(app), what="the context's note")
        assert "m modify" not in screen_text(app) and "a approve" in screen_text(app)
        await pilot.press("v")
        await until(lambda: "print(0)  # step 0 of the program" in screen_text(app), what="the code shown")
        shown = app.screen.query_one("VerticalScroll")
        await until(lambda: shown.max_scroll_y > 0, what="the code laid out")
        shown.scroll_end(animate=False)
        await until(lambda: "# the last line" in screen_text(app), what="the code's last line")
        await pilot.press("a")
        await until(lambda: c.session(sid)["status"] == "completed", what="approved and completed")
        (answered,) = c.approvals(sid, status="resolved")
        assert (answered["decision"], answered["resolved_by"]) == ("approve", "labd top")

    try:
        run_app(daemon.home, scenario)
    finally:
        c.close()


def test_r_in_the_approval_view_answers_the_approval_viewed(daemon: DaemonProc) -> None:
    """``r`` in the view of an approval answers that approval, not whatever is pending when it is pressed: with the
    viewed one answered elsewhere meanwhile and the session's next approval pending, the reject is refused (the viewed
    one is no longer pending) and the next approval, never shown, stays pending."""
    c = daemon.client()
    sid = c.start("labd_testflows:two_reviews")

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid and "Run the first program?" in screen_text(app), what="the first")
        await pilot.press("v")
        await until(lambda: app.screen.query("VerticalScroll"), what="the approval view")
        await answered_elsewhere(app, c, sid)  # while the view is open
        await pilot.press("r")
        await until(lambda: app.screen.query("#feedback"), what="the feedback box")
        await pilot.press("enter")
        await until(lambda: any("is not pending" in n.message for n in app._notifications), what="the refusal")
        assert [a["prompt"] for a in c.approvals(sid)] == ["Run the second program?"]

    try:
        run_app(daemon.home, scenario)
    finally:
        c.kill(sid)
        c.close()


def test_v_on_an_approval_answered_elsewhere_says_so(daemon: DaemonProc) -> None:
    """``v`` on an approval answered elsewhere since top last polled says it is no longer pending, and opens no view
    (the view showed the polled, cut copy with "v shows the whole approval": a note pointing at itself)."""
    c = daemon.client()
    sid = c.start("labd_testflows:two_reviews")

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid and "Run the first program?" in screen_text(app), what="the first")
        stale = list(app.pending[sid])
        await answered_elsewhere(app, c, sid)
        app.pending[sid] = stale  # top's list as it was before its next poll
        app.action_view_approval()
        await until(lambda: any("is no longer pending" in n.message for n in app._notifications),
                    what="the note")
        assert not app.screen.query("VerticalScroll")  # no view of a cut copy
        assert [a["prompt"] for a in c.approvals(sid)] == ["Run the second program?"]

    try:
        run_app(daemon.home, scenario)
    finally:
        c.kill(sid)
        c.close()


def test_a_short_context_shows_in_the_detail_pane(daemon: DaemonProc) -> None:
    """A code approval whose context fits the list shows its code in the detail pane itself."""
    c = daemon.client()
    sid = c.start("labd_testflows:review_code", params={"lines": 3})

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid and "approval waiting" in screen_text(app), what="the approval")
        await until(lambda: "print(1)  # step 1 of the program" in screen_text(app), what="the code in the pane")
        assert "# the last line" in screen_text(app)

    try:
        run_app(daemon.home, scenario)
    finally:
        c.kill(sid)
        c.close()


def test_o_answers_with_an_option_no_key_gives(daemon: DaemonProc) -> None:
    """`o` answers the selected session's approval with an option of its own (here hitl's ``redo`` after planning,
    with a hypothesis): top could give only approve, reject and modify, so a redo or a workflow's own options had
    to be answered elsewhere."""
    c = daemon.client()
    sid = c.start("hitl", params={"task": "Plain.\n- one\n- two", "max_steps": 2})

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid, what="the session selected")
        await until(lambda: "o other option" in screen_text(app), what="the approval offers other options")
        await pilot.press("o")
        await until(lambda: app.screen.query("#feedback"), what="the option box")
        assert app.screen.query_one("#feedback").value == "redo"  # the only other option, filled in
        await pilot.press("enter")
        await until(lambda: "the hypothesis to try" in screen_text(app), what="the hypothesis box")
        await pilot.press(*"kelvin", "enter")
        await until(lambda: [a for a in c.approvals(sid, status="resolved")], what="the approval answered")
        (answered,) = c.approvals(sid, status="resolved")
        assert (answered["decision"], answered["hypothesis"], answered["resolved_by"]) == ("redo", "kelvin",
                                                                                           "labd top")

    try:
        run_app(daemon.home, scenario)
    finally:
        c.kill(sid)
        c.close()


def test_pause_resume_and_stop_keys(daemon: DaemonProc) -> None:
    """`p` pauses the selected session, `u` resumes it, `s` stops it (ended cancelled, by the client)."""
    c = daemon.client()
    sid = c.start("demo.count", params={"n": 10_000, "delay": 0.05})

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid and c.session(sid)["status"] == "running", what="running")
        await pilot.press("p")
        await until(lambda: table_rows(app)[sid][2] == "paused", what="paused shows")
        await pilot.press("u")
        await until(lambda: table_rows(app)[sid][2] == "running", what="running again")
        await pilot.press("s")
        await until(lambda: table_rows(app)[sid][2] == "cancelled", what="stopped")
        assert c.session(sid)["stop_by"] == "client"
        await until(lambda: any(line.startswith("== session cancelled") for line in output_lines(app)),
                    what="the end shows in the output")

    try:
        run_app(daemon.home, scenario)
    finally:
        c.close()


def test_daemon_restart_resumes_without_loss_or_duplicates(daemon: DaemonProc) -> None:
    """After a daemon is killed and another starts on the same home, the app resumes the followed session
    from the last seq it saw: new output keeps coming, each line exactly once and in order."""
    c = daemon.client(timeout=5)
    sid = c.start("labd_testflows:ticker", params={"n": 300, "delay": 0.05})
    c.close()
    restarted: list[DaemonProc] = []

    def ticks(app: TopApp) -> list[int]:
        return [int(line.split()[1]) for line in output_lines(app) if line.startswith("tick ")]

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid and len(ticks(app)) >= 10, what="ticks before the restart")
        await asyncio.to_thread(daemon.kill9)
        await until(lambda: "daemon unreachable" in screen_text(app), what="the outage shows")
        seen = max(ticks(app))
        restarted.append(await asyncio.to_thread(DaemonProc(daemon.home).start))
        await until(lambda: max(ticks(app)) > seen + 20, timeout=60, what="ticks after the restart")
        await until(lambda: "daemon unreachable" not in screen_text(app), what="the banner goes")
        got = ticks(app)
        assert got == list(range(got[0], got[0] + len(got))), "output lost or duplicated across the restart"

    try:
        run_app(daemon.home, scenario)
    finally:
        for d in restarted:
            d.stop()
        kill_runners(daemon.home)


def test_screen_snapshot_without_a_daemon(isolated_env: Path) -> None:
    """At a fixed size and clock, with no daemon, the screen is exactly the baseline: the layout, column
    headers, tabs, the outage banner and the key bindings in the footer. Regenerate on purpose with
    LABD_UPDATE_SNAPSHOTS=1."""
    baseline = SNAPSHOTS / "top_no_daemon.txt"
    got: list[str] = []

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: "daemon unreachable" in screen_text(app), what="the outage banner")
        await pilot.pause()
        got.append(screen_text(app).replace(str(isolated_env), "<home>"))
        await pilot.press("question_mark")  # the help panel lists every key binding
        await until(lambda: app.screen.query("HelpPanel") and "Modify" in screen_text(app), what="help panel")

    run_app(isolated_env, scenario, clock=lambda: 1_800_000_000.0)
    if os.environ.get("LABD_UPDATE_SNAPSHOTS"):
        baseline.write_text(got[0] + "\n")
    assert got[0] + "\n" == baseline.read_text()


def test_ctrl_c_and_q_quit(isolated_env: Path) -> None:
    """Ctrl-C quits `labd top` like any terminal program (Textual's own default only shows a hint), and so
    does `q`; neither stops a session or the daemon (there is none here: quitting must not wait for it)."""
    codes: dict[str, Any] = {}
    for key in ("ctrl+c", "q"):

        async def scenario(app: TopApp, pilot: Any, key: str = key) -> None:
            await until(lambda: "daemon unreachable" in screen_text(app), what="the outage banner")
            await pilot.press(key)
            await until(lambda: app.return_code is not None, what=f"the app to quit on {key}")
            codes[key] = app.return_code

        run_app(isolated_env, scenario)
    assert codes == {"ctrl+c": 0, "q": 0}


def test_filter_narrows_the_list_and_clears(daemon: DaemonProc) -> None:
    """`/` asks for a filter: only sessions whose id, name, workflow, status or tag hold every word stay listed
    (also ones that start later), the title says so, Escape keeps it and an empty filter shows all again."""
    c = daemon.client()
    alpha = c.start("demo.count", name="alpha-run", params={"n": 1, "delay": 0.01}, tags={"team": "vision"})
    beta = c.start("demo.count", name="beta-run", params={"n": 1, "delay": 0.01})

    async def type_filter(pilot: Any, text: str, clear: int = 0) -> None:
        await pilot.press("slash")
        await pilot.press(*(["backspace"] * clear), *text, "enter")

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: {alpha, beta} <= set(table_rows(app)), what="both sessions listed")
        await type_filter(pilot, "team=vision")
        await until(lambda: set(table_rows(app)) == {alpha}, what="only the tagged session")
        assert "filter 'team=vision': 1 shown" in (app.sub_title or "")
        gamma = c.start("demo.count", name="gamma-run", params={"n": 1, "delay": 0.01}, tags={"team": "vision"})
        await until(lambda: set(table_rows(app)) == {alpha, gamma}, what="a later matching session appears")
        await pilot.press("slash", "x", "escape")  # Escape: the filter stays as it was
        await until(lambda: app.screen is app.screen_stack[0], what="the filter prompt to close")
        assert set(table_rows(app)) == {alpha, gamma}
        await type_filter(pilot, "", clear=len("team=vision"))
        await until(lambda: {alpha, beta, gamma} <= set(table_rows(app)), what="every session again")
        assert "filter" not in (app.sub_title or "")

    try:
        run_app(daemon.home, scenario)
    finally:
        c.close()


def test_dag_tab_of_steps_nested_deeper_than_the_recursion_limit(daemon: DaemonProc) -> None:
    """The DAG tab of a session whose steps are nested 1,100 deep shows its newest 1,000 nodes, those past 100 levels
    beside their parent with their depth, and the dashboard goes on; before: building the tree failed with a
    RecursionError (the tab showed none of its nodes)."""
    c = daemon.client()
    sid = c.start("labd_testflows:deep")
    assert c.wait(sid, timeout=90)["status"] == "completed"
    c.close()

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid, what="selected")
        await pilot.press("3")
        await until(lambda: "the newest 1000 of 1100 nodes" in screen_text(app), what="the DAG tab's tree")
        await until(lambda: app.dag_tree.last_line >= 999, what="every node shown")
        await pilot.press("1")
        await until(lambda: sid in screen_text(app), what="the dashboard still drawing")

    run_app(daemon.home, scenario)


def test_dag_tab_of_a_long_session_shows_the_files_of_its_newest_nodes(daemon: DaemonProc, monkeypatch: Any) -> None:
    """Past the tab's node limit (made 6 here: 1,000 in use) the DAG tab reads only the files recorded since its
    oldest node started, and still shows each kept node's files, those of a step and of the agent turn in it; the
    older rounds' files are not shown."""
    from labd.frontends.top import feed, widgets

    monkeypatch.setattr(feed, "DAG_NODES", 6)
    monkeypatch.setattr(widgets, "DAG_NODES", 6)
    c = daemon.client()
    sid = c.start("labd_testflows:graph_rounds", params={"rounds": 8})
    assert c.wait(sid, timeout=120)["status"] == "completed"
    nodes = c.dag(sid)["dag"]["nodes"]
    c.close()

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid, what="selected")
        await pilot.press("3")
        await until(lambda: f"the newest 6 of {len(nodes)} nodes" in screen_text(app), what="the DAG tab's tree")
        await until(lambda: "round_6.txt" in screen_text(app), what="the oldest kept step's file")
        text = screen_text(app)
        assert all(f in text for f in ("round_7.txt", "round_8.txt", "step_6.json", "step_8.json"))
        assert "round_5.txt" not in text and "step_5.json" not in text

    run_app(daemon.home, scenario)
