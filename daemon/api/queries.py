"""Read requests: event history, daemon status, workflows, ping."""

from __future__ import annotations

import difflib
import os
import time
from typing import Any

from labd.daemon.api.base import ApiError, Request, register
from labd.daemon.api.roles import agent_roles
from labd.daemon.api.sessions import resolve_session
from labd.daemon.api.start import store_down
from labd.daemon.launcher import room
from labd.daemon.store_identity import shown_url
from labd.ipc.events import SCHEMAS
from labd.runner.spool import SEGMENT
from labd.runner.workflows.registry import BUILTINS, describe, resolve
from labd.store.queries import MAX_PAGE, MAX_PAGE_BYTES


@register
class Ping(Request):
    type = "ping"

    def execute(self) -> Any:
        return {"pid": os.getpid(), "version": self.daemon.version, "uptime": time.time() - self.daemon.started}


@register
class Events(Request):
    type = "events.query"

    def execute(self) -> Any:
        self.filters("session", "since", "limit", "kinds", "full", "node", "agent", "max_bytes")  # `kind`: every event
        since = self.arg("since", int, 0, check=lambda n: n >= 0, hint="a seq >= 0")
        limit = self.arg("limit", int, MAX_PAGE, check=lambda n: 0 < n <= MAX_PAGE, hint=f"1-{MAX_PAGE}")
        kinds = self.arg("kinds", list, None, check=lambda ks: all(isinstance(k, str) for k in ks),
                         hint="a list of event kinds")
        for kind in kinds or ():  # a misspelt kind is said so, not answered with no events ("there were none")
            if kind not in SCHEMAS:
                near = difflib.get_close_matches(kind, SCHEMAS, n=1)
                raise ApiError("bad_request", f"field 'kinds': {kind!r} is no event kind"
                               f"{f' (did you mean {near[0]!r}?)' if near else ''}; the kinds: docs/protocol.md, 6.1",
                               {"field": "kinds"})
        full = self.arg("full", bool, False, hint="true to inline blobs (complete LLM requests and responses)")
        node = self.arg("node", str, None, check=lambda s: 0 < len(s) <= 64, hint="a node id")
        agent = self.arg("agent", str, None, check=lambda s: 0 < len(s) <= 100, hint="an agent name")
        # a client that returns a bounded amount (labd mcp: ~200,000 characters to a model) asks for about that much
        max_bytes = self.arg("max_bytes", int, MAX_PAGE_BYTES, check=lambda n: 0 < n <= MAX_PAGE_BYTES,
                             hint=f"1-{MAX_PAGE_BYTES}")
        row = resolve_session(self)
        nodes = None
        if node:
            # a node the session does not have (a typo, a step's name) is said so, not answered with no events
            known = [n["node_id"] for n in self.daemon.store.steps(row["id"])]
            if node not in known:
                raise ApiError("unknown_node", f"session {row['id']} has no node {node!r}", {"nodes": known[:200]})
            nodes = self.daemon.store.subtree(row["id"], node)
        page = self.daemon.store.events_page(row["id"], since=since, limit=limit, kinds=kinds, full=full,
                                             nodes=nodes, agent=agent, max_bytes=max_bytes)
        return {"session": row["id"], "events": page["events"], "status": row["status"], "more": page["more"]}


@register
class Status(Request):
    type = "daemon.status"

    def execute(self) -> Any:
        d = self.daemon
        return {"pid": os.getpid(), "home": str(d.layout.home), "db": shown_url(d.cfg.db_url),
                "running": sorted(d.supervisor.running), "counters": dict(d.counters),
                "template_pid": d.launcher.template_pid, "workflow_checks": len(d.checks), "long_reads": len(d.reads),
                "sandbox": {**d.sandbox.to_dict(), "runner": d.runner_confinement,
                            "network_default": d.cfg.sandbox.network, "as_root": os.geteuid() == 0},
                "uptime": time.time() - d.started, "telemetry": _telemetry(d),
                "monitor": d.monitor.health(), "kernel_limits": d.cgroups.described,
                "threads": _threads(d), "nofile": getattr(d, "nofile", None), "store": _store(d),
                "drain": d.drain, "disk": _disk(d), "ray": d.launcher.ray_health()}


def _disk(d: Any) -> dict[str, Any] | None:
    """Room on the home's filesystem (sessions' files and spools; a SQLite store) and the SQLite store's size. ``low``:
    too little for a runner's spool, so new sessions wait ``queued`` for room (daemon/launcher.py)."""
    try:
        st = os.statvfs(d.layout.home)
        free = room(d.layout.home)
    except OSError:
        return None
    out: dict[str, Any] = {"free": free, "total": st.f_blocks * st.f_frsize, "low": free < SEGMENT}
    if d.cfg.db_url.startswith("sqlite:///"):
        db = d.cfg.db_url.removeprefix("sqlite:///")
        out["db_bytes"] = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    return out


def _store(d: Any) -> dict[str, Any]:
    """Can ingest write the store? While it cannot (a full disk, a lock held elsewhere): for how long, and why."""
    lock = getattr(d, "store_lock", None)  # PostgreSQL: is this daemon's hold on the store's lock live?
    held = {} if lock is None else {"lock_held": lock.held}
    down = store_down(d)
    if down is None:
        return {"writable": True, **held}
    return {"writable": False, "down_for_s": round(time.monotonic() - down[0], 1), "error": down[1], **held}


def _threads(d: Any) -> dict[str, bool]:
    """Is each long-lived daemon thread alive? (the monitor's own health is under ``monitor``)"""
    threads = {"ingest": d.ingest, "monitor": d.monitor, "indexer": getattr(d, "indexer", None),
               "gateway": getattr(d, "gateway", None)}
    return {name: t.is_alive() for name, t in threads.items() if t is not None}


def _telemetry(d: Any) -> dict[str, Any] | None:
    """The OTLP exporter's state, or None when export is off."""
    t = getattr(d, "telemetry", None)
    if t is None:
        return None
    from labd.store.urls import shown_url

    return {"endpoint": shown_url(str(d.cfg.telemetry.get("otlp_endpoint"))),  # no user:password@ shown
            "exported_spans": t.exported, "failures": t.failures, "skipped_spans": t.skipped,
            "last_error": t.last_error, "alive": t.is_alive()}


@register
class Workflows(Request):
    type = "workflows.list"

    def execute(self) -> Any:
        return {"workflows": [{"name": name, "target": target, **describe(resolve(name))}
                              for name, target in sorted(BUILTINS.items())]}


@register
class Agents(Request):
    """The agent registry: every role with its prompt, model, code execution, MCP servers and source."""

    type = "agents.list"

    def execute(self) -> Any:
        return {"agents": [role for _, role in sorted(agent_roles(self.daemon).items())]}
