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
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, Select, delete, func, insert, or_, select

from labd.store.queries import Store
from labd.store.schema import skills

__all__ = ["SkillError", "extract", "insert_skill", "get_skill", "list_skills", "delete_skill"]

MAX_CODE = 20_000  # characters of code kept per step


class SkillError(ValueError):
    """A session a skill cannot be made from, or a skill that does not exist."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        raise SkillError("bad_request", f"parameters {unknown} are not parameters of session {sid} "
                         f"(it has: {', '.join(sorted(params)) or 'none'})")
    evs = list(store.events(sid, limit=5000, kinds=["session.finished", "step.started", "code.execution",
                                                    "agent.message", "file.created", "file.changed"]))
    steps_rows = {r["node_id"]: r for r in store.steps(sid)}
    finished = next((e for e in evs if e["kind"] == "session.finished"), None)
    result = (finished or {}).get("payload", {}).get("result")
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
    step_nodes = [r for r in steps_rows.values() if r["kind"] == "step" and r["status"] == "completed"]
    step_nodes.sort(key=lambda r: r["start_seq"] or 0)
    if from_node is not None:
        if from_node not in steps_rows:
            raise SkillError("not_found", f"session {sid} has no node {from_node!r}")
        first = steps_rows[from_node]["start_seq"] or 0
        step_nodes = [r for r in step_nodes if (r["start_seq"] or 0) >= first]
    code: dict[str, list[str]] = {}
    answers: dict[str, str] = {}
    agents_used: set[str] = set()
    files = []
    for e in evs:
        p, node = e["payload"], step_of(e.get("node_id"))
        if e["kind"] == "code.execution" and p.get("exit_code") == 0 and node:
            code.setdefault(node, []).append(str(p.get("code", ""))[:MAX_CODE])
        elif e["kind"] == "agent.message" and node:
            answers[node] = str(p.get("content", ""))[:4000]
            agents_used.add(str(p.get("agent", "")))
        elif e["kind"] in ("file.created", "file.changed"):
            files.append({"path": p.get("path"), "sha256": p.get("sha256"), "size": p.get("size"), "step": node})
    steps_out = []
    for i, row in enumerate(step_nodes):
        planned = plan_steps[i] if i < len(plan_steps) and isinstance(plan_steps[i], dict) else {}
        steps_out.append({"name": row["name"], "agent": planned.get("agent") or row.get("agent") or "engineer",
                          "goal": planned.get("goal") or row["name"], "depends_on": planned.get("depends_on", []),
                          "code": code.get(row["node_id"], []), "answer": answers.get(row["node_id"], "")})
    used_roles = {s["agent"] for s in steps_out} | {a for a in agents_used if roles and a in roles}
    return {
        "name": name, "description": description or f"from session {session['name']} ({session['workflow']})",
        "workflow": session["workflow"], "origin_session": sid, "from_node": from_node,
        "parameters": wanted, "params": {k: v for k, v in params.items() if k not in ("plan", "hints")},
        "plan": [{"agent": s["agent"], "goal": s["goal"], "depends_on": s["depends_on"]} for s in steps_out],
        "steps": steps_out,
        "agents": {r: {"system_prompt": (roles or {}).get(r, {}).get("system_prompt", "")} for r in sorted(used_roles)},
        "files": files,
    }


def _q_latest(name: str) -> Select[Any]:
    return select(skills).where(skills.c.name == name).order_by(skills.c.version.desc()).limit(1)


def insert_skill(conn: Any, doc: dict[str, Any], now: float) -> int:
    """Store ``doc`` as the next version of its name (the caller commits); returns the version."""
    last = conn.execute(select(func.max(skills.c.version)).where(skills.c.name == doc["name"])).scalar()
    version = int(last or 0) + 1
    doc = {**doc, "version": version, "created_at": now}
    conn.execute(insert(skills).values(name=doc["name"], version=version, created_at=now,
                                       origin_session=doc.get("origin_session"), workflow=doc["workflow"],
                                       description=doc.get("description", ""),
                                       document=orjson.dumps(doc).decode()))
    return version


def get_skill(engine: Engine, name: str, version: int | None = None) -> dict[str, Any]:
    """A skill's document (the latest version unless ``version``)."""
    q = _q_latest(name) if version is None else select(skills).where(skills.c.name == name,
                                                                      skills.c.version == version)
    with engine.connect() as conn:
        row = conn.execute(q).mappings().first()
    if row is None:
        raise SkillError("not_found", f"no skill {name!r}" + (f" version {version}" if version else ""))
    return dict(orjson.loads(row["document"]))


def list_skills(engine: Engine, search: str | None = None) -> list[dict[str, Any]]:
    """The latest version of every skill (name, version, workflow, description, origin, created_at)."""
    latest = select(skills.c.name, func.max(skills.c.version).label("v")).group_by(skills.c.name).subquery()
    q = (select(skills.c.name, skills.c.version, skills.c.workflow, skills.c.description, skills.c.origin_session,
                skills.c.created_at)
         .join(latest, (skills.c.name == latest.c.name) & (skills.c.version == latest.c.v)).order_by(skills.c.name))
    if search:
        like = f"%{search}%"
        q = q.where(or_(skills.c.name.ilike(like), skills.c.description.ilike(like), skills.c.document.ilike(like)))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings().all()]


def delete_skill(conn: Any, name: str) -> int:
    """Delete every version of a skill (the caller commits); returns how many versions went."""
    return int(conn.execute(delete(skills).where(skills.c.name == name)).rowcount or 0)
