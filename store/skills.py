"""Skills: what made a session work, kept as a reusable, versioned document, and started again from it.

A skill is extracted from a *completed* session's record — never from memory or the workflow's code:

- ``workflow`` and ``params`` (defaults for a new run; the names the user marked with ``--param`` are the skill's
  own parameters, to be given at each run);
- ``plan``: the final plan (the session's result, for planning workflows), and for each step its agent role, goal,
  the code that ran successfully in it (``code.execution`` with exit code 0) and what the agent answered;
- ``agents``: the roles the session used, with the system prompts they had then (from the registry as it is at
  save time: the record keeps agent names, the registry their roles);
- ``files``: what the session produced (path, sha256, size, the step that wrote it).

``labd run skill:NAME`` starts the skill's workflow with its plan, so planning is not repeated, and each step's
agent is given the step's instructions and the code that worked as a hint.

The document's schema, what ``skill.import`` accepts and what every reader (a start from the skill, ``labd skills
show``) may rely on, is :mod:`labd.store.skill_document`. Only ``name`` and ``workflow`` are required.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy import Engine, Select, delete, func, insert, or_, select, update

from labd.ipc.workflows import BUILTINS
from labd.store.attempts import run_starts
from labd.store.queries import Store
from labd.store.schema import skill_names, skills
from labd.store.skill_document import MAX_ANSWER, MAX_CODE, MAX_STEPS, NAME, SkillError, check_skill

__all__ = ["NAME", "SkillError", "check_skill", "extract", "insert_skill", "skill_by_key", "get_skill",
           "list_skills", "delete_skill"]

MAX_CODE_RUNS = 100  # code runs that worked kept per step by a save: its last ones
#: characters of code and answers a save keeps in all (the document stays one message: show, export, import)
MAX_SKILL_CHARS = 8_000_000
MAX_FILES = 100_000  # files a skill lists
def extract(store: Store, session: dict[str, Any], *, name: str, description: str = "",
            parameters: list[str] | None = None, from_node: str | None = None,
            roles: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The skill document for a completed session (``from_node``: only that step and the steps after it)."""
    if session["status"] != "completed":
        raise SkillError("not_completed", f"session {session['id']} is {session['status']}: skills are made from "
                         "completed sessions")
    sid = session["id"]
    params = dict(session.get("params") or {})
    wanted = list(parameters or [])
    unknown = [p for p in wanted if p not in params]
    if unknown:
        raise SkillError("bad_request", f"parameters {unknown} were not given to session {sid} (it was started "
                         f"with: {', '.join(sorted(params)) or 'none'}): a skill's parameter is one its session was "
                         "started with (a parameter left at the workflow's default cannot be made one; run the "
                         "session with -p NAME=... first)")
    steps_rows = {r["node_id"]: r for r in store.steps(sid)}
    # the run that completed: a resumed session's failed runs have their own session.finished before it. Read on
    # its own: it is the session's last event, and was lost with the plan past the first 5,000 events read
    finished = store.last_events([sid], ["session.finished"]).get((sid, "session.finished"))
    result = finished[1].get("result") if finished else None
    plan_steps: list[Any] = []
    if isinstance(result, dict) and isinstance(result.get("plan"), list):
        plan_steps = result["plan"]
    # Which step node each event belongs to: the step itself, or the step an agent-turn node runs in.
    def step_of(node: str | None) -> str | None:
        seen = 0
        while node is not None and seen < 50:
            row = steps_rows.get(node)
            if row is None:
                return None
            if row["kind"] == "step":
                return node
            node, seen = row["parent_node"], seen + 1
        return None
    # a branch's reused steps too: they are part of what it did (their code is in the record they came from)
    # (not those a resume re-announced: a planned step completed before a resume shows again as `reused` after each
    # continuation, while its completed node, with its code, is in this record already; a branch's own reused steps
    # all come before its first continuation)
    with store.engine.connect() as conn:
        resumed_at = run_starts(conn, [sid], first=True).get(sid)
    step_nodes = [r for r in steps_rows.values() if r["kind"] == "step" and r["status"] in ("completed", "reused")
                  and not (r["status"] == "reused" and resumed_at is not None and (r["start_seq"] or 0) > resumed_at)]
    step_nodes.sort(key=lambda r: r["start_seq"] or 0)
    if from_node is not None:
        if from_node not in steps_rows:  # as events.query and session.replay say it: the nodes it does have
            raise SkillError("unknown_node", f"session {sid} has no node {from_node!r}",
                             details={"nodes": list(steps_rows)[:200]})
        start_at = steps_rows[from_node]
        seen = 0  # a node inside a step (an agent turn, an attempt): the step it is part of
        while start_at["kind"] != "step" and start_at.get("parent_node") in steps_rows and seen < 50:
            start_at, seen = steps_rows[start_at["parent_node"]], seen + 1
        first = start_at["start_seq"] or 0
        step_nodes = [r for r in step_nodes if (r["start_seq"] or 0) >= first]
    if len(step_nodes) > MAX_STEPS:  # a long session: name the step a skill of its last MAX_STEPS would start at
        start = step_nodes[-MAX_STEPS]["node_id"]
        there = " from there" if from_node else ""
        raise SkillError("bad_skill", f"session {sid} has {len(step_nodes)} completed steps{there}"
                         f"; a skill holds at most {MAX_STEPS}: save one from a later step (from_node; labd skills "
                         f"save {sid} --from {start}: its last {MAX_STEPS})", "from_node",
                         details={"steps": len(step_nodes), "max": MAX_STEPS, "from_node": start})
    code: dict[str, list[str]] = {}
    answers: dict[str, str] = {}
    agents_used: set[str] = set()
    answered_by: dict[str, str] = {}  # step node -> the agent that answered in it last
    files: list[dict[str, Any]] = []
    kept = {r["node_id"] for r in step_nodes}
    size = 0  # characters of code and answers kept so far
    for e in _all_events(store, sid, ["code.execution", "agent.message", "file.created", "file.changed"]):
        p, node = e["payload"], step_of(e.get("node_id"))
        if node is not None and node not in kept and e["kind"] in ("code.execution", "agent.message"):
            continue  # a step the skill does not hold (before --from, failed, rejected)
        if e["kind"] == "code.execution" and p.get("exit_code") == 0 and node:
            runs = code.setdefault(node, [])
            if len(runs) >= MAX_CODE_RUNS:  # the last ones that worked are kept: they are what a run is told
                size -= len(runs.pop(0))
            runs.append(str(p.get("code", ""))[:MAX_CODE])
            size += len(runs[-1])
        elif e["kind"] == "agent.message" and node:
            size -= len(answers.get(node, ""))
            answers[node] = str(p.get("content", ""))[:MAX_ANSWER]
            size += len(answers[node])
            agents_used.add(str(p.get("agent", "")))
            answered_by[node] = str(p.get("agent", ""))
        if size > MAX_SKILL_CHARS:
            raise SkillError("bad_skill", f"session {sid}'s steps hold more code and answers than a skill does "
                             f"(over {MAX_SKILL_CHARS:,} characters): save one from a later step (labd skills save "
                             f"{sid} --from NODE)", "from_node")
        elif e["kind"] in ("file.created", "file.changed") and len(files) < MAX_FILES:
            nbytes, digest = p.get("size"), p.get("sha256")  # (not `size`: that counts the characters kept)
            files.append({"path": str(p.get("path"))[:4096], "step": node,
                          "sha256": digest if isinstance(digest, str) and len(digest) <= 128 else None,
                          "size": nbytes if isinstance(nbytes, int) and not isinstance(nbytes, bool)
                          and 0 <= nbytes < 2**63 else None})
    steps_out: list[dict[str, Any]] = []
    at: dict[int, int] = {}  # plan index -> the step's place in the skill (depends_on names plan indexes)
    for row in step_nodes:
        # the plan entry of the step by the step's own number ("step 2: ..."), never by its place among the steps
        # kept: a skill from a later step, a branch's reused steps or a rejected step shifted every goal
        index = _plan_index(str(row["name"]))
        planned = plan_steps[index] if index is not None and index < len(plan_steps) \
            and isinstance(plan_steps[index], dict) else {}
        # a workflow's result is whatever it returned: its plan is taken in check_skill's shapes
        depends = planned.get("depends_on")
        if index is not None and planned:
            at.setdefault(index, len(steps_out))
            # renumbered to the skill's own steps; a step the skill does not hold (before --from) is dropped
            depends = [at[d] for d in depends if type(d) is int and d in at and at[d] < len(steps_out)] \
                if isinstance(depends, list) else []
        steps_out.append({"name": str(row["name"])[:10_000],
                          "goal": str(planned.get("goal") or row["name"] or "step")[:10_000],
                          # the role planned, else the agent that answered in the step (a workflow without a plan)
                          "agent": str(planned.get("agent") or answered_by.get(row["node_id"]) or row.get("agent")
                                       or ("engineer" if plan_steps else "none"))[:200],
                          "depends_on": [d for d in depends if isinstance(d, int) and not isinstance(d, bool)
                                         and 0 <= d < 2**63][:MAX_STEPS] if isinstance(depends, list) else [],
                          "code": code.get(row["node_id"], []), "answer": answers.get(row["node_id"], "")})
    used_roles = {s["agent"] for s in steps_out if s["agent"] != "none"} | \
        {a for a in agents_used if roles and a in roles}
    sys_path = store.created(sid).get("sys_path")
    return {
        "name": name,
        "description": (description or f"from session {session['name']} ({session['workflow']})")[:2000],
        # where its workflow was imported from (the client's directory and PYTHONPATH): a run from elsewhere looks
        # there too (a module workflow ran only from the directory it was saved in)
        "sys_path": [p for p in sys_path if isinstance(p, str)][:100]
        if isinstance(sys_path, list) and session["workflow"] not in BUILTINS else [],
        "workflow": session["workflow"], "origin_session": sid, "from_node": from_node,
        "parameters": wanted, "params": {k: v for k, v in params.items() if k not in ("plan", "hints")},
        "plan": [{"agent": s["agent"], "goal": s["goal"], "depends_on": s["depends_on"]} for s in steps_out],
        "steps": steps_out,
        "agents": {r: {"system_prompt": (roles or {}).get(r, {}).get("system_prompt", "")} for r in sorted(used_roles)},
        "files": files,
    }


def _all_events(store: Store, sid: str, kinds: list[str]) -> Iterator[dict[str, Any]]:
    """Every event of ``kinds`` of session ``sid``, read a page at a time (a page is bounded in rows and bytes)."""
    since = 0
    while True:
        page = store.events_page(sid, since=since, kinds=kinds)
        yield from page["events"]
        if not page["more"] or not page["events"]:
            return
        since = page["events"][-1]["seq"]


#: a planning workflow's step name: "step 2: compute it ..." (also "... (redo 1)"); the number is 1-based
_STEP_NUMBER = re.compile(r"step (\d{1,6}): ")


def _plan_index(name: str) -> int | None:
    """The 0-based plan index a planning workflow's step ``name`` carries, or None (another workflow's step)."""
    m = _STEP_NUMBER.match(name)
    return int(m.group(1)) - 1 if m and int(m.group(1)) > 0 else None


def _q_latest(name: str) -> Select[Any]:
    return select(skills).where(skills.c.name == name).order_by(skills.c.version.desc()).limit(1)


def skill_by_key(conn: Any, key: str, digest: str | None) -> tuple[str, int] | None:
    """``(name, version)`` the save or import with idempotency ``key`` stored, if one did; :class:`SkillError`
    ``idempotency_conflict`` when that request asked for something else than ``digest`` says."""
    first = conn.execute(select(skills.c.name, skills.c.version, skills.c.request_digest)
                         .where(skills.c.idempotency_key == key).limit(1)).first()
    if first is None:
        return None
    if first.request_digest != digest:
        raise SkillError("idempotency_conflict", "this idempotency_key was used for a different skill save or import "
                         "(another session, name, parameters or document); use a new key per request",
                         details={"name": first.name, "version": first.version})
    return first.name, int(first.version)


def insert_skill(conn: Any, doc: dict[str, Any], now: float, key: str | None = None,
                 digest: str | None = None) -> tuple[str, int, bool]:
    """Store ``doc`` as the next version of its name (the caller commits); returns ``(name, version, replayed)``.
    With an idempotency ``key`` already stored: the version it stored, nothing new (a retry after a lost reply), if
    ``digest`` (of what the request asked) matches; else :class:`SkillError` ``idempotency_conflict``."""
    if key is not None:
        first = skill_by_key(conn, key, digest)
        if first is not None:
            return *first, True
    name = doc["name"]
    # skill_names has every name a version was ever stored under (migration 0014 filled it): never a number twice
    given = conn.execute(select(skill_names.c.last_version).where(skill_names.c.name == name)).scalar()
    version = int(given or 0) + 1
    if given is None:
        conn.execute(insert(skill_names).values(name=name, last_version=version))
    else:
        conn.execute(update(skill_names).where(skill_names.c.name == name).values(last_version=version))
    doc = {**doc, "version": version, "created_at": now}
    conn.execute(insert(skills).values(name=doc["name"], version=version, created_at=now,
                                       origin_session=doc.get("origin_session"), workflow=doc["workflow"],
                                       description=doc.get("description", ""),
                                       document=orjson.dumps(doc).decode(), idempotency_key=key,
                                       request_digest=digest if key is not None else None))
    return name, version, False


def get_skill(engine: Engine, name: str, version: int | None = None) -> dict[str, Any]:
    """A skill's document (the latest version unless ``version``)."""
    q = _q_latest(name) if version is None else select(skills).where(skills.c.name == name,
                                                                      skills.c.version == version)
    with engine.connect() as conn:
        row = conn.execute(q).mappings().first()
    if row is None:
        raise SkillError("not_found", f"no skill {name!r}" + (f" version {version}" if version else ""))
    try:
        doc = orjson.loads(row["document"])
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise SkillError("bad_skill", f"skill {name!r} version {row['version']}: its stored document is not a JSON "
                         "object", "document")
    return doc


def list_skills(engine: Engine, search: str | None = None) -> list[dict[str, Any]]:
    """The latest version of every skill (name, version, workflow, description, origin, created_at); ``search``:
    only those whose name, description or a text in their document (goals, code, answers, params: values, not
    field names) contains it, case-insensitively, taken literally (``%`` and ``_`` are no wildcards)."""
    latest = select(skills.c.name, func.max(skills.c.version).label("v")).group_by(skills.c.name).subquery()
    cols = [skills.c.name, skills.c.version, skills.c.workflow, skills.c.description, skills.c.origin_session,
            skills.c.created_at]
    q = (select(*cols, *([skills.c.document] if search else []))
         .join(latest, (skills.c.name == latest.c.name) & (skills.c.version == latest.c.v)).order_by(skills.c.name))
    if search and search.isascii():
        # the candidates: the text as it is written inside the stored JSON (a newline or quote escaped), LIKE's
        # wildcards escaped; then only those where it is in a value (a field name matched every skill). Not for
        # other text: SQLite's LIKE folds ASCII letters only (`café` missed `CAFÉ`), so every skill is a candidate
        written = orjson.dumps(search).decode()[1:-1]
        like = "%" + written.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        q = q.where(or_(skills.c.name.ilike(like, escape="!"), skills.c.description.ilike(like, escape="!"),
                        skills.c.document.ilike(like, escape="!")))
    if not search:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings().all()]
    needle = search.casefold()
    out: list[dict[str, Any]] = []
    # one document at a time (each may be megabytes): only the matching rows' columns are kept
    with engine.connect().execution_options(stream_results=True, max_row_buffer=10) as conn:
        for r in conn.execute(q).mappings():
            if _mentions(r, needle):
                out.append({k: v for k, v in r.items() if k != "document"})
    return out


def _mentions(row: Any, needle: str) -> bool:
    """Does ``needle`` (casefolded) occur in the skill's name, description or a text value of its document?"""
    if needle in str(row["name"]).casefold() or needle in str(row["description"]).casefold():
        return True
    try:
        todo: list[Any] = [orjson.loads(row["document"])]
    except orjson.JSONDecodeError:
        return False
    if isinstance(todo[0], dict):  # its own numbers and ids are no content (`1796` matched every skill's time)
        todo[0] = {k: v for k, v in todo[0].items() if k not in ("created_at", "version", "origin_session")}
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            if needle in value.casefold():
                return True
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
        elif value is not None and not isinstance(value, bool) and needle in str(value).casefold():
            return True  # a number among the params
    return False


def delete_skill(conn: Any, name: str) -> int:
    """Delete every version of a skill (the caller commits); returns how many versions went."""
    return int(conn.execute(delete(skills).where(skills.c.name == name)).rowcount or 0)
