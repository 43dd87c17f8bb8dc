"""Read-side queries of LLM cost: one session's calls and sums, and the cost of many sessions grouped.

A mixin of :class:`labd.store.queries.Store` (it reads through the Store's engine and its ``steps``); split from
it because cost accounting is a concern of its own.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import Engine, case, func, literal, select

from labd.store.schema import DAY, cost_records, cost_sums, model_key, sessions

__all__ = ["CostQueries", "COST_GROUPS"]

#: how ``cost_summary`` can group the cost of many sessions
COST_GROUPS = ("model", "workflow", "tag", "day", "session")
MAX_TS = 1e11  # ingest takes event times below this


class CostQueries:
    """Cost reads (mixin of :class:`labd.store.queries.Store`)."""

    engine: Engine

    def steps(self, session_id: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def costs(self, session_id: str, calls: bool = True) -> dict[str, Any]:
        """Cost per call (``calls``; without it the calls are not read), and summed per agent, model, node and for
        the session."""
        c_ = cost_records.c
        with self.engine.connect() as conn:
            # the total summed where the calls are, with or without them (the same figure both ways; a days-long
            # session makes 100,000 calls)
            n, prompt, completion, cost, offline = conn.execute(
                select(func.count(), func.sum(c_.prompt_tokens), func.sum(c_.completion_tokens), func.sum(c_.cost),
                       func.sum(case((c_.offline, 1), else_=0))).where(c_.session_id == session_id)).one()
            total = {"calls": int(n or 0), "prompt_tokens": int(prompt or 0),
                     "completion_tokens": int(completion or 0), "cost": float(cost or 0.0), "offline": bool(offline)}
            every = [dict(r) for r in conn.execute(select(cost_records).where(
                c_.session_id == session_id).order_by(c_.seq)).mappings().all()] if calls else []
            groups: dict[str, list[dict[str, Any]]] = {}
            for col in ("agent", "model", "node_id"):
                c = cost_records.c[col]
                rows = conn.execute(
                    select(c, func.count(), func.sum(cost_records.c.prompt_tokens),
                           func.sum(cost_records.c.completion_tokens), func.sum(cost_records.c.cost))
                    .where(cost_records.c.session_id == session_id).group_by(c).order_by(c)).all()
                groups[col] = [{col: r[0], "calls": r[1], "prompt_tokens": int(r[2] or 0),
                                "completion_tokens": int(r[3] or 0), "cost": float(r[4] or 0.0)} for r in rows]
        steps_rollup = [{k: n[k] for k in ("node_id", "name", "kind", "parent_node", "calls", "prompt_tokens",
                                           "completion_tokens", "cost")}
                        for n in self.steps(session_id) if n["kind"] != "agent"]
        out = {"session": session_id, "total": total, "by_agent": groups["agent"], "by_model": groups["model"],
               "by_node": groups["node_id"], "by_step": steps_rollup}
        return {**out, "calls": every} if calls else out

    def cost_summary(self, *, by: str = "model", since: float | None = None) -> dict[str, Any]:
        """LLM cost across sessions, grouped ``by`` model | workflow | tag | day | session, from ``since``
        (a time, seconds since the epoch, on the call's own time). ``tag`` groups by ``key=value``.

        Read from ``cost_sums`` (the writer keeps the calls summed per session, model and UTC day: a row each,
        whatever the number of calls; months of use hold millions, which were read each time, docs/benchmarks.md
        §49); only the calls of ``since``'s own day from ``since`` on are summed from the calls themselves (their
        model's name keyed here as the sums key it: :func:`labd.store.schema.model_key`)."""
        s = cost_sums.c
        c = cost_records.c
        parts: list[Any] = [select(s.session_id, s.model, s.day, s.calls, s.prompt_tokens, s.completion_tokens,
                                   s.cost)]
        if since is not None:
            start = min(since, MAX_TS)  # no call is later (ingest takes 0 <= ts < 1e11)
            day = int(start // DAY)
            whole = day if start == day * DAY else day + 1  # the first day all of whose calls count
            parts[0] = parts[0].where(s.day >= whole)
            if whole != day:
                parts.append(select(c.session_id, c.model, literal(day), func.count(), func.sum(c.prompt_tokens),
                                    func.sum(c.completion_tokens), func.sum(c.cost))
                             .where(c.ts >= start, c.ts < whole * DAY).group_by(c.session_id, c.model))
        with self.engine.connect() as conn:
            rows = [r for q in parts for r in conn.execute(q).all()]
            meta = self._session_keys(conn, {r[0] for r in rows}, by)
        groups: dict[str, dict[str, Any]] = {}
        total = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "sessions": 0}
        seen: set[str] = set()
        for row in rows:
            sid = row[0]
            if sid not in meta:  # calls of a session being deleted
                continue
            n, prompt, completion, cost = int(row[3]), int(row[4] or 0), int(row[5] or 0), float(row[6] or 0.0)
            names = ([model_key(row[1])] if by == "model" else [time.strftime("%Y-%m-%d", time.gmtime(row[2] * DAY))]
                     if by == "day" else meta[sid])
            for key in names:
                g = groups.setdefault(key, {by: key, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                            "cost": 0.0, "sessions": set()})
                g["calls"] += n
                g["prompt_tokens"] += prompt
                g["completion_tokens"] += completion
                g["cost"] += cost
                g["sessions"].add(sid)
            total["calls"] += n
            total["prompt_tokens"] += prompt
            total["completion_tokens"] += completion
            total["cost"] += cost
            seen.add(sid)
        total["sessions"] = len(seen)
        out = [{**g, "sessions": len(g["sessions"])} for _k, g in sorted(groups.items())]
        return {"by": by, "since": since, "total": total, "groups": out}

    @staticmethod
    def _session_keys(conn: Any, ids: set[str], by: str) -> dict[str, list[str]]:
        """For each of these sessions that exists, the keys its calls count under when grouped ``by`` workflow,
        session or tag (a call counts once under each of its session's tags; ``(untagged)`` for none); none for
        model and day (their keys are the call's own)."""
        out: dict[str, list[str]] = {}
        wanted = sorted(ids)
        for i in range(0, len(wanted), 500):
            for sid, workflow, tags in conn.execute(select(sessions.c.id, sessions.c.workflow, sessions.c.tags)
                                                    .where(sessions.c.id.in_(wanted[i:i + 500]))):
                out[sid] = ([workflow] if by == "workflow" else [sid] if by == "session" else [] if by != "tag" else
                            [f"{k}={v}" for k, v in sorted(orjson.loads(tags or "{}").items())] or ["(untagged)"])
        return out
