"""The widgets of ``labd top``: they only render what the app hands them (no daemon access here)."""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Sparkline, Static, Tree

from labd.frontends.cli.listing import ps_status
from labd.frontends.cli.safetext import text as safe_text

from .format import context_lines, fmt_age, fmt_bytes, fmt_cost, safe, spark, truncate
from .messages import DAG_NODES

__all__ = ["ApprovalScreen", "DagTree", "DetailPane", "FeedbackScreen", "SessionTable", "History"]

#: the sessions that have not ended: a queued one waits in the run queue for its turn ([daemon] max_sessions)
LIVE = ("created", "queued", "starting", "running", "paused", "waiting_approval")
STATUS_STYLE = {"running": "green", "waiting_approval": "bold yellow", "paused": "yellow", "starting": "cyan",
                "created": "cyan", "queued": "magenta", "completed": "dim green", "failed": "red", "cancelled": "dim",
                "lost": "red"}
#: lines of an approval's context shown beside its keys (`v` shows the whole approval)
CONTEXT_LINES = 12
COLUMNS = (("id", "ID", 12), ("name", "NAME", 22), ("status", "STATUS", 16), ("cpu", "CPU%", 6),
           ("cpu_spark", "cpu", 10), ("mem", "MEM", 7), ("mem_spark", "mem", 10), ("cost", "COST", 8),
           ("age", "AGE", 5))
#: levels of steps drawn nested in the DAG tab; deeper steps are drawn beside their parent, with their depth
MAX_DEPTH = 100


class History:
    """The last CPU / memory figures of each session, for sparklines (newest last)."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.cpu: dict[str, deque[float]] = {}
        self.mem: dict[str, deque[float]] = {}

    def add(self, sid: str, live: dict[str, Any] | None) -> None:
        if not live:
            return
        self.cpu.setdefault(sid, deque(maxlen=self.width)).append(float(live.get("cpu_percent") or 0.0))
        self.mem.setdefault(sid, deque(maxlen=self.width)).append(float(live.get("rss") or 0))

    def forget(self, keep: set[str]) -> None:
        for table in (self.cpu, self.mem):
            for sid in [s for s in table if s not in keep]:
                del table[sid]


def status_text(status: str, row: dict[str, Any] | None = None) -> Text:
    """A session's status, coloured; a queued one's place in the run queue (``queued #2``) when ``row`` says it."""
    return Text(ps_status(row) if row is not None else status, style=STATUS_STYLE.get(status, ""))


class SessionTable(DataTable[Any]):
    """Sessions, live ones first, newest first; cells are updated in place, rows rebuilt only when the set changes."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)
        self._order: list[str] = []
        self._cells: dict[str, tuple[Any, ...]] = {}

    def row_cells(self, row: dict[str, Any], hist: History, now: float) -> tuple[Any, ...]:
        sid, live = row["id"], row.get("live") or {}
        alive = row["status"] in LIVE
        # the name as a Text: a string cell is read as markup (a session named "[@click=app.quit]x" ...)
        return (sid, safe(truncate(row.get("name") or "", 22)), status_text(row["status"], row),
                f"{live['cpu_percent']:.0f}" if alive and live else "-",
                spark(hist.cpu.get(sid, ()), 10, top=100.0) if alive else "",
                fmt_bytes(live.get("rss")) if alive and live else fmt_bytes(row.get("peak_rss")),
                spark(hist.mem.get(sid, ()), 10) if alive else "",
                fmt_cost(row.get("cost")), fmt_age(row.get("created_at"), now))

    def show(self, rows: list[dict[str, Any]], hist: History, now: float, selected: str | None) -> None:
        """Show ``rows`` (already filtered and ordered), keeping the cursor on ``selected``."""
        order = [r["id"] for r in rows]
        cells = {r["id"]: self.row_cells(r, hist, now) for r in rows}
        if order != self._order:
            self.clear()
            for sid in order:
                self.add_row(*cells[sid], key=sid)
            self._order = order
            if selected in order:
                self.move_cursor(row=order.index(selected), animate=False)
        else:
            keys = [c[0] for c in COLUMNS]
            for sid in order:
                old = self._cells.get(sid)
                for i, value in enumerate(cells[sid]):
                    if old is None or str(old[i]) != str(value):
                        self.update_cell(sid, keys[i], value)
        self._cells = cells

    def selected_id(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]


class DetailPane(Vertical):
    """The selected session: what it is, how it is doing, sparklines, and the approval waiting for an answer."""

    DEFAULT_CSS = """
    DetailPane { height: 1fr; border: round $primary; padding: 0 1; }
    DetailPane Sparkline { height: 2; margin: 0 0 1 0; }
    DetailPane #approval { color: $warning; margin: 1 0 0 0; }
    """

    def compose(self) -> ComposeResult:
        yield Static("no session selected", id="summary")
        yield Label("cpu %", classes="spark-label")
        yield Sparkline([], id="cpu-spark", summary_function=max)
        yield Label("memory", classes="spark-label")
        yield Sparkline([], id="mem-spark", summary_function=max)
        yield Static("", id="approval")

    def show(self, row: dict[str, Any] | None, hist: History, approval: dict[str, Any] | None,
             activity: dict[str, Any], now: float, *, more: int = 0) -> None:
        summary = self.query_one("#summary", Static)
        if row is None:
            summary.update("no session selected")
            self.query_one("#approval", Static).update("")
            return
        sid, live = row["id"], row.get("live") or {}
        text = Text.assemble((f"{safe_text(str(row.get('name')))}\n", "bold"), (f"{sid} ", "dim"),
                             status_text(row["status"], row), f"  age {fmt_age(row.get('created_at'), now)}\n"
                             f"{safe_text(truncate(row.get('workflow') or '', 48))}")
        if row.get("reason") and row["status"] not in LIVE:
            text.append(f"\n{safe_text(truncate(row['reason'], 200))}", style="dim")
        figures = (f"\ncpu {live.get('cpu_percent', 0):.0f}%  mem {fmt_bytes(live.get('rss'))}  "
                   f"procs {live.get('num_procs', '-')}" if live else
                   f"\npeak cpu {row.get('peak_cpu_percent') or 0:.0f}%  peak mem {fmt_bytes(row.get('peak_rss'))}")
        text.append(figures)
        text.append(f"\ncost {fmt_cost(row.get('cost'))}  events {row.get('last_seq') or 0}")
        if activity.get("agent"):
            text.append(f"\nagent {safe_text(truncate(activity['agent'], 30))}  turns {activity.get('turns', 0)}\n"
                        f"tool calls {activity.get('tools', 0)}  code runs {activity.get('code', 0)}  "
                        f"llm calls {activity.get('llm', 0)}", style="cyan")
        summary.update(text)
        # Textual draws one sample as a full bar (an ended session's read as 100 % CPU): a line needs two
        self.query_one("#cpu-spark", Sparkline).data = _line(hist.cpu.get(sid, ()))
        self.query_one("#mem-spark", Sparkline).data = _line(hist.mem.get(sid, ()))
        box = self.query_one("#approval", Static)
        if approval:
            options = approval.get("options") or []
            keys: list[Any] = []  # the keys of the options this approval has (no "m modify" where it has none)
            for key, word in (("a", "approve"), ("r", "reject"), ("m", "modify")):
                if word in options:
                    keys += [(key, "bold"), f" {word}  "]
            box.update(Text.assemble(("approval waiting ", "bold"), f"({safe_text(str(approval.get('kind')))}): ",
                                     safe_text(truncate(str(approval.get("prompt")), 300)),
                                     f"\noptions: {safe_text(' / '.join(options))}\n", *keys,
                                     "\n", *((("o", "bold"), " other option  ") if other_options(approval) else ()),
                                     ("v", "bold"), " view all",
                                     (f"\n+{more} more pending" if more else "", "dim"),
                                     # below the keys: a long context must not push them out of the pane
                                     approval_context(approval, CONTEXT_LINES)))
        else:
            box.update("")


class DagTree(Tree[Any]):
    """The session's step / agent graph as a tree (``contains`` edges), with status, cost (the node's own and what
    is nested in it) and files per node."""

    ICONS = {"running": "▶", "completed": "✓", "failed": "✗", "cancelled": "■", "skipped": "↷"}

    def show(self, dag: dict[str, Any], files: list[dict[str, Any]]) -> None:
        all_nodes = dag.get("nodes", [])
        # the feed asks for the newest DAG_NODES; a graph given whole is cut the same way
        nodes = {n["node_id"]: n for n in sorted(all_nodes, key=lambda n: _node_key(n["node_id"]))[-DAG_NODES:]}
        total = len(all_nodes) + int(dag.get("nodes_omitted") or 0)
        children: dict[str | None, list[str]] = {}
        for nid, n in nodes.items():
            parent = n.get("parent_node") if n.get("parent_node") in nodes else None
            children.setdefault(parent, []).append(nid)
        files_by_node: dict[str, list[str]] = {}
        for f in files:
            node = f.get("node_id") or f.get("step_node")
            if node:
                files_by_node.setdefault(node, []).append(f["path"])
        self.clear()
        shown = f"the newest {len(nodes)} of {total}" if total > len(nodes) else str(len(nodes))
        self.root.set_label(Text(f"{safe_text(str(dag.get('session', '')))}  ({shown} nodes)", style="bold"))
        key = _node_key

        def add(parent: Any, nid: str, depth: int) -> list[tuple[Any, str, int]]:
            """Add node ``nid`` (at ``depth``) under ``parent``; its children, to add under it (a stack, not recursion:
            steps may be nested thousands deep). Past :data:`MAX_DEPTH` they go beside it, marked with their depth
            (the tree widget draws by recursion and fails on deeper trees)."""
            n = nodes[nid]
            label = Text.assemble((f"{self.ICONS.get(n.get('status') or '', '·')} ", STATUS_STYLE.get(
                n.get("status") or "", "")), (f"{safe_text(nid)} ", "dim"),
                safe_text(truncate(n.get("name") or "", 60)), (f"  {safe_text(str(n.get('kind')))}", "dim"))
            if n.get("duration"):
                label.append(f"  {n['duration']:.1f}s", style="dim")
            if n.get("cost"):
                label.append(f"  {fmt_cost(n['cost'])}", style="green")
            kids = sorted(children.get(nid, []), key=key)
            paths = files_by_node.get(nid, [])
            if paths:
                label.append(f"  files: {', '.join(safe_text(truncate(p, 40)) for p in paths[:4])}"
                             + (f" +{len(paths) - 4}" if len(paths) > 4 else ""), style="magenta")
            if depth > MAX_DEPTH:
                label.append(f"  (depth {depth})", style="dim")
            if kids and depth < MAX_DEPTH:
                branch = parent.add(label, expand=True)
                return [(branch, kid, depth + 1) for kid in reversed(kids)]
            if kids:  # too deep to nest further: the node, then its children beside it
                parent.add_leaf(label)
                return [(parent, kid, depth + 1) for kid in reversed(kids)]
            parent.add_leaf(label)
            return []

        stack = [(self.root, nid, 1) for nid in reversed(sorted(children.get(None, []), key=key))]
        while stack:
            stack.extend(add(*stack.pop()))
        self.root.expand()


def _node_key(nid: str) -> tuple[tuple[int, ...], str]:
    """Node ids in creation order: n2 before n10, a forked child's f3.2 before f3.10."""
    return (tuple(int(n) for n in re.findall(r"\d+", nid)), nid)


#: the decisions the a / r / m keys give; `o` answers with any other option the request offers (redo, custom ones)
KEYED = ("approve", "reject", "modify")


def other_options(approval: dict[str, Any]) -> list[str]:
    """The options of ``approval`` that no key of their own answers."""
    return [str(o) for o in approval.get("options") or [] if o not in KEYED]


class FeedbackScreen(ModalScreen[str | None]):
    """Ask for one line (the feedback of a reject / modify decision, the session filter); Enter sends, Escape
    cancels."""

    DEFAULT_CSS = """
    FeedbackScreen { align: center middle; }
    FeedbackScreen > Vertical { width: 80; height: auto; border: thick $warning; background: $surface; padding: 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, prompt: str, required: bool, *, placeholder: str = "feedback for the agents",
                 value: str = "") -> None:
        super().__init__()
        self.title_text, self.prompt, self.required = title, prompt, required
        self.placeholder, self.value = placeholder, value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(safe_text(self.title_text), style="bold"))
            yield Label(safe(truncate(self.prompt, 300)))  # a Text: an approval's prompt is not markup
            yield Input(value=self.value, placeholder=self.placeholder + ("" if self.required else " (optional)"),
                        id="feedback")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.required and not event.value.strip():
            self.notify(f"{self.placeholder} is required here", severity="warning")
            return
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


def approval_context(approval: dict[str, Any], limit: int | None = None) -> Text:
    """An approval's context (the code a policy asks about, a plan's steps) as lines under its prompt, the first
    ``limit`` of them (None: all); a context too long to be listed (``truncated``, no context) says how to see it."""
    lines = context_lines(approval.get("context"))
    if not lines:
        return Text("\n(its context is too long to list here: v shows the whole approval)" if
                    approval.get("truncated") else "", style="dim")
    shown = lines if limit is None else lines[:limit]
    out = Text("\n" + safe_text("\n".join(shown)), style="")
    if len(shown) < len(lines):
        out.append(f"\n… {len(lines) - len(shown)} more lines (v: the whole approval)", style="dim")
    return out


class ApprovalScreen(ModalScreen[str | None]):
    """The whole of one approval, scrollable: its prompt, options and whole context (the code or plan to decide
    on). ``a`` approves, ``r`` rejects (asking for feedback next), Escape closes."""

    DEFAULT_CSS = """
    ApprovalScreen { align: center middle; }
    ApprovalScreen > VerticalScroll { width: 90%; height: 90%; border: thick $warning; background: $surface;
                                      padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "close", "Close"), Binding("a", "decide('approve')", "Approve"),
                Binding("r", "decide('reject')", "Reject")]

    def __init__(self, approval: dict[str, Any]) -> None:
        super().__init__()
        self.approval = approval

    def compose(self) -> ComposeResult:
        ap = self.approval
        with VerticalScroll():
            yield Label(Text(safe_text(f"approval {ap.get('id')} ({ap.get('kind')}) of {ap.get('session_id')}"),
                             style="bold"))
            yield Static(safe(ap.get("prompt") or ""))
            yield Static(approval_context(ap))
            yield Label(Text(safe_text("options: " + " / ".join(ap.get("options") or [])), style="bold"))

    def action_decide(self, decision: str) -> None:
        self.dismiss(decision)

    def action_close(self) -> None:
        self.dismiss(None)


def _line(samples: Any) -> list[float]:
    """A sparkline's data: the samples, or none (a flat baseline) while there are fewer than two."""
    data = list(samples)
    return data if len(data) >= 2 else []
