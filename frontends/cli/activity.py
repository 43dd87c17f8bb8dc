"""A session's events as a person reads them: its output verbatim, agent activity as one short line each.

Used by ``labd logs`` and ``labd run --follow``. The workflow's stdout goes to our stdout and its stderr
to our stderr, byte for byte, so ``labd logs S > out.txt`` captures exactly what it printed; activity lines
(steps, agent turns, tool calls, code runs, costs, approvals waiting, the end) go to stderr. On a terminal,
what the session printed goes through :func:`labd.frontends.cli.safetext.output` (its escape sequences shown,
not obeyed; colours kept) unless ``--raw-control-chars`` asks for it unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from labd.frontends.cli import safetext
from labd.frontends.cli.output import Output, short
from labd.ipc.units import format_duration, format_over, format_size

__all__ = ["Activity", "Line", "Printer", "stamp"]


class Line(NamedTuple):
    """One printable piece: ``stream`` is stdout / stderr (verbatim text) or note (an activity line)."""

    ts: float
    stream: str
    text: str
    style: str | None = None


def _dur(p: dict[str, Any]) -> str:
    d = p.get("duration")
    return format_duration(d) if isinstance(d, int | float) else ""


_LOG_STYLE = {"debug": "dim", "info": "dim", "warning": "yellow", "error": "red", "critical": "bold red"}
_STANDARD_DECISIONS = {"approve", "reject", "modify", "redo"}


class Activity:
    """Renders events of one session; keeps the running cost total and where output lines start."""

    def __init__(self, session: str, *, raw: bool = False) -> None:
        self.session = session
        self.raw = raw
        self.cost = 0.0

    def lines(self, ev: dict[str, Any]) -> list[Line]:
        """What to print for ``ev`` (possibly nothing)."""
        kind, p, ts = ev["kind"], ev.get("payload") or {}, ev.get("ts") or 0.0
        if kind == "output":
            stream = "stderr" if p.get("stream") == "stderr" else "stdout"
            return [Line(ts, stream, piece) for piece in str(p.get("text", "")).splitlines(keepends=True)]
        if kind == "output.truncated":  # about the output itself: shown with --raw too
            size = format_size(p.get("cap") or 0)
            end = f": {format_size(p['dropped'])} dropped]" if p.get("dropped") else ": the rest is not kept]"
            return [Line(ts, "note", f"[output truncated at {size}{end}", "yellow")]
        if self.raw:
            return []
        note = self._note(kind, p, ev)
        if note is None:
            return []
        texts = note if isinstance(note, list) else [note]
        return [Line(ts, "note", text, style) for text, style in texts]

    def _note(self, kind: str, p: dict[str, Any], ev: dict[str, Any]) -> Any:  # noqa: C901 - one branch per kind
        node = ev.get("node_id") or ""
        agent = p.get("agent", "")
        if kind == "log":
            fields = " ".join(f"{k}={v}" for k, v in (p.get("fields") or {}).items() if k != "session_id")
            level = str(p.get("level", "info"))
            return (f"[{level}] {p.get('event', '')} {fields}".rstrip(), _LOG_STYLE.get(level, "dim"))
        if kind == "step.started":
            return (f"▸ {node} {p['name']}" + (f" ({p['kind']})" if p.get("kind") not in (None, "step") else ""),
                    "bold cyan")
        if kind == "step.finished":
            if p["status"] == "reused":  # taken from the record (a branch or resume): done, not run, not failed
                return (f"↺ {node} {p['name']} reused from the record", "dim")
            ok = p["status"] == "completed"
            mark = "✓" if ok else "✗"
            err = f": {short(p['error'], 160)}" if p.get("error") else ""
            return (f"{mark} {node} {p['name']} {p['status']} in {_dur(p)}{err}", "green" if ok else "bold red")
        if kind == "agent.turn.started":
            what = f": {short(p['input'], 100)}" if p.get("input") else ""
            return (f"  {agent} · turn {node}{what}", "magenta")
        if kind == "agent.turn.finished":
            ok = p["status"] == "completed"
            err = f": {short(p['error'], 120)}" if p.get("error") else ""
            return (f"  {agent} · turn {node} {p['status']} in {_dur(p)}{err}", "dim" if ok else "red")
        if kind == "agent.message":
            return (f"  {agent}: {short(p['content'], 160)}", None)
        if kind == "llm.response":
            usage = p.get("usage") or {}
            toks = (f", {usage.get('prompt_tokens', 0)}+{usage.get('completion_tokens', 0)} tokens"
                    if usage else "")
            if p.get("status") != "ok" and p.get("error"):
                return (f"  {agent} ← {p['model']} failed: {short(p['error'], 120)}", "red")
            return (f"  {agent} ← {p['model']} in {_dur(p)}{toks}" + (" (offline)" if p.get("offline") else ""),
                    "dim")
        if kind == "tool.call":
            args = f"({short(p['arguments'], 80)})" if p.get("arguments") not in (None, "", {}) else "()"
            return (f"  {agent} → {p['name']}{args}", "yellow")
        if kind == "tool.result":
            ok = p["status"] in ("ok", "completed", "success")
            detail = short(p.get("error") or p.get("result") or "", 100)
            return (f"  {agent} ← {p['name']} {p['status']} in {_dur(p)}" + (f": {detail}" if detail else ""),
                    "dim" if ok else "red")
        if kind == "code.execution":
            out = str(p.get("output") or "").strip().splitlines()
            first = f": {short(out[0], 100)}" if out else ""
            return (f"  {agent} ran {p['language']} code, exit {p['exit_code']} in {_dur(p)}{first}",
                    "yellow" if p["exit_code"] == 0 else "red")
        if kind == "subagent.started":
            return (f"  {agent} ⇒ {p['child']}" + (f": {short(p['objective'], 100)}" if p.get("objective") else ""),
                    "magenta")
        if kind == "subagent.finished":
            return (f"  {agent} ⇐ {p['child']} {p['status']}", "dim")
        if kind == "cost.recorded":
            self.cost += float(p.get("cost") or 0.0)
            offline = " (offline, nominal)" if p.get("offline") else ""
            return (f"  $ {p['cost']:.6f} {p['model']}{offline} · session total ${self.cost:.6f}", "dim")
        if kind in ("file.created", "file.changed"):
            mark = "+" if kind == "file.created" else "~"
            return (f"  {mark} {safetext.one_line(p['path'])} ({format_size(p.get('size'))})", "dim")
        if kind == "policy.decision":
            return _policy_line(p)
        if kind == "approval.requested":
            return self._approval(p)
        if kind == "approval.resolved":
            fb = f" — {short(p['feedback'], 100)}" if p.get("feedback") else ""
            hyp = f" — hypothesis: {short(p['hypothesis'], 100)}" if p.get("hypothesis") else ""  # a redo's
            return (f"✓ approval {p['approval_id']}: {p['decision']} by {p['by']}{fb}{hyp}", "green")
        if kind == "session.pause_requested":
            return (f"== pause requested by {p['by']} (at the next step boundary)", "yellow")
        if kind == "session.paused":
            return (f"== paused by {p['by']}: {p['reason']} — labd resume {self.session}", "bold yellow")
        if kind == "session.resumed":
            return (f"== resumed by {p['by']}", "yellow")
        if kind == "session.stopping":
            return (f"== stopping ({p['reason']}; {p['step']})", "yellow")
        if kind == "limit.exceeded":
            measured, top = p["measured"], p["max"]
            if p.get("unit") in ("bytes", "seconds"):  # as `labd show` words it: "memory 124 MiB > limit 100 MiB"
                measured, top = format_over(measured, top, p["unit"])
            elif p.get("unit"):
                measured, top = f"{measured:g} {p['unit']}", f"{top:g} {p['unit']}"
            if p.get("enforced_by") == "cgroup":  # the kernel held it: usage never went past the limit
                return (f"== limit reached: {p['limit']} at its limit {top}, held by the kernel ({p['action']})",
                        "bold red")
            return (f"== limit exceeded: {p['limit']} {measured} > limit {top} ({p['action']})", "bold red")
        if kind == "session.finished" and p.get("outcome") == "failed" and p.get("error"):
            return (f"✗ {short(p['error'], 300)}", "red")
        if kind == "session.finished" and p.get("outcome") == "completed" and p.get("error"):
            return (f"! {short(p['error'], 300)}", "yellow")  # completed, its result not recorded (too large)
        if kind == "session.ended":
            style = {"completed": "bold green", "failed": "bold red", "lost": "bold red"}.get(p.get("status", ""))
            return (f"== session {p.get('status')}: {p.get('reason')}", style or "bold")
        if kind in ("event.rejected", "event.truncated"):
            return (f"! {kind}: {p.get('kind')} {p.get('reason') or p.get('size')}", "red")
        return None

    def _approval(self, p: dict[str, Any]) -> list[tuple[str, str | None]]:
        options = [str(o) for o in p.get("options") or []]
        s, aid = self.session, p["approval_id"]
        if set(options) <= _STANDARD_DECISIONS:
            how = f"labd approve {s} | labd reject {s} --feedback \"...\""
            if "modify" in options:
                how += f" | labd modify {s} --feedback \"...\""
            if "redo" in options:
                how += f" | labd redo {s} --hypothesis \"...\""
        else:
            how = f"labd resolve {s} {'|'.join(options)}"
        return [(f"⏸ approval {aid} waiting ({p['kind']}): {short(p['prompt'], 200)}", "bold yellow"),
                (f"  answer with: {how}", "yellow")]


def policy_what(p: dict[str, Any]) -> str:
    """The action of a ``policy.decision`` in a few words: ``LLM call to gpt-4o``, ``tool x``, ``python code``."""
    if p.get("action") == "llm":
        return f"LLM call to {p.get('model') or '?'}"
    if p.get("action") == "tool":
        return f"tool {p.get('tool') or '?'}"
    return f"{p.get('language') or ''} code".strip() + (" (network on)" if p.get("network") else "")


def _policy_line(p: dict[str, Any]) -> tuple[str, str | None] | None:
    rule, outcome = p.get("rule"), p.get("outcome")
    who = f"{p['agent']}: " if p.get("agent") else ""
    if outcome == "denied":
        return (f"  ✗ policy {rule or '(default)'}: denied {policy_what(p)} ({who}{short(p.get('reason', ''), 120)})",
                "red")
    if outcome == "pending":
        return (f"  ⏸ policy {rule}: {who}{policy_what(p)} waits for approval", "yellow")
    if rule is None:  # allowed because no rule applies: recorded, not worth a line
        return None
    by = f" by {p['by']}" if p.get("by") else ""
    return (f"  policy {rule}: allowed {policy_what(p)}{by}", "dim")


def stamp(ts: float) -> str:
    """The time a line was recorded, as ``-t`` / ``--timestamps`` prefixes it (``14:03:07.512 ``)."""
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3] + " "


class Printer:
    """Writes :class:`Line` s: verbatim text to stdout/stderr (made safe on a terminal: :func:`safetext.output`),
    notes to stderr (styled on a terminal). :meth:`close` when done."""

    def __init__(self, out: Output, *, timestamps: bool = False) -> None:
        self.out = out
        self.timestamps = timestamps
        self._line_start = {"stdout": True, "stderr": True}
        # per stream: is what the session printed made safe (a terminal, and no --raw-control-chars)
        self._safe = {"stdout": out.tty and not out.raw_output, "stderr": out.err_tty and not out.raw_output}
        # per stream: the last piece ended in a CR shown as a line break (a LF opening the next piece is its end)
        self._cr = {"stdout": False, "stderr": False}
        self._coloured: set[str] = set()  # terminal streams the session's colours were written to, not reset yet

    def _reset_colours(self) -> None:
        """End colours the session's output left on (they would hide or recolour what follows: a note, the
        shell's prompt)."""
        for stream in self._coloured:
            f = self.out.stderr if stream == "stderr" else self.out.stdout
            f.write("\x1b[0m")
            f.flush()
        self._coloured.clear()

    def close(self) -> None:
        """Done printing: reset colours the session left on."""
        self._reset_colours()

    def _stamp(self, ts: float) -> str:
        return stamp(ts) if self.timestamps else ""

    def write(self, line: Line) -> None:
        if line.stream == "note":
            self._reset_colours()
            if not self._line_start["stderr"]:  # a note starts on a fresh line after unfinished stderr output
                self.out.stderr.write("\n")
                self._line_start["stderr"] = True
            self.out.line(self._stamp(line.ts) + line.text, line.style, err=True)
            return
        stream = line.stream
        f = self.out.stderr if stream == "stderr" else self.out.stdout
        text = line.text
        if self._safe[stream]:  # a terminal: what the session printed, made safe
            text = safetext.output(text)
            if self._cr[stream] and text[:1] == "\n":  # the last piece's CR was shown as a line break;
                text = text[1:]  # this LF, its pair (CR LF), ends the same line
            self._cr[stream] = line.text[-1:] == "\r"
            if stream not in self._coloured and "\x1b[" in text:
                self._coloured.add(stream)
            if not text:
                return
        if self._line_start[stream]:
            text = self._stamp(line.ts) + text
        f.write(text)
        f.flush()
        self._line_start[stream] = text.endswith("\n")
