"""The ``labd`` command line: the daemon (``labd serve``) and client commands built on the SDK.

Only this module turns errors into messages and exit codes: 0 ok, 1 a session failed (``run --follow``),
2 bad usage / configuration / daemon errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from labd.daemon.config import ConfigError
from labd.frontends import daemonctl, retention_cmd, service
from labd.ipc.client import Client, LabdError

__all__ = ["main"]

EPILOG = """examples:
  labd serve &                               run the daemon (foreground; use systemd or & to background)
  labd run demo.count --param n=5 --follow   start a session and stream its output
  labd run mypkg.flows:study --memory 512M --cpu 50% --timeout 1h
  labd ps                                    list sessions with live RSS / CPU
  labd logs -f SESSION                       output so far, then live
  labd events SESSION --since 100 --json     raw events after seq 100
  labd show SESSION                          status, exit reason, limits, peaks, steps
  labd stop SESSION                          graceful stop, forced after a grace period
  labd run hitl --budget 0.50 --follow       a human-in-the-loop session with an LLM budget
  labd approvals                             what waits for a human, across sessions
  labd approve SESSION | reject SESSION --feedback "..." | redo SESSION --hypothesis "..."
  labd dag SESSION --format mermaid          the step graph (json, mermaid or dot)
  labd cost SESSION / labd files SESSION / labd history SESSION
"""


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _fmt_age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, time.time() - ts)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param takes key=value, got {item!r}")
        out[key] = value
    return out


def _print_output(ev: dict[str, Any], show_meta: bool = True) -> None:
    kind, p = ev["kind"], ev["payload"]
    if kind == "output":
        (sys.stdout if p["stream"] == "stdout" else sys.stderr).write(p["text"])
    elif not show_meta:
        return
    elif kind == "log":
        fields = " ".join(f"{k}={v}" for k, v in (p.get("fields") or {}).items() if k != "session_id")
        print(f"[{p['level']}] {p['event']} {fields}".rstrip(), file=sys.stderr)
    elif kind == "session.ended":
        print(f"== session {p['status']}: {p['reason']}", file=sys.stderr)
    elif kind == "limit.exceeded":
        print(f"== limit exceeded: {p['limit']} {p['measured']} > {p['max']} ({p['action']})", file=sys.stderr)
    sys.stdout.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    import sqlalchemy.exc

    from labd.daemon import logsetup
    from labd.daemon.config import load_config
    from labd.daemon.server import AlreadyRunning, Daemon
    from labd.ipc.paths import UnsafeRuntimeDir

    if args.detach:
        return daemonctl.serve_detached(args)
    cfg = load_config(args.home, db_url=args.db, log_format=args.log_format, log_level=args.log_level)
    logsetup.configure(cfg.log_format, cfg.log_level)
    daemon = Daemon(cfg, drain=args.drain)
    try:
        daemon.serve()
    except (AlreadyRunning, UnsafeRuntimeDir) as exc:
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    except sqlalchemy.exc.SQLAlchemyError as exc:
        print(f"labd: cannot use the database {cfg.db_url.split('@')[-1]}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    return 1 if daemon.failed else 0


def cmd_run(args: argparse.Namespace, c: Client) -> int:
    from labd.daemon.config import parse_duration, parse_percent, parse_size

    # Parse limits here too, so a typo is reported before anything reaches the daemon.
    memory = parse_size(args.memory) if args.memory else None
    cpu = parse_percent(args.cpu) if args.cpu else None
    timeout = parse_duration(args.timeout) if args.timeout else None
    if args.budget is not None and not args.budget > 0:
        raise ConfigError("--budget must be a positive amount of USD")
    sid = c.start(args.workflow, name=args.name, params=_params(args.param), memory=memory, cpu=cpu,
                  timeout=timeout, budget=args.budget, budget_action=args.on_budget)
    if not args.follow:
        print(sid)
        return 0
    print(f"== session {sid}", file=sys.stderr)
    for ev in c.follow(sid):
        _print_output(ev)
    return 0 if c.session(sid)["status"] == "completed" else 1


def cmd_ps(args: argparse.Namespace, c: Client) -> int:
    rows = c.sessions(status=None if args.all else list(LIVE), limit=args.limit)
    if not args.all and not rows:
        rows = c.sessions(limit=10)  # nothing running: show the most recent ones instead
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = []
    for r in rows:
        live = r.get("live") or {}
        table.append([r["id"], r["name"][:28], r["workflow"][:28], r["status"], str(r["pid"] or "-"),
                      _fmt_bytes(live.get("rss") or (r["peak_rss"] if not live else 0)),
                      f"{live['cpu_percent']:.0f}%" if live else "-", _fmt_age(r["created_at"])])
    print(_table(table, ["ID", "NAME", "WORKFLOW", "STATUS", "PID", "RSS", "CPU", "AGE"]))
    return 0


def cmd_logs(args: argparse.Namespace, c: Client) -> int:
    if args.follow:
        for ev in c.follow(args.session):
            _print_output(ev, show_meta=not args.output_only)
        return 0
    for ev in c.history(args.session):
        _print_output(ev, show_meta=not args.output_only)
    return 0


def cmd_events(args: argparse.Namespace, c: Client) -> int:
    it = c.follow(args.session, since=args.since) if args.follow else c.history(args.session, since=args.since)
    for ev in it:
        if args.kind and not any(ev["kind"].startswith(k) for k in args.kind):
            continue
        if args.json:
            print(json.dumps(ev, default=str), flush=True)
        else:
            t = datetime.fromtimestamp(ev["ts"]).strftime("%H:%M:%S.%f")[:-3]
            node = f" [{ev['node_id']}]" if ev["node_id"] else ""
            payload = json.dumps(ev["payload"], default=str)
            print(f"{ev['seq']:>7} {t} {ev['src'][0]} {ev['kind']}{node} {payload[:200]}", flush=True)
    return 0


def cmd_show(args: argparse.Namespace, c: Client) -> int:
    s = c.session(args.session)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    lim = s["limits"]
    live = s.get("live") or {}
    dur = (s["ended_at"] or time.time()) - (s["started_at"] or s["created_at"])
    lines = [
        f"session   {s['id']}  ({s['name']})",
        f"workflow  {s['workflow']}  params {json.dumps(s['params'])}",
        f"status    {s['status']}" + (f"  ({s['reason']})" if s["reason"] else ""),
        f"ended by  {s['ended_by'] or '-'}  exit code {s['exit_code'] if s['exit_code'] is not None else '-'}"
        + (f"  signal {s['signal']}" if s["signal"] else ""),
        f"pid       {s['pid'] or '-'}   workdir {s['workdir']}",
        f"limits    memory {_fmt_bytes(lim.get('memory')) if lim.get('memory') else 'none'}, "
        f"cpu {str(lim['cpu']) + '%' if lim.get('cpu') else 'none'}, "
        f"timeout {str(lim['timeout']) + 's' if lim.get('timeout') else 'none'}",
        f"peaks     rss {_fmt_bytes(max(s['peak_rss'], live.get('peak_rss', 0)))}, "
        f"cpu {max(s['peak_cpu_percent'], live.get('peak_cpu_percent', 0)):.0f}%",
        f"timings   created {datetime.fromtimestamp(s['created_at']).isoformat(timespec='seconds')}, "
        f"ran {dur:.2f}s, events {s['last_seq']}",
    ]
    if s["cost"]:
        budget = lim.get("budget")
        lines.append(f"llm cost  ${s['cost']:.6f}" + (f" of budget ${budget:g}" if budget else "")
                     + "  (labd cost for details)")
    if s["status"] in LIVE and s.get("last_seen"):
        quiet = time.time() - s["last_seen"]
        lines.append(f"runner    last heard from {quiet:.1f}s ago" + ("  (unresponsive?)" if quiet > 10 else ""))
    if s["steps"]:
        lines.append("steps")
        for st in s["steps"]:
            d = f"{st['duration']:.2f}s" if st["duration"] is not None else "…"
            lines.append(f"  {st['node_id']:<6} {st['status']:<10} {d:>8}  {st['name']}"
                         + (f"  ({st['error']})" if st["error"] else ""))
    print("\n".join(lines))
    return 0


def cmd_stop(args: argparse.Namespace, c: Client) -> int:
    r = c.stop(args.session, grace=args.grace)
    print(f"stopping {r['session']} (forced after {r['grace']:g}s)")
    if args.wait:
        s = c.wait(r["session"])
        print(f"{s['status']}: {s['reason']}")
    return 0


def cmd_kill(args: argparse.Namespace, c: Client) -> int:
    r = c.kill(args.session)
    print(f"killing {r['session']}")
    return 0


def cmd_approvals(args: argparse.Namespace, c: Client) -> int:
    rows = c.approvals(args.session, status="all" if args.all else "pending")
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("no pending approvals" if not args.all else "no approvals")
        return 0
    table = [[r["session_id"], r["id"], r["kind"], r["status"], r["decision"] or "-", "/".join(r["options"]),
              _fmt_age(r["requested_at"]), r["prompt"][:60]] for r in rows]
    print(_table(table, ["SESSION", "APPROVAL", "KIND", "STATUS", "DECISION", "OPTIONS", "AGE", "PROMPT"]))
    return 0


def cmd_resolve(args: argparse.Namespace, c: Client) -> int:
    r = c.resolve(args.session, args.decision if args.cmd == "resolve" else args.cmd,
                  feedback=args.feedback, hypothesis=getattr(args, "hypothesis", None), approval_id=args.id)
    print(f"{r['decision']}: {r['approval_id']} ({r['session']})")
    return 0


def cmd_pause(args: argparse.Namespace, c: Client) -> int:
    r = c.pause(args.session) if args.cmd == "pause" else c.resume(args.session)
    print(f"{args.cmd} requested for {r['session']}" + (" (takes effect at the next step boundary)"
                                                        if args.cmd == "pause" else ""))
    return 0


def cmd_dag(args: argparse.Namespace, c: Client) -> int:
    print(c.dag(args.session, args.format)["text"], end="")
    return 0


def cmd_cost(args: argparse.Namespace, c: Client) -> int:
    r = c.cost(args.session)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
        return 0
    t = r["total"]
    label = " (offline scripted model: nominal prices)" if t["offline"] else ""
    print(f"session {r['session']}: ${t['cost']:.6f} for {t['calls']} LLM calls, "
          f"{t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens{label}"
          + (f"; budget ${r['budget']:g}" if r.get("budget") else ""))
    for key, title in (("by_agent", "AGENT"), ("by_model", "MODEL"), ("by_node", "NODE")):
        col = {"by_agent": "agent", "by_model": "model", "by_node": "node_id"}[key]
        rows = [[str(g[col]), str(g["calls"]), str(g["prompt_tokens"]), str(g["completion_tokens"]),
                 f"${g['cost']:.6f}"] for g in r[key]]
        print()
        print(_table(rows, [title, "CALLS", "PROMPT", "COMPLETION", "COST"]))
    return 0


def cmd_files(args: argparse.Namespace, c: Client) -> int:
    rows = c.files(args.session)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = [[f["path"], f["change"], str(f["size"]), f["kind"], f["sha256"][:12], f["step"] or "-",
              f["agent"] or "-", f["tool"] or "-"] for f in rows]
    print(_table(table, ["PATH", "CHANGE", "SIZE", "KIND", "SHA256", "STEP", "AGENT", "TOOL"]))
    return 0


def cmd_history(args: argparse.Namespace, c: Client) -> int:
    for h in c.state_history(args.session):
        t = datetime.fromtimestamp(h["ts"]).strftime("%H:%M:%S.%f")[:-3]
        what = f"step {h['node_id']}" if h["node_id"] else "session"
        print(f"{t}  {what:<12} {h['from_status'] or '-':>16} -> {h['to_status']:<16} by {h['actor']:<8} {h['reason']}")
    return 0


def cmd_workflows(args: argparse.Namespace, c: Client) -> int:
    for wf in c.workflows():
        params = ", ".join(f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']}")
                           for p in wf["params"])
        print(f"{wf['name']:<14} ({params})\n    {wf['doc'].splitlines()[0] if wf['doc'] else ''}")
    return 0


def cmd_status(args: argparse.Namespace, c: Client) -> int:
    print(json.dumps(c.status(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labd", description="Run AI research sessions, each in its own process, "
                                "and keep a complete record of everything they do.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="labd home (data, database, sockets); default $LABD_HOME or the XDG data dir")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sub.add_parser("mcp", help="serve MCP over stdio (for Claude Desktop, Cursor, VS Code ...)")

    s = sub.add_parser("serve", help="run the daemon in the foreground")
    s.add_argument("--db", help="database URL (default: SQLite in the home; postgresql://... for PostgreSQL)")
    s.add_argument("--log-format", choices=["auto", "json", "console"], help="log format (default auto)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    daemonctl.add_serve_options(s)
    daemonctl.add_commands(sub)
    service.add_commands(sub)

    s = sub.add_parser("run", help="start a session (prints its id)")
    s.add_argument("workflow", help="a built-in (see `labd workflows`) or package.module:function")
    s.add_argument("--name", help="a name for the session")
    s.add_argument("--param", "-p", action="append", default=[], metavar="K=V", help="workflow parameter")
    s.add_argument("--memory", help="memory limit for the whole process tree, e.g. 512M")
    s.add_argument("--cpu", help="CPU limit in percent of one core, e.g. 50%%")
    s.add_argument("--timeout", help="wall-time limit, e.g. 90s, 15m, 1h")
    s.add_argument("--budget", type=float, help="LLM budget in USD for the whole session, e.g. 2.50")
    s.add_argument("--on-budget", choices=["stop", "pause"], help="what crossing the budget does (default stop)")
    s.add_argument("--follow", "-f", action="store_true", help="stream its output until it ends")

    s = sub.add_parser("ps", help="list sessions")
    s.add_argument("--all", "-a", action="store_true", help="include ended sessions")
    s.add_argument("--limit", type=int, default=200)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("logs", help="a session's output (history, then live with -f)")
    s.add_argument("session")
    s.add_argument("--follow", "-f", action="store_true")
    s.add_argument("--output-only", action="store_true", help="only stdout/stderr, no log records")

    s = sub.add_parser("events", help="a session's events")
    s.add_argument("session")
    s.add_argument("--since", type=int, default=0, help="only events with seq > N")
    s.add_argument("--kind", action="append", help="only kinds starting with this (repeatable)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--follow", "-f", action="store_true")

    s = sub.add_parser("show", help="a session's status, exit reason, limits, peaks, timings, steps")
    s.add_argument("session")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("stop", help="stop a session: ask, then SIGTERM, then SIGKILL")
    s.add_argument("session")
    s.add_argument("--grace", type=float, help="seconds to wait before SIGTERM (default 5)")
    s.add_argument("--wait", action="store_true", help="wait until it has ended")

    COMMANDS.update(retention_cmd.register(sub))

    s = sub.add_parser("kill", help="kill a session's process tree now (SIGKILL)")
    s.add_argument("session")

    s = sub.add_parser("approvals", help="approval requests (pending, across sessions)")
    s.add_argument("session", nargs="?", help="only this session")
    s.add_argument("--all", "-a", action="store_true", help="include resolved ones")
    s.add_argument("--json", action="store_true")
    for name, text in (("approve", "approve a session's pending request (optionally with feedback)"),
                       ("reject", "reject it, with feedback for the agents"),
                       ("modify", "approve with changes: feedback the agents must follow"),
                       ("redo", "redo the step or plan with a hypothesis to try")):
        s = sub.add_parser(name, help=text)
        s.add_argument("session")
        s.add_argument("--id", help="the approval id, when a session has several pending")
        s.add_argument("--feedback", required=name in ("modify",), help="text for the agents")
        if name == "redo":
            s.add_argument("--hypothesis", required=True, help="what to try differently")
    s = sub.add_parser("resolve", help="answer a pending approval with any of its options")
    s.add_argument("session")
    s.add_argument("decision", help="one of the request's options (see labd approvals)")
    s.add_argument("--id", help="the approval id, when a session has several pending")
    s.add_argument("--feedback", help="text for the agents")
    s.add_argument("--hypothesis", help="what to try differently (for redo)")
    for name in ("pause", "resume"):
        s = sub.add_parser(name, help=f"{name} a session at its next step boundary")
        s.add_argument("session")
    s = sub.add_parser("dag", help="a session's step graph")
    s.add_argument("session")
    s.add_argument("--format", choices=["json", "mermaid", "dot"], default="json")
    s = sub.add_parser("cost", help="a session's LLM cost per agent, model and node")
    s.add_argument("session")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("files", help="files a session produced, with the step and agent that wrote them")
    s.add_argument("session")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("history", help="a session's state transitions (who, why, when)")
    s.add_argument("session")

    sub.add_parser("workflows", help="list built-in workflows and their parameters")
    sub.add_parser("status", help="daemon status and counters")
    return p


COMMANDS = {"run": cmd_run, "ps": cmd_ps, "logs": cmd_logs, "events": cmd_events, "show": cmd_show,
            "stop": cmd_stop, "kill": cmd_kill, "workflows": cmd_workflows, "status": cmd_status,
            "approvals": cmd_approvals, "approve": cmd_resolve, "reject": cmd_resolve, "modify": cmd_resolve,
            "redo": cmd_resolve, "resolve": cmd_resolve, "pause": cmd_pause, "resume": cmd_pause,
            "dag": cmd_dag, "cost": cmd_cost, "files": cmd_files, "history": cmd_history}
LIVE = ("created", "starting", "running", "paused", "waiting_approval")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "serve":
            return cmd_serve(args)
        if args.cmd in daemonctl.COMMANDS or args.cmd in service.COMMANDS:
            return {**daemonctl.COMMANDS, **service.COMMANDS}[args.cmd](args)
        if args.cmd == "mcp":  # the SDK is imported only here: other commands stay fast
            from labd.frontends import mcp

            return mcp.run(args.home)
        with Client(args.home) as c:
            return COMMANDS[args.cmd](args, c)
    except LabdError as exc:
        print(f"labd: {exc.message} [{exc.code}]", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
