"""Requests about what agents did and what humans decide: approvals, pause/resume, DAG, cost, files, history."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import orjson

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.api.sessions import resolve_session
from labd.daemon.reads import Read
from labd.ipc.events import TERMINAL_STATUSES
from labd.store.exports import FORMATS
from labd.store.queries import COST_GROUPS

#: ``approvals.list`` without ``full``: prompt, feedback and hypothesis cut to this many characters, and a
#: context whose JSON is longer than ``LIST_CONTEXT`` characters left out, so a page's size never depends on them
LIST_TEXT, LIST_CONTEXT = 2000, 4000
#: a page stops after about this many bytes, or a quarter of ``max_message`` (always at least one approval)
LIST_BYTES = 8 * 1024 * 1024
#: ``omitted`` names at most this many sessions (``omitted_total`` counts all)
MAX_OMITTED = 10_000


@register
class ListApprovals(Request):
    type = "approvals.list"

    def execute(self) -> Any:
        self.filters("session", "status", "limit", "per_session", "full", "after")  # `sessions`: every session's
        status = self.arg("status", str, "pending", check=lambda s: s in ("pending", "resolved", "all"),
                          hint="pending, resolved or all")
        limit = self.arg("limit", int, 500, check=lambda n: 1 <= n <= 500, hint="an integer 1-500")
        per_session = self.arg("per_session", int, 20, check=lambda n: 1 <= n <= 500, hint="an integer 1-500")
        full = self.arg("full", bool, False, hint="true or false")
        after = self.arg("after", str, None, check=lambda s: 0 < len(s) <= 40, hint="an approval id")
        ref = self.arg("session", str, None, check=lambda s: 0 < len(s) <= 200, hint="a session id or name")
        sid = resolve_session(self)["id"] if ref is not None else None  # 0 or "" read as "every session" before
        if after is not None and sid is None:
            raise ApiError("bad_request", "after pages through one session's approvals: name the session too")
        store, which = self.daemon.store, None if status == "all" else status
        cursor = None
        if after is not None:
            found = store.approvals(session_id=sid, ids=[after], bound=(1, 1))
            if not found:
                raise ApiError("bad_request", f"session {sid} has no approval {after!r} (after)")
            cursor = (found[0]["requested_at"], after)
        # across sessions: the oldest `per_session` of each, every session's first before any session's second
        rows = store.approvals(session_id=sid, status=which, limit=limit, after=cursor,
                               per_session=None if sid else per_session,
                               bound=None if full else (LIST_TEXT, LIST_CONTEXT))
        page: list[dict[str, Any]] = []
        size = 0
        most = min(LIST_BYTES, self.daemon.codec.max_message // 4)  # far under the reply limit, also a small one
        for r in rows:
            size += len(orjson.dumps(r, default=repr, option=orjson.OPT_NON_STR_KEYS)) + 1
            if page and size > most:
                break
            page.append(r)
        listed = Counter(r["session_id"] for r in page)
        left = [(s, n - listed[s]) for s, n in store.approval_counts(session_id=sid, status=which, after=cursor)
                if n > listed[s]]
        return {"approvals": page, "omitted": dict(left[:MAX_OMITTED]), "omitted_total": sum(n for _s, n in left)}


def _named(store: Any, sid: str, aid: str) -> list[dict[str, Any]]:
    """The approval of session ``sid`` with id ``aid``, else the one pending approval whose id starts with ``aid``
    (``ap-8fb0``, as it is often copied): a list of one row, or none (the answer then says it is not pending);
    ``ambiguous`` when several pending ones start with it."""
    named = store.approvals(session_id=sid, ids=[aid], bound=(1, 1))
    if named:
        return list(named)
    matches = [p for p in store.approvals(session_id=sid, status="pending", bound=(1, 1))
               if str(p["id"]).startswith(aid)]
    if len(matches) > 1:
        raise ApiError("ambiguous", f"{len(matches)} pending approvals of session {sid} start with {aid!r}: give "
                       "more of the id", {"approvals": [p["id"] for p in matches][:50]})
    return matches


def _needs_text(decision: str, feedback: str | None, hypothesis: str | None) -> None:
    """The one rule for every front-end (CLI, SDK, MCP, labd top, labd ui): a ``modify`` without feedback has nothing
    to modify (blank feedback counts as none, as ``labd top`` has it) and a ``redo`` without a hypothesis (or
    feedback) nothing to try; both are refused as bad requests, before the session or its approvals are looked at."""
    if decision == "modify" and not (feedback or "").strip():
        raise ApiError("bad_request", "decision 'modify' needs feedback: the changes the agents must make",
                       {"field": "feedback"})
    if decision == "redo" and not (hypothesis or feedback):
        raise ApiError("bad_request", "a redo needs a hypothesis (or feedback) to try", {"field": "hypothesis"})


@register
class ResolveApproval(Request):
    type = "approval.resolve"

    def execute(self) -> Any:
        # `feeback` answered without the feedback, `aproval_id` answered whichever approval was pending, a misspelt
        # `refuse_kinds` answered the kind the client meant to refuse
        self.only("session", "decision", "feedback", "hypothesis", "by", "approval_id", "refuse_kinds",
                  done="nothing was answered")
        # approve | reject | modify | redo for the built-in checkpoints; any option the request listed
        decision = self.arg("decision", str, check=lambda d: 0 < len(d) <= 40, hint="one of the request's options")
        feedback = self.arg("feedback", str, None, check=lambda s: len(s) <= 20_000, hint="text up to 20000 chars")
        hypothesis = self.arg("hypothesis", str, None, check=lambda s: len(s) <= 20_000,
                              hint="text of at most 20,000 characters")
        by = self.arg("by", str, "client", check=lambda s: 0 < len(s) <= 100, hint="a name up to 100 chars")
        aid = self.arg("approval_id", str, None, check=lambda s: 0 < len(s) <= 40, hint="an approval id")
        refuse = self.arg("refuse_kinds", list, None, check=lambda k: len(k) <= 20 and all(
            isinstance(x, str) and len(x) <= 40 for x in k), hint="a list of up to 20 approval kinds")
        _needs_text(decision, feedback, hypothesis)
        row = resolve_session(self)
        store = self.daemon.store
        if aid is None:
            pending = store.approvals(session_id=row["id"], status="pending", bound=(1, 1))  # ids and kinds only
            if not pending:
                raise ApiError("not_pending", f"session {row['id']} has no pending approval")
            if len(pending) > 1:
                raise ApiError("ambiguous", f"session {row['id']} has {len(pending)} pending approvals; "
                               "name one with approval_id", {"approvals": [p["id"] for p in pending]})
            named = pending
        else:
            named = _named(store, row["id"], aid)
            elsewhere = [] if named else store.approvals(ids=[aid], bound=(1, 1))
            if elsewhere:  # another session's id (copied from the wrong line): say whose, not "not pending"
                raise ApiError("not_pending", f"approval {aid} belongs to session {elsewhere[0]['session_id']}, not "
                               f"to {row['id']}: nothing was answered", {"session": elsewhere[0]["session_id"]})
        aid = named[0]["id"] if named else aid
        # Checked here, on the approval this request answers (not by the client beforehand, when another request
        # may come in between): `labd mcp` refuses "policy" approvals, which a rule requires of a human. Looked up by
        # its id: in a list of the session's pending ones (500 at most), the 501st was not found and so not refused.
        kind = named[0].get("kind") if named else None
        if refuse and kind in refuse:
            raise ApiError("human_required", f"approval {aid} is a {kind!r} approval, which this client may not "
                           "answer: a human must (labd approve / reject, labd top, labd ui)", {"approval_id": aid})
        payload: dict[str, Any] = {"approval_id": aid, "decision": decision, "by": by, "via": "client"}
        if feedback:
            payload["feedback"] = feedback
        if hypothesis:
            payload["hypothesis"] = hypothesis
        self.daemon.defer(self.reply_to, lambda _seq, p: {"session": row["id"], "approval_id": p["approval_id"],
                                                           "decision": p["decision"]})
        self.daemon.post_event(row["id"], "approval.resolved", payload, reply_to=self.reply_to)
        return DEFERRED


class _Control(Request):
    def running(self) -> dict[str, Any]:
        row = resolve_session(self)
        if row["status"] in TERMINAL_STATUSES or row["id"] not in self.daemon.supervisor.running:
            raise ApiError("not_running", f"session {row['id']} is not running (status {row['status']})")
        return row


@register
class Pause(_Control):
    type = "session.pause"

    def execute(self) -> Any:
        self.only("session", "reason", done="nothing was paused")
        row = self.running()
        reason = self.arg("reason", str, "pause requested", check=lambda s: len(s) <= 1000, hint="text")
        if row["status"] == "paused":  # nothing to ask: say so rather than record a request that does nothing
            return {"session": row["id"], "pausing": False, "status": "paused"}
        self.daemon.supervisor.pause(row["id"], "client", reason)
        return {"session": row["id"], "pausing": True}


@register
class Resume(_Control):
    type = "session.resume"

    def execute(self) -> Any:
        # `budgett` resumed with no new budget, `limit` with the old limits
        self.only("session", "budget", "limits", "reason", done="nothing was resumed")
        ended = resolve_session(self)
        if ended["status"] in TERMINAL_STATUSES:  # a new runner continues it (labd.daemon.api.durable)
            from labd.daemon.api.durable import resume_ended

            return resume_ended(self, ended)
        if self.daemon.supervisor.stopping(ended["id"]):  # not a paused session to continue: it is ending
            raise ApiError("stopping", f"session {ended['id']} is ending (being stopped, or its runner just went "
                           f"away): resume it once it has ended "
                           f"(labd wait {ended['id']}); the SDK's and CLI's resume wait for that by themselves")
        if self.body.get("limits"):  # refused rather than ignored
            raise ApiError("bad_request", "limits can be changed only when resuming an ended session; a paused one "
                           "takes a new budget only")
        row = self.running()
        budget = self.arg("budget", (int, float), None, check=lambda b: math.isfinite(b) and b > 0,
                          hint="a positive amount of USD")
        if budget is not None and row["status"] != "paused":
            # only a paused runner takes a budget (it reads it as it continues); a running one would drop it
            raise ApiError("not_paused", f"session {row['id']} is {row['status']}, not paused: a new budget is taken "
                           "by a paused session (one its budget paused, or after labd pause), or when resuming it "
                           "once it has ended")
        # the runner enforces budgets before each LLM call; given one, it continues with it
        self.daemon.supervisor.resume(row["id"], "client", None if budget is None else float(budget))
        return {"session": row["id"], "resuming": True, "status": row["status"],
                **({"budget": budget} if budget is not None else {})}


@register
class Dag(Request):
    type = "session.dag"

    def execute(self) -> Any:  # a generator: the whole DAG is read and rendered on a worker (daemon/reads.py)
        self.filters("session", "format", "newest")  # `newest` cuts the graph: a misspelling is refused
        fmt = self.arg("format", str, "json", check=lambda f: f in FORMATS, hint=" | ".join(FORMATS))
        newest = self.arg("newest", int, None, check=lambda n: 1 <= n <= 100_000, hint="1 to 100000")
        row = resolve_session(self)
        store, sid = self.daemon.store, row["id"]

        def read() -> dict[str, Any]:
            dag = store.dag(sid, newest)
            omitted = {"nodes_omitted": dag.pop("nodes_omitted")} if "nodes_omitted" in dag else {}
            # one copy of the graph: as json it is `dag` (its indented text too doubled a long session's reply,
            # which at ~60,000 nodes passed the largest reply the daemon sends)
            if fmt == "json":
                return {"session": sid, "format": fmt, "dag": dag, "text": None, **omitted}
            return {"session": sid, "format": fmt, "dag": None, "text": FORMATS[fmt](dag), **omitted}
        return (yield Read(read, "DAG"))


@register
class Cost(Request):
    type = "session.cost"

    def execute(self) -> Any:  # a generator: every call of the session is read on a worker (daemon/reads.py)
        calls = self.arg("calls", bool, True)  # false: the sums only (a days-long session makes 100,000 calls)
        row = resolve_session(self)
        store = self.daemon.store
        out = yield Read(lambda: store.costs(row["id"], calls), "cost")
        out["budget"] = row["limits"].get("budget")
        return out


@register
class CostSummary(Request):
    type = "cost.summary"

    def execute(self) -> Any:  # a generator: every session's calls are summed on a worker (daemon/reads.py)
        self.filters("by", "since")  # `group`: by model
        by = self.arg("by", str, "model", check=lambda b: b in COST_GROUPS, hint=" | ".join(COST_GROUPS))
        since = self.arg("since", (int, float), None, check=lambda t: math.isfinite(t) and t >= 0,
                         hint="a time in seconds since the epoch")
        store = self.daemon.store
        return (yield Read(lambda: store.cost_summary(by=by, since=None if since is None else float(since)),
                           "cost summary"))


@register
class Files(Request):
    type = "session.files"

    def execute(self) -> Any:  # a generator: the session's nodes and files are read on a worker (daemon/reads.py)
        self.filters("session", "since")
        since = self.arg("since", int, 0, check=lambda n: n >= 0, hint="a seq, 0 or more")
        row = resolve_session(self)
        store = self.daemon.store
        return (yield Read(lambda: _files(store, row, since), "files"))


def _files(store: Any, row: dict[str, Any], since: int) -> dict[str, Any]:
    """``session.files``' reply: the history of the session's files (after ``since``), each row with its step."""
    files = store.files(row["id"], since)
    nodes = _step_nodes(store, row["id"], files)
    # a file is its exact name: a name that is not UTF-8 by its bytes (its display path is also a possible real name)
    latest = {(f["path"], f["path_b64"]): f["seq"] for f in files}  # rows in seq order: the last one per file wins
    for f in files:
        # the history stays; `current` marks each file's latest row unless that row is its deletion
        f["current"] = latest[(f["path"], f["path_b64"])] == f["seq"] and f["change"] != "deleted"
        # the step a file belongs to: its node, or the step enclosing the agent turn (and its attempt)
        node = nodes.get(f["node_id"] or "")
        seen: set[str] = set()
        while node is not None and node["kind"] in ("agent", "attempt") and node["node_id"] not in seen:
            seen.add(node["node_id"])
            node = nodes.get(node["parent_node"] or "")
        f["step"] = node["name"] if node else None
        f["step_node"] = node["node_id"] if node else None
    return {"session": row["id"], "workdir": row["workdir"], "files": files}


def _step_nodes(store: Any, sid: str, files: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The nodes these file rows name, and the nodes up from an agent turn or attempt to its step: what the rows'
    steps are found with, without reading (and rolling up) every node of a long session."""
    nodes: dict[str, dict[str, Any]] = {}
    wanted = {f["node_id"] for f in files if f["node_id"]}
    while wanted:  # one level of nesting per round; a cycle in a damaged record ends when nothing new is named
        found = store.nodes_by_id(sid, wanted)
        nodes.update(found)
        wanted = {n["parent_node"] for n in found.values()
                  if n["kind"] in ("agent", "attempt") and n["parent_node"] and n["parent_node"] not in nodes}
    return nodes


@register
class History(Request):
    type = "session.history"

    def execute(self) -> Any:  # a generator: read on a worker (daemon/reads.py)
        row = resolve_session(self)
        store = self.daemon.store
        return {"session": row["id"], "history": (yield Read(lambda: store.history(row["id"]), "history"))}
