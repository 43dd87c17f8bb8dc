"""How much `labd mcp` returns to a model, and how it reads it: output and events paged to a character budget
(asking the daemon for about as much as it returns), results bounded as the model will see them.

A tool's result reaches the model as the SDK's text form of it (JSON indented by two), so sizes are counted so:
a model's client typically caps a tool result at ~25,000 tokens (~100,000 characters), and a reply past that is cut
or refused by the client, not by us, with nothing to say how to ask for less."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from labd.ipc.client import Client
from labd.ipc.events import SCHEMAS

__all__ = ["MAX_TEXT", "DEFAULT_TEXT", "EVENT_HEAD", "MAX_RESULT", "FIRST_PAGE", "READ_ONLY",
           "bounded",
           "event_kinds", "fit_events", "json_chars", "output_since", "read_within"]

T = TypeVar("T")
OUTPUT_KINDS = ["output"]
#: the most characters of output or events one read_output / read_events call returns (``max_chars``' ceiling)
MAX_TEXT = 200_000
#: ... and what they return unless asked for more: within what model clients take from one tool call
DEFAULT_TEXT = 50_000
#: characters kept (the start of its payload's JSON) of one event larger than a whole read_events call
EVENT_HEAD = 2_000
#: characters of any other tool's result, as the model sees it: a larger one is a tool error saying how to ask for less
MAX_RESULT = 200_000
#: events read_events / read_output ask the daemon for first; each later request asks for about as many as the size
#: budget left holds at the average size seen so far (a daemon page may be 5000 events and 8 MiB: fetched whole to
#: return 200,000 characters, it cost this process and the daemon 40 times what the model got)
FIRST_PAGE = 20
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def json_chars(value: Any, indent: int | None = 2) -> int:
    """Characters of ``value`` as JSON, by default indented by two: as the SDK hands it to the model."""
    return len(json.dumps(value, default=str, indent=indent, ensure_ascii=False))


def text_chars(text: str) -> int:
    """Characters of ``text`` as a JSON string's content, as the model reads it: a NUL is six (``\\u0000``), so
    50,000 characters of output could reach the model as 300,000 (MCP retest)."""
    return len(orjson.dumps(text)) - 2


def fit_text(text: str, most: int) -> str:
    """The longest start of ``text`` whose JSON form (:func:`text_chars`) is at most ``most`` characters."""
    if text_chars(text) <= most:
        return text
    low, high = 0, min(len(text), most)  # each character is at least one
    while low < high:
        mid = (low + high + 1) // 2
        if text_chars(text[:mid]) <= most:
            low = mid
        else:
            high = mid - 1
    return text[:low]


def bounded(result: T, smaller: str) -> T:
    """``result``, if the model sees at most :data:`MAX_RESULT` characters of it; else a tool error saying how to
    ask for less (``smaller``: this tool's way, e.g. "ask for fewer nodes with newest=100")."""
    n = json_chars(result)
    if n > MAX_RESULT:
        raise ToolError(f"labd: the result is {n:,} characters, more than the {MAX_RESULT:,} this server returns in "
                        f"one call; {smaller} [result_too_large]")
    return result


def event_kinds(asked: list[str] | None) -> list[str] | None:
    """The event kinds read_events asks the daemon for: each of ``asked`` a kind, or the start of kinds (as
    ``labd events --kind`` takes it). One that names no kind is a tool error listing them: the daemon matches kinds
    exactly, and an empty answer to ``llm`` or a misspelt kind would read as "no such events happened"."""
    if not asked:
        return None
    out: list[str] = []
    for k in asked:
        if not k:  # the start of every kind: read as "all", which no one asking for kinds meant
            raise ToolError("labd: an empty event kind names none (leave kinds out for all events) [bad_request]")
        matched = [k] if k in SCHEMAS else [kind for kind in SCHEMAS if kind.startswith(k)]
        if not matched:
            raise ToolError(f"labd: no event kind {k!r} (nor any starting so); the kinds: "
                            f"{', '.join(sorted(SCHEMAS))} [bad_request]")
        out += [m for m in matched if m not in out]
    return out


def read_within(c: Client, session: str, since: int, kinds: list[str] | None, most: int, budget: int,
                size: Callable[[dict[str, Any]], int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(events, last page)``: at most ``most`` events after ``since``, read until their ``size`` passes ``budget``
    (the event that passes it included: the caller cuts there) or none are left, and the daemon's last page (its
    ``session``, ``status``, ``more``). Asked for in pages sized to the budget, so what is read is about what is
    returned, not a whole daemon page: at most the bytes the budget has left (``max_bytes``; the daemon counts a
    payload's JSON + 100 bytes an event), and a count the daemon reads from its store (:data:`FIRST_PAGE`, then as
    many as the budget left holds at the average size so far). One event larger than the budget is still read
    whole: the daemon cannot cut one."""
    events: list[dict[str, Any]] = []
    used, ask = 0, min(most, FIRST_PAGE)
    while True:
        page = c.events(session, since=since, limit=ask, kinds=kinds, max_bytes=max(1, budget - used))
        events += page["events"]
        used += sum(size(ev) for ev in page["events"])
        if not page["events"] or not page["more"] or used > budget or len(events) >= most:
            return events, page
        session, since = page["session"], page["events"][-1]["seq"]  # the id: a name could come to mean another
        ask = max(1, min(most - len(events), (budget - used) // max(1, used // len(events)) + 1))


def fit_events(events: list[dict[str, Any]], more: bool, budget: int) -> dict[str, Any]:
    """``{events, more}``: the first of ``events`` that fit in ``budget`` characters of JSON (at least one; an event
    larger than :data:`MAX_TEXT` alone has its payload replaced by ``payload_cut``: its size and start)."""
    kept: list[dict[str, Any]] = []
    size = 0
    for ev in events:
        n = json_chars(ev)
        if size + n > budget and kept:
            return {"events": kept, "more": True}
        if n > max(budget, MAX_TEXT):
            payload = json.dumps(ev.get("payload"), default=str)
            ev = {**ev, "payload": None, "payload_cut": {"chars": len(payload), "head": payload[:EVENT_HEAD]}}
            n = json_chars(ev)
        kept.append(ev)
        size += n
    return {"events": kept, "more": more}


def output_since(c: Client, session: str, since: int, budget: int, offset: int = 0) -> dict[str, Any]:
    """read_output's reply: the session's output after event ``since`` (less the first ``offset`` characters of the
    first output event after it) as text, at most ``budget`` characters as the model reads them
    (:func:`text_chars`), with where to go on from: ``next_since`` and ``next_offset``. A piece of output larger than
    what is left is cut there, and the next call goes on inside it (``next_offset`` > 0): nothing is left out,
    however large one piece (a 1 MB line was cut for good, saying how much).

    With no output after ``since``, ``next_since`` moves past the events that are not output, to the session's last
    seq *read before* the events were asked for: every event up to it was stored then, so none of them is output the
    caller has not had. (It read the last seq after the events, and output stored between the two requests was
    skipped: 82 lines of 3,000 in an MCP review.)"""
    def size(ev: dict[str, Any]) -> int:
        return text_chars(ev["payload"].get("text", ""))
    events, last_page = read_within(c, session, since, OUTPUT_KINDS, 5000, budget, size)
    if not events and not last_page["more"]:
        sid = last_page["session"]
        stored = c.session(sid)["last_seq"]
        if since > stored:  # a seq the session never had: waiting on it would never see output
            raise ToolError(f"labd: since={since} is past the session's last event (seq {stored}); read from "
                            f"next_since as the last call returned it, or 0 for the start [bad_request]")
        events, last_page = read_within(c, sid, since, OUTPUT_KINDS, 5000, budget, size)
        if not events and not last_page["more"]:
            return {"text": "", "next_since": stored, "next_offset": 0, "status": last_page["status"], "more": False}
    status, more = last_page["status"], last_page["more"]
    parts: list[str] = []
    last, used = since, 0
    for i, ev in enumerate(events):
        text = ev["payload"].get("text", "")
        skip = offset if i == 0 else 0
        if skip > len(text):
            raise ToolError(f"labd: offset={offset} is past the output of event {ev['seq']} ({len(text)} characters); "
                            "give next_offset as the last call returned it [bad_request]")
        text = text[skip:]
        n = text_chars(text)
        if used + n > budget:  # what is left of this piece does not fit: as much as does, then on inside it
            head = fit_text(text, budget - used)
            if not head and parts:
                return {"text": "".join(parts), "next_since": last, "next_offset": 0, "status": status, "more": True}
            head = head or text[:1]  # at least one character, whatever it costs
            return {"text": "".join(parts) + head, "next_since": ev["seq"] - 1, "next_offset": skip + len(head),
                    "status": status, "more": True}
        parts.append(text)
        used += n
        last = ev["seq"]
    return {"text": "".join(parts), "next_since": last, "next_offset": 0, "status": status,
            "more": more}
