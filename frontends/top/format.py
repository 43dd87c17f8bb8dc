"""Pure formatting for ``labd top``: numbers stay numbers until here (sparklines, sizes, ages, activity lines).

Text a session chose (its output, names, messages, prompts) is shown with its control characters as escapes
(:mod:`labd.frontends.cli.safetext`: Textual writes a widget's text to the terminal as it is, escape sequences
included), and only ever as a ``Text`` or plain ``Log`` line, never as a string a widget reads as markup
(``[@click=app.quit]`` in a name would be an action, ``[link=...]`` a link).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.text import Text

from labd.frontends.cli.safetext import plain, text

__all__ = ["MAX_LINE", "OutputShaper", "activity_line", "context_lines", "fmt_age", "fmt_bytes", "fmt_cost", "matches",
           "safe", "spark", "truncate"]

MAX_LINE = 400  # characters of one output line shown; the store keeps the whole line (`labd logs` has it)
BLOCKS = "▁▂▃▄▅▆▇█"


def truncate(line: str, limit: int = MAX_LINE) -> str:
    """One line cut to ``limit`` characters, saying how much was cut (display only)."""
    if len(line) <= limit:
        return line
    return f"{line[:limit]}… (+{len(line) - limit} chars)"


def safe(value: Any) -> Text:
    """A name, message or prompt of a session as a ``Text`` (never read as markup), its control characters shown
    as escapes (:func:`labd.frontends.cli.safetext.text`)."""
    return Text(text(str(value)), end="")


class OutputShaper:
    """A session's output made into display lines for the output pane, across chunks: each line shown up to
    ``limit`` characters, then ``…`` and, once it ends, how much was not shown; a carriage return (a progress bar's
    update) starts a new display line with the text after the last one in the chunk. Colour sequences are dropped
    and other control characters shown as escapes (:func:`safetext.plain`): the pane is plain text, which Textual
    writes to the terminal as it is. A line without a newline grew without end (one ``… (+N chars)`` per chunk,
    hundreds of MB, the UI stalled seconds at a time: UI review); now what a line holds is bounded."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.shown = 0  # characters of the current line shown
        self.hidden = 0  # ... and not shown (past the limit)
        self.cr = False  # the last chunk ended in a carriage return: a newline next makes it a line's end (CRLF)

    def output(self, chunk: str) -> str:
        """The display text of an ``output`` event's text (partial lines stay open for the next chunk)."""
        out: list[str] = []
        if self.cr and chunk and not chunk.startswith("\n"):  # a carriage return before more text: a new line
            out.append(self._end())
        if chunk:  # an empty one changes nothing (it dropped a pending carriage return)
            self.cr = chunk.endswith("\r")
        lines = chunk.replace("\r\n", "\n").rstrip("\r").split("\n")  # CRLF ends a line like LF (it showed empty lines)
        for i, line in enumerate(lines):
            if "\r" in line:  # what a terminal would show: the text after the last carriage return, on a new line
                line = line.rsplit("\r", 1)[1]
                if self.shown or self.hidden:
                    out.append(self._end())
            self._add(plain(line), out)
            if i < len(lines) - 1:
                out.append(self._end())
        return "".join(out)

    def line(self, text_: str) -> str:
        """A whole line of labd's own (a log record, the session's end) on a line of its own."""
        head = self._end() if self.shown or self.hidden else ""
        out: list[str] = [head]
        self._add(plain(text_), out)
        out.append(self._end())
        return "".join(out)

    def reset(self) -> None:
        """Another session's output follows."""
        self.shown = self.hidden = 0
        self.cr = False

    def _add(self, piece: str, out: list[str]) -> None:
        room = self.limit - self.shown
        if len(piece) <= room:
            out.append(piece)
            self.shown += len(piece)
            return
        if room > 0:
            out.append(piece[:room] + "…")
            self.shown = self.limit
        self.hidden += len(piece) - max(room, 0)

    def _end(self) -> str:
        tail = f" (+{self.hidden} chars)" if self.hidden else ""
        self.shown = self.hidden = 0
        return tail + "\n"


def context_lines(context: Any) -> list[str]:
    """An approval's context as a human reads it before deciding: each field on lines of its own, a text of several
    lines (the code a policy asks about) as it is written, anything else (a plan's steps) as indented JSON."""
    if context is None:
        return []
    if not isinstance(context, dict):
        return json.dumps(context, indent=2, ensure_ascii=False, default=str).splitlines()
    out: list[str] = []
    for key, value in context.items():
        if isinstance(value, str) and "\n" not in value:
            out.append(f"{key}: {value}")
        elif isinstance(value, str):
            out += [f"{key}:", *("  " + line for line in value.splitlines())]
        elif isinstance(value, list):  # e.g. a plan's steps: one line each
            out += [f"{key}:", *(f"  - {_compact(item)}" for item in value)]
        elif isinstance(value, dict):
            out += [f"{key}:", *(f"  {k}: {_compact(v)}" for k, v in value.items())]
        else:
            out.append(f"{key}: {_compact(value)}")
    return out


def _compact(value: Any) -> str:
    """A value on one line: a mapping as ``key: value, ...``, a text as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_compact(v)}" for k, v in value.items())
    return json.dumps(value, ensure_ascii=False, default=str)


def matches(row: dict[str, Any], query: str) -> bool:
    """Does a session row match the list's filter? Every word of ``query`` must occur (case-insensitively) in
    its id, name, workflow, status or a ``key=value`` tag; an empty query matches every session."""
    words = query.lower().split()
    if not words:
        return True
    tags = row.get("tags") or {}
    hay = " ".join([str(row.get(k) or "") for k in ("id", "name", "workflow", "status")]
                   + [f"{k}={v}" for k, v in tags.items()]).lower()
    return all(w in hay for w in words)


def spark(values: Iterable[float], width: int = 10, top: float | None = None) -> str:
    """A text sparkline of the last ``width`` values, scaled to ``top`` (default: their maximum)."""
    vals = list(values)[-width:]
    if not vals:
        return " " * width
    hi = max(top or 0.0, max(vals)) or 1.0
    chars = [BLOCKS[min(len(BLOCKS) - 1, int(max(0.0, v) / hi * (len(BLOCKS) - 1) + 0.5))] for v in vals]
    return "".join(chars).rjust(width)


def fmt_bytes(n: float | None) -> str:
    """Bytes in binary units, ``-`` for none."""
    if not n:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit in ("B", "K") else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"  # unreachable: the loop returns at "G"


def fmt_age(start: float | None, now: float) -> str:
    """How long ago ``start`` was, in the largest fitting unit."""
    if not start:
        return "-"
    s = max(0.0, now - start)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def fmt_cost(cost: float | None) -> str:
    """USD with enough digits for offline-cheap sessions, ``-`` when nothing was spent."""
    if not cost:
        return "-"
    return f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return truncate(" ".join(text.split()), limit)


STYLES = {"agent": "bold cyan", "tool": "magenta", "code": "yellow", "cost": "green", "step": "blue",
          "approval": "bold yellow", "session": "bold", "error": "bold red", "file": "dim"}


def activity_line(ev: dict[str, Any]) -> Text | None:
    """One line of agent/step activity for an event, or ``None`` for kinds that are not activity (output, log)."""
    kind, p, node = ev["kind"], ev.get("payload") or {}, ev.get("node_id") or ""
    tag = f"{node:>4} " if node else "     "
    agent = p.get("agent", "")
    if kind == "agent.turn.started":
        body, style = f"▶ {agent} turn starts" + (f": {_short(p['input'], 80)}" if p.get("input") else ""), "agent"
    elif kind == "agent.turn.finished":
        body, style = f"■ {agent} turn {p.get('status')} in {p.get('duration', 0):.1f}s", "agent"
    elif kind == "agent.message":
        body, style = f"{agent}: {_short(p.get('content', ''))}", "agent"
    elif kind == "llm.response":
        usage = p.get("usage") or {}
        body = (f"{agent} ← {p.get('model')} {p.get('status')} {usage.get('total_tokens', 0)} tok "
                f"{p.get('duration', 0):.1f}s")
        style = "agent" if p.get("status") == "ok" else "error"
    elif kind == "tool.call":
        body, style = f"{agent} → {p.get('name')}({_short(p.get('arguments', ''), 80)})", "tool"
    elif kind == "tool.result":
        body, style = f"{agent} ← {p.get('name')} {p.get('status')} {p.get('duration', 0):.2f}s", "tool"
    elif kind == "code.execution":
        body, style = (f"{agent} ran {p.get('language')} → exit {p.get('exit_code')} "
                       f"({p.get('duration', 0):.2f}s)"), "code"
    elif kind == "cost.recorded":
        body, style = (f"{agent} ${p.get('cost', 0):.4f} {p.get('model')} "
                       f"({p.get('prompt_tokens', 0)}+{p.get('completion_tokens', 0)} tok)"), "cost"
    elif kind in ("subagent.started", "subagent.finished"):
        body, style = f"{agent} ⇢ {p.get('child')} {kind.split('.')[1]} {_short(p.get('objective', ''), 60)}", "agent"
    elif kind == "step.started":
        body, style = f"┌ {p.get('kind', 'step')} {p.get('name')}", "step"
    elif kind == "step.finished":
        body = f"└ {p.get('name')} {p.get('status')} {p.get('duration', 0):.2f}s"
        style = "step" if p.get("status") != "failed" else "error"
    elif kind == "policy.decision" and (p.get("rule") or p.get("outcome") != "allowed"):
        what = p.get("tool") or p.get("model") or p.get("language") or ""
        body = f"policy {p.get('rule') or '(default)'}: {p.get('outcome')} {p.get('action')} {what}".rstrip()
        style = "error" if p.get("outcome") == "denied" else "approval"
    elif kind == "approval.requested":
        body, style = f"? approval {p.get('kind')}: {_short(p.get('prompt', ''))} {p.get('options')}", "approval"
    elif kind == "approval.resolved":
        fb = f" — {_short(p['feedback'], 80)}" if p.get("feedback") else ""
        body, style = f"✓ approval {p.get('decision')} by {p.get('by')}{fb}", "approval"
    elif kind in ("file.created", "file.changed"):
        body, style = f"{kind.split('.')[1]} {p.get('path')} ({fmt_bytes(p.get('size'))})", "file"
    elif kind == "limit.exceeded":
        body = (f"limit reached: {p.get('limit')} at {p.get('max')}, held by the kernel → {p.get('action')}"
                if p.get("enforced_by") == "cgroup" else
                f"limit exceeded: {p.get('limit')} {p.get('measured')} > {p.get('max')} → {p.get('action')}")
        style = "error"
    elif kind == "session.ended":
        body, style = f"session {p.get('status')}: {p.get('reason')}", "session"
    elif kind in ("session.started", "session.paused", "session.resumed", "session.stopping", "session.adopted",
                  "session.pause_requested"):
        body, style = f"{kind} {_short({k: v for k, v in p.items() if k != 'workdir'}, 80)}", "session"
    else:
        return None
    return Text.assemble((text(tag), "dim"), (text(body), STYLES[style]))
