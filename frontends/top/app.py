"""The ``labd top`` application: layout, key bindings, and the handlers that turn feed messages into screen updates."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from os import PathLike
from typing import Any, TypeVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Log, RichLog, Static, TabbedContent, TabPane

from labd.frontends.cli.safetext import text as safe_text
from labd.ipc import Client, LabdError

from .answers import ApprovalActions
from .feed import Feed
from .format import OutputShaper, activity_line, matches
from .messages import ConnectionChanged, DagUpdated, EventsArrived, SessionsUpdated
from .widgets import LIVE, DagTree, DetailPane, FeedbackScreen, History, SessionTable

__all__ = ["TopApp"]

H = TypeVar("H", bound=Message)


def feed_handler(fn: Callable[[TopApp, H], None]) -> Callable[[TopApp, H], None]:
    """A handler of a feed message that does nothing once the app is closing (its widgets may be gone)."""

    @functools.wraps(fn)
    def handler(self: TopApp, msg: H) -> None:
        if self._exit or not self.is_running:
            return
        try:
            fn(self, msg)
        except NoMatches:  # the screen is being torn down under a late message
            if not self._exit and self.is_running:
                raise

    return handler

MAX_OUTPUT_LINES = 5000  # the output tab keeps this many lines; older ones stay in the store (`labd logs`)
MAX_ACTIVITY_LINES = 2000


class TopApp(ApprovalActions, App[int]):
    """A live dashboard of a labd daemon's sessions (a client of the public protocol only)."""

    TITLE = "labd top"
    CSS = """
    #banner { display: none; background: $error; color: $text; padding: 0 1; }
    #banner.shown { display: block; }
    #output-note { color: $text-muted; }
    #sessions { height: 2fr; }
    #bottom { height: 3fr; }
    #detail { width: 52; }
    TabbedContent { width: 1fr; }
    """
    BINDINGS = [
        Binding("s", "stop", "Stop"),
        Binding("p", "pause", "Pause"),
        Binding("u", "resume", "Resume"),
        Binding("a", "approve", "Approve"),
        Binding("r", "reject", "Reject"),
        Binding("m", "modify", "Modify"),
        Binding("o", "other", "Other option", show=False),
        Binding("v", "view_approval", "View approval", show=False),
        Binding("K", "kill", "Kill", show=False),
        Binding("e", "toggle_ended", "Ended"),
        Binding("slash", "filter", "Filter"),
        Binding("1", "tab('output')", "Output", show=False),
        Binding("2", "tab('activity')", "Activity", show=False),
        Binding("3", "tab('dag')", "DAG", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        # what every terminal program does on Ctrl-C (Textual's default only hints at Ctrl-Q)
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, home: str | PathLike[str] | None = None, *, clock: Callable[[], float] = time.time,
                 feed_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.home = home
        self.clock = clock  # injectable so a screen snapshot does not depend on the time of day
        self.feed_options = feed_options or {}
        self.feed: Feed | None = None
        self.history = History()
        self.rows: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.selected: str | None = None
        self.shaper = OutputShaper()  # the selected session's output lines, bounded for display
        self.show_ended = True
        self.filter = ""  # the session list's filter (`/`): see format.matches
        self.sessions: list[dict[str, Any]] = []
        self.activity: dict[str, Any] = {}
        self.updates = 0  # screen updates from the feed (the benchmark reads it)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static("", id="banner")
        yield SessionTable(id="sessions")
        with Horizontal(id="bottom"):
            yield DetailPane(id="detail")
            with TabbedContent(initial="output"):
                with TabPane("Output", id="output"):
                    yield Static("", id="output-note")
                    yield Log(max_lines=MAX_OUTPUT_LINES, id="output-log")
                with TabPane("Activity", id="activity"):
                    yield RichLog(max_lines=MAX_ACTIVITY_LINES, wrap=False, markup=False, id="activity-log")
                with TabPane("DAG", id="dag"):
                    yield DagTree("dag", id="dag-tree")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "connecting…"
        self.feed = Feed(self.home, self.post_message, **self.feed_options)
        self.feed.start()
        # Kept, not queried: while a modal screen is up, queries would look at the modal, not at these.
        self.table = self.query_one(SessionTable)
        self.output_log = self.query_one("#output-log", Log)
        self.output_note = self.query_one("#output-note", Static)
        self.output_note.display = False
        self.activity_log = self.query_one("#activity-log", RichLog)
        self.dag_tree = self.query_one(DagTree)
        self.banner = self.query_one("#banner", Static)
        self.detail = self.query_one(DetailPane)
        self.table.focus()

    async def on_unmount(self) -> None:
        if self.feed is not None:
            await self.feed.close()

    # ---- feed messages -----------------------------------------------------------------------------
    @feed_handler
    def on_sessions_updated(self, msg: SessionsUpdated) -> None:
        self.updates += 1
        for row in msg.sessions:
            if row["status"] in LIVE:
                self.history.add(row["id"], row.get("live"))
        self.rows = {r["id"]: r for r in msg.sessions}
        self.history.forget(set(self.rows))
        self.pending = {}
        for ap in msg.approvals:
            self.pending.setdefault(ap["session_id"], []).append(ap)
        self.sessions = msg.sessions
        self.show_sessions()

    def show_sessions(self) -> None:
        """The list as the last update has it, with ended sessions (unless hidden) and the filter applied."""
        sessions = self.sessions
        live = [r for r in sessions if r["status"] in LIVE]
        shown = live + ([r for r in sessions if r["status"] not in LIVE] if self.show_ended else [])
        shown = [r for r in shown if matches(r, self.filter)]
        table = self.table
        with table.prevent(DataTable.RowHighlighted):  # a rebuild must not switch the followed session
            table.show(shown, self.history, self.clock(), self.selected)
        if self.selected not in {r["id"] for r in shown}:
            self.select(table.selected_id())
        waiting = sum(1 for r in live if r["status"] == "waiting_approval")
        self.sub_title = (f"{len(live)} live / {len(sessions)} sessions"
                          + (f" · {waiting} waiting for approval" if waiting else "")
                          + (f" · filter {self.filter!r}: {len(shown)} shown" if self.filter else ""))
        self.refresh_detail()

    @feed_handler
    def on_events_arrived(self, msg: EventsArrived) -> None:
        if msg.session != self.selected:
            return
        self.updates += 1
        chunks: list[str] = []
        if msg.skipped:  # above the log, not in it: the log trims its oldest lines
            self.output_note.update(Text(f"… {msg.skipped} earlier events not loaded (labd logs {msg.session} has "
                                         "them)"))
            self.output_note.display = True
        lines = []
        act = self.activity
        for ev in msg.events:
            kind, p = ev["kind"], ev.get("payload") or {}
            if kind == "output":
                chunks.append(self.shaper.output(p.get("text", "")))
                continue
            if kind == "log":
                fields = " ".join(f"{k}={v}" for k, v in (p.get("fields") or {}).items() if k != "session_id")
                chunks.append(self.shaper.line(f"[{p.get('level')}] {p.get('event')} {fields}".rstrip()))
                continue
            if kind == "session.ended":
                chunks.append(self.shaper.line(f"== session {p.get('status')}: {p.get('reason')}"))
            if p.get("agent"):
                act["agent"] = p["agent"]
            act["turns"] = act.get("turns", 0) + (kind == "agent.turn.started")
            act["tools"] = act.get("tools", 0) + (kind == "tool.call")
            act["code"] = act.get("code", 0) + (kind == "code.execution")
            act["llm"] = act.get("llm", 0) + (kind == "llm.request")
            line = activity_line(ev)
            if line is not None:
                lines.append(line)
        if chunks:
            self._write_output("".join(chunks))
        if lines:
            log = self.activity_log
            if len(lines) > MAX_ACTIVITY_LINES:
                log.write(f"… {len(lines) - MAX_ACTIVITY_LINES} activity lines not shown")
                lines = lines[-MAX_ACTIVITY_LINES:]
            for line in lines:
                log.write(line)
        self.refresh_detail()

    def _write_output(self, text: str) -> None:
        """Append to the output tab; a burst longer than the tab keeps only its tail (the store has it all)."""
        log = self.output_log
        if text.count("\n") > MAX_OUTPUT_LINES:
            parts = text.split("\n")
            dropped = len(parts) - MAX_OUTPUT_LINES
            text = f"… {dropped} lines not shown (labd logs has them)\n" + "\n".join(parts[-MAX_OUTPUT_LINES:])
        log.write(text)

    @feed_handler
    def on_dag_updated(self, msg: DagUpdated) -> None:
        if msg.session == self.selected:
            self.dag_tree.show(msg.dag, msg.files)

    @feed_handler
    def on_connection_changed(self, msg: ConnectionChanged) -> None:
        banner = self.banner
        if msg.connected:
            banner.remove_class("shown")
        else:
            banner.update(Text(f"daemon unreachable: {msg.detail} — retrying; showing the last known state"))
            banner.add_class("shown")

    # ---- selection ---------------------------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.select(event.row_key.value)

    def select(self, sid: str | None) -> None:
        """Follow ``sid``: its output, activity and DAG replace the previous session's."""
        if sid == self.selected:
            return
        self.selected = sid
        self.activity = {}
        self.output_log.clear()
        self.shaper.reset()
        self.output_note.display = False
        self.activity_log.clear()
        self.dag_tree.clear()
        if self.feed is not None:
            self.feed.follow(sid)
        self.refresh_detail()

    def refresh_detail(self) -> None:
        sid = self.selected
        pending = self.pending.get(sid or "") or []
        more = len(pending) - 1 + (pending[-1].get("more_pending") or 0) if pending else 0  # besides the one shown
        self.detail.show(self.rows.get(sid or ""), self.history, pending[0] if pending else None,
                         self.activity, self.clock(), more=more)

    # ---- actions -----------------------------------------------------------------------------------
    def _request(self, what: str, fn: Callable[[Client, str], Any]) -> None:
        sid, feed = self.selected, self.feed
        if sid is None or feed is None:
            self.notify("no session selected", severity="warning")
            return

        async def go() -> None:
            try:
                await feed.call(lambda c: fn(c, sid))
            except LabdError as exc:
                self.notify(safe_text(f"{what} {sid}: {exc.message}"), severity="error", markup=False)
                return
            feed.refresh()
            self.notify(f"{what}: {sid}")

        self.run_worker(go(), group="requests")

    def action_stop(self) -> None:
        self._request("stop", lambda c, s: c.stop(s))

    def action_kill(self) -> None:
        self._request("kill", lambda c, s: c.kill(s))

    def action_pause(self) -> None:
        self._request("pause", lambda c, s: c.pause(s, reason="paused from labd top"))

    def action_resume(self) -> None:
        self._request("resume", lambda c, s: c.resume(s))

    def action_toggle_ended(self) -> None:
        self.show_ended = not self.show_ended
        self.notify("showing ended sessions" if self.show_ended else "hiding ended sessions")
        self.show_sessions()

    def action_filter(self) -> None:
        def done(query: str | None) -> None:
            if query is not None:  # Escape keeps the filter as it was; an empty line clears it
                self.filter = query
                self.show_sessions()

        self.push_screen(FeedbackScreen("filter sessions", "words that must all occur in a session's id, name, "
                                        "workflow, status or key=value tag; empty shows all", required=False,
                                        placeholder="e.g. running study", value=self.filter), done)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if self.feed is not None:  # the DAG (3 requests and a tree rebuild) is fetched only while visible
            self.feed.dag_wanted = event.pane.id == "dag"
            self.feed.refresh()

    def action_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()
