"""Sessions side by side (``labd compare A B [C ...]``): steps, files, totals and final results.

Steps are matched by name (the n-th step of a name with the n-th of the same name in every session, so a
retried or repeated step lines up with its counterpart), in the order of the first session, then the
steps only later sessions have. Each step shows status, duration, LLM calls, tokens, cost, and its result:
the output of the last agent turn nested in it (or its error). A step a session reused (a branch's steps before
its branch point) ran elsewhere: its cell is that run's (``reused``, with its ``origin`` session and node), so a
branch's reused steps read unchanged beside its parent's. Files are each session's final work
directory as its file events left it (created / changed / deleted), compared by content hash; a small
text file that differs gets a unified diff read from the work directories, when they still exist.
Of a resumed session only the run that counted is compared: the attempts its resume ran again are left out
(counted as ``superseded`` in its totals; see :mod:`labd.store.attempts`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import orjson

from labd.ipc.safe_files import open_beneath
from labd.store.attempts import step_paths, superseded_nodes
from labd.store.checkpoints import checkpoints
from labd.store.lineage import MAX_GENERATIONS
from labd.store.queries import children_first

__all__ = ["compare", "DIFF_MAX_BYTES", "DIFF_MAX_LINES"]

DIFF_MAX_BYTES = 64 * 1024  # larger files are compared by hash only
DIFF_MAX_LINES = 200
_STEP_FIELDS = ("status", "duration", "calls", "prompt_tokens", "completion_tokens", "cost", "result")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    import json

    return json.dumps(value, indent=1, sort_keys=True, default=repr)


def diff(a: Any, b: Any, label_a: str, label_b: str) -> str:
    """A unified diff of two values (text, or JSON for anything else), at most :data:`DIFF_MAX_LINES` lines."""
    lines = list(difflib.unified_diff(_text(a).splitlines(), _text(b).splitlines(), label_a, label_b, lineterm=""))
    if len(lines) > DIFF_MAX_LINES:
        lines = [*lines[:DIFF_MAX_LINES], f"... ({len(lines) - DIFF_MAX_LINES} more lines)"]
    return "\n".join(lines)


def _outputs(store: Any, sid: str) -> tuple[dict[str, Any], Any]:
    """Per agent-turn node its output, and the session's final result (or error)."""
    out: dict[str, Any] = {}
    final: Any = None
    since = 0
    while True:
        page = store.events_page(sid, since=since, kinds=["agent.turn.finished", "session.finished"], full=True)
        for e in page["events"]:
            p = e["payload"]
            if e["kind"] == "session.finished":
                final = p.get("result") if "result" in p else {"outcome": p.get("outcome"), "error": p.get("error")}
            else:
                out[e["node_id"]] = p.get("output") if p.get("status") == "completed" else p.get("error")
        if not page["more"] or not page["events"]:
            return out, final
        since = page["events"][-1]["seq"]


def _last_outputs(nodes: list[dict[str, Any]], outputs: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """Per node, the output of the last agent turn in its subtree (by start), as (start, output)."""
    # one pass, children first (a walk of each step's subtree was quadratic in the nesting depth)
    last: dict[str, tuple[int, Any]] = {}
    for n, up in children_first(nodes):
        nid = n["node_id"]
        if n["kind"] == "agent" and nid in outputs:
            key = n.get("start_seq") or 0
            if nid not in last or key >= last[nid][0]:  # a tie: the outer turn, as a walk from it found first
                last[nid] = (key, outputs[nid])
        if nid in last and up is not None and (up["node_id"] not in last or last[nid][0] > last[up["node_id"]][0]):
            last[up["node_id"]] = last[nid]
    return last


class _Run:
    """One session's steps as compare sees them: each step's figures and result (the output of the last agent turn
    nested in it, or its error), and, for a step it reused, where that step ran."""

    def __init__(self, store: Any, sid: str, outputs: dict[str, Any], row: dict[str, Any] | None = None) -> None:
        self.store, self.sid, self.row, self.outputs = store, sid, row or {}, outputs
        self.every = store.steps(sid)
        self.by_id = {n["node_id"]: n for n in self.every}
        self.gone = superseded_nodes(store, sid, self.every)
        self.kept = [n for n in self.every if n["node_id"] not in self.gone]
        self._last = _last_outputs(self.kept, outputs)
        self._last_all: dict[str, tuple[int, Any]] | None = None  # of every node, superseded ones too (lazily)
        self._reused: dict[str, dict[str, Any]] | None = None  # node -> its reused checkpoint (lazily)
        self._paths: dict[str, str] | None = None
        self._kids: dict[str, list[dict[str, Any]]] | None = None  # node -> its kept children, in start order (lazily)

    def kids(self) -> dict[str, list[dict[str, Any]]]:
        """Each kept node's kept children, in start order (read once: every reused step of a branch asks)."""
        if self._kids is None:
            self._kids = {}
            for m in self.kept:
                self._kids.setdefault(m.get("parent_node") or "", []).append(m)
        return self._kids

    def cell(self, n: dict[str, Any]) -> dict[str, Any]:
        nid = n["node_id"]
        if nid in self.gone:
            if self._last_all is None:
                self._last_all = _last_outputs(self.every, self.outputs)
            found = self._last_all.get(nid)
        else:
            found = self._last.get(nid)
        return {"node_id": nid, "kind": n["kind"], "status": n["status"], "duration": n["duration"],
                "calls": n["calls"], "prompt_tokens": n["prompt_tokens"], "completion_tokens": n["completion_tokens"],
                "cost": n["cost"], "result": found[1] if found else n.get("error")}

    def reused_checkpoint(self, nid: str) -> dict[str, Any] | None:
        if self._reused is None:
            self._reused = {cp["node_id"]: cp for cp in checkpoints(self.store, self.sid) if cp.get("reused")}
        return self._reused.get(nid)

    def origin(self, nid: str) -> tuple[str, str] | None:
        """Where the step this session reused as node ``nid`` ran: (session, node), or None if unknown."""
        # a branch's, or a replay's of a branch (it reused the branch's reused steps: a replay of anything else reuses
        # none), ran in the parent: followed there (a replay's were left as they were, and read as changed)
        parent = self.row.get("parent_id") if self.row.get("origin") in ("branch", "replay") else None
        cp = self.reused_checkpoint(nid)
        if cp is not None and parent:  # a branch's: the parent's node (a planned step's is named in its checkpoint)
            return parent, str(cp.get("origin_node") or nid)
        # a planned step a resume announced again: the node that ran at its position before, in this session
        if self._paths is None:
            self._paths = step_paths(self.store, self.sid)
        path, start = self._paths.get(nid), self.by_id[nid].get("start_seq") or 0
        earlier = [(self.by_id[m].get("start_seq") or 0, m) for m, p in self._paths.items()
                   if p == path and m != nid and m in self.by_id and (self.by_id[m].get("start_seq") or 0) < start]
        if path is not None and earlier:
            return self.sid, max(earlier)[1]
        return (parent, nid) if parent else None


class _Runs:
    """The sessions compared, and those their reused steps ran in (read when first needed)."""

    def __init__(self, store: Any, rows: list[dict[str, Any]] | None = None,
                 outputs: dict[str, dict[str, Any]] | None = None) -> None:
        self.store = store
        # of the sessions compared, read already: their rows, and per agent turn its output
        self.rows = {r["id"]: r for r in rows or ()}
        self.outputs = dict(outputs or {})
        self.runs: dict[str, _Run | None] = {}

    def get(self, sid: str) -> _Run | None:
        if sid not in self.runs:
            row = self.rows.get(sid) or self.store.session(sid)
            outputs = self.outputs[sid] if sid in self.outputs else _outputs(self.store, sid)[0] if row else {}
            self.runs[sid] = _Run(self.store, sid, outputs, row) if row is not None else None
        return self.runs[sid]

    def reused_cell(self, run: _Run, n: dict[str, Any]) -> dict[str, Any]:
        """The cell of a step ``run`` reused: the figures and result of the run it reused (followed through a branch
        of a branch, and a resume that announced a planned step again), marked ``reused``, with its ``origin``. If
        that run is no longer stored: its own figures, and the result as its checkpoint previewed it."""
        cur_run, cur = run, n
        seen: set[tuple[str, str]] = set()
        for _ in range(MAX_GENERATIONS):
            where = cur_run.origin(cur["node_id"])
            if where is None or where in seen:
                break
            seen.add(where)
            nxt_run = self.get(where[0])
            nxt = nxt_run.by_id.get(where[1]) if nxt_run is not None else None
            if nxt_run is None or nxt is None:
                break
            cur_run, cur = nxt_run, nxt
            if cur["status"] != "reused":
                return {**cur_run.cell(cur), "node_id": n["node_id"], "kind": n["kind"], "reused": True,
                        "origin": {"session": cur_run.sid, "node_id": cur["node_id"]}}
        cp = run.reused_checkpoint(n["node_id"]) or {}
        return {**run.cell(n), "reused": True, "result": cp.get("result_preview")}

    def nested_cells(self, cell: dict[str, Any], sid: str, inside: str) -> list[tuple[str, dict[str, Any]]]:
        """The steps nested in the run a reused step's ``cell`` came from (in another session), each as (name, its
        cell marked ``reused``, with its ``origin`` and the node of session ``sid`` it is ``inside``), in start
        order: a reused step's body is skipped, so its nested steps (a planned step's attempts) have no node in
        ``sid``, and without them a branch read as if it had lost them."""
        origin = cell.get("origin")
        if not origin or origin["session"] == sid:  # a resume's own earlier run: its nested steps are listed
            return []
        there = self.get(origin["session"])
        if there is None:
            return []
        kids = there.kids()
        found: list[dict[str, Any]] = []
        stack = list(reversed(kids.get(origin["node_id"], [])))
        done = {origin["node_id"]}  # a malformed parent cycle is walked once
        while stack:  # depth first, each level in start order
            m = stack.pop()
            if m["node_id"] in done:
                continue
            done.add(m["node_id"])
            if m["kind"] != "agent":
                found.append(m)
            stack.extend(reversed(kids.get(m["node_id"], [])))
        found.sort(key=lambda m: m.get("start_seq") or 0)
        return [(m["name"], {**there.cell(m), "node_id": None, "inside": inside, "reused": True,
                             "origin": {"session": there.sid, "node_id": m["node_id"]}}) for m in found]


def _steps(runs: _Runs, sid: str) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The steps of session ``sid`` matched by name, and how many steps a resume superseded. A step the session
    reused (a branch's, or a planned step a resume announced again) has no agent turns of its own: its cell is the
    run it reused (:meth:`_Runs.reused_cell`)."""
    run = runs.get(sid)
    assert run is not None  # a session compared: its row is in hand
    seen: dict[str, int] = {}
    out = []

    def add(name: str, cell: dict[str, Any]) -> None:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name} #{seen[name]}", cell))

    for n in run.kept:
        if n["kind"] == "agent":
            continue
        if n["status"] != "reused":
            add(n["name"], run.cell(n))
            continue
        cell = runs.reused_cell(run, n)
        add(n["name"], cell)
        # the steps nested in it ran where it ran (its body was skipped here): theirs are this session's too
        for name, inner in runs.nested_cells(cell, sid, n["node_id"]):
            add(name, inner)
    return out, sum(1 for n in run.every if n["node_id"] in run.gone and n["kind"] != "agent")


def _files(store: Any, sid: str) -> dict[str, dict[str, Any]]:
    final: dict[str, dict[str, Any]] = {}
    for f in store.files(sid):
        if f["change"] == "deleted":
            final.pop(f["path"], None)
        else:
            final[f["path"]] = {"sha256": f["sha256"], "size": f["size"], "kind": f["kind"], "node_id": f["node_id"]}
    return final


def _read_text(workdir: str, path: str, size: int) -> str | None:
    """The text of ``path`` in ``workdir`` for a diff, or None: over :data:`DIFF_MAX_BYTES` (as recorded, or as it
    is now), not UTF-8, or not a regular file of the work directory. The session's code writes its work directory
    and may have changed it since the record was made: the file is opened without following a symlink in any
    component and only if it is a regular file (:func:`~labd.ipc.safe_files.open_beneath`: a FIFO put in its place
    blocked a read worker for good), and no more than the limit is read (a sparse file of any size put in its
    place was read whole into the daemon's memory)."""
    if size > DIFF_MAX_BYTES:
        return None
    try:
        with open_beneath(Path(workdir), path) as f:
            data = f.read(DIFF_MAX_BYTES + 1)
        if len(data) > DIFF_MAX_BYTES:
            return None
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def compare(store: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparison of the sessions ``rows`` (session rows, at least two), the first as the baseline."""
    ids = [r["id"] for r in rows]
    outputs = {sid: _outputs(store, sid) for sid in ids}  # (per agent turn its output, the final result)
    steps, superseded = [], []
    # a session compared may be where another's reused steps ran: each is read once
    runs = _Runs(store, rows, {sid: out for sid, (out, _final) in outputs.items()})
    for sid in ids:
        per, gone = _steps(runs, sid)
        steps.append(per)
        superseded.append(gone)
    order: dict[str, None] = {}  # the keys in first-seen order (a dict: a list's `in` made 30,000 steps take 20 s)
    for per in steps:
        order.update(dict.fromkeys(k for k, _ in per))
    by_key = [dict(per) for per in steps]
    step_rows = []
    for key in order:
        cells = [m.get(key) for m in by_key]
        base = cells[0]
        changed = sorted({f for c in cells[1:] for f in _STEP_FIELDS
                          if base is None or c is None or (f != "duration" and c.get(f) != base.get(f))})
        row: dict[str, Any] = {"name": key, "sessions": cells, "changed": changed}
        if base is not None and "result" in changed:
            row["result_diff"] = [diff(base["result"], c["result"], ids[0], ids[i]) if c is not None else None
                                  for i, c in enumerate(cells[1:], 1)]
        step_rows.append(row)
    files = [_files(store, sid) for sid in ids]
    paths = sorted(set().union(*files))
    file_rows = []
    for path in paths:
        cells = [f.get(path) for f in files]
        base = cells[0]
        states = []
        for c in cells[1:]:
            if base is None:
                states.append("added" if c is not None else "absent")
            elif c is None:
                states.append("removed")
            else:
                states.append("same" if c["sha256"] == base["sha256"] else "changed")
        row = {"path": path, "sessions": cells, "states": states, "differs": any(s != "same" for s in states)}
        if "changed" in states and base is not None:
            old = _read_text(rows[0]["workdir"], path, base["size"])
            row["diffs"] = [diff(old, _read_text(rows[i]["workdir"], path, c["size"]), f"{ids[0]}/{path}",
                                 f"{ids[i]}/{path}") if s == "changed" and old is not None and c is not None
                            else None for i, (s, c) in enumerate(zip(states, cells[1:], strict=True), 1)]
        file_rows.append(row)
    totals = []
    results = []
    earlier = store.earlier_runs(ids)  # a resumed session ran in more than one run: its duration sums them
    for r, per, gone in zip(rows, steps, superseded, strict=True):
        final = outputs[r["id"]][1]
        results.append(final)
        started, ended = r.get("started_at"), r.get("ended_at")
        llm = store.costs(r["id"])["total"]
        totals.append({"session": r["id"], "name": r["name"], "status": r["status"], "origin": r.get("origin"),
                       "parent_id": r.get("parent_id"), "cost": llm["cost"], "calls": llm["calls"],
                       "prompt_tokens": llm["prompt_tokens"], "completion_tokens": llm["completion_tokens"],
                       "duration": (ended - started + earlier.get(r["id"], (1, 0.0))[1]) if started and ended
                       else None, "steps": len(per),
                       "superseded": gone})
    return {"sessions": ids, "totals": totals, "inputs": _inputs(store, rows), "steps": step_rows, "files": file_rows,
            "result": {"sessions": results, "same": all(x == results[0] for x in results[1:]),
                       "diffs": [diff(results[0], x, ids[0], ids[i]) for i, x in enumerate(results[1:], 1)]}}


#: a compared input's value at most this long (a param or hypothesis of any size is accepted at start)
MAX_INPUT_CHARS = 2000


def _inputs(store: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the sessions were started with, where they differ: ``{workflow?, params: {name: [value per
    session, None where absent]}, hypothesis?, instructions?}`` (a branch's, from its ``session.created``); each
    value as JSON text cut to :data:`MAX_INPUT_CHARS` (around where the values first differ, when that is further
    in). Whole values are compared: only what differs between the sessions is listed."""
    def whole(value: Any) -> str | None:  # as shown: a text as it is
        if value is None:
            return None
        return value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()

    def same(value: Any) -> bytes | None:  # as compared: "5" is not 5, and {"a", "b"} is {"b", "a"}
        return None if value is None else orjson.dumps(value, default=repr, option=orjson.OPT_SORT_KEYS)

    def differing(values: list[Any]) -> list[str | None] | None:
        if len({same(v) for v in values}) < 2:
            return None
        texts = [whole(v) for v in values]
        if len(set(texts)) < 2:  # the text "5" against the number 5: shown as JSON, where they look different
            texts = [None if v is None else orjson.dumps(v, default=repr).decode() for v in values]
        present = [t for t in texts if t is not None]
        common = len(os.path.commonprefix(present)) if len(present) > 1 else 0
        # where they differ is what a reader needs: past the cut, show the stretch from a little before it
        start = common - 100 if common > MAX_INPUT_CHARS - 100 else 0
        return [None if t is None else (f"...({start} characters alike) " if start else "")
                + t[start:start + MAX_INPUT_CHARS] + ("..." if len(t) > start + MAX_INPUT_CHARS else "")
                for t in texts]

    created = [store.created(r["id"]) for r in rows]
    out: dict[str, Any] = {"params": {}}
    for field, values in (("workflow", [r.get("workflow") for r in rows]),
                          ("hypothesis", [c.get("hypothesis") for c in created]),
                          ("instructions", [c.get("instructions") for c in created])):
        shown = differing(values)
        if shown is not None:
            out[field] = shown
    params = [r.get("params") or {} for r in rows]
    for name in sorted(set().union(*params)):
        shown = differing([p.get(name) if name in p else None for p in params])
        if shown is not None:
            out["params"][name] = shown
    return out
