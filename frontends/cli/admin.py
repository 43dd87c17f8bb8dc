"""The daemon and its surroundings: serve, status, paths, workflows."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from labd.frontends.cli.base import CliError, Ctx, add_json, command, last_line
from labd.frontends.cli.output import short, styled
from labd.ipc.client import LabdError
from labd.ipc.paths import layout_for
from labd.ipc.units import format_duration, format_size

__all__ = ["register"]


def cmd_serve(args: argparse.Namespace, ctx: Ctx) -> int:
    if getattr(args, "connect", None):  # taken by every command as a global option; a daemon runs here, always
        raise CliError("serve runs a daemon on this machine: it takes no --connect (that names a remote daemon, for "
                       "clients)")
    if args.check and (args.detach or args.drain):
        raise CliError("--check starts no daemon: not with --detach or --drain (--db, --listen and --log-* are read as "
                       "the daemon would)")
    if args.detach:
        from labd.frontends import daemonctl

        return daemonctl.serve_detached(args, ctx.home)
    # The one place a front-end reaches into the daemon: starting it (or checking what it would start with), through
    # its one public entry point.
    from labd.daemon.main import check, serve

    if args.check:
        return check(ctx.home, db=args.db, log_format=args.log_format, log_level=args.log_level, listen=args.listen)
    return serve(ctx.home, db=args.db, log_format=args.log_format, log_level=args.log_level, listen=args.listen,
                 drain=args.drain)


def cmd_status(args: argparse.Namespace, ctx: Ctx) -> int:
    st = ctx.client().status()
    if args.json:
        ctx.out.json(st)
        return 0
    running = st.get("running") or []
    fields: list[tuple[str, Any]] = [  # one block, so every value starts in the same column
        ("daemon", styled(f"running, pid {st['pid']}, up {format_duration(st.get('uptime'))}", "green")),
        ("home", st["home"]),
        ("database", st["db"]),
        ("template", f"pid {st.get('template_pid') or '-'} (forks runners)"),
        ("sessions", f"{len(running)} running" + (f": {', '.join(running[:8])}" if running else "")
         + (" …" if len(running) > 8 else "")),
    ]
    sb = st.get("sandbox") or {}
    if sb:
        level = str(sb.get("level", "?"))
        fields.append(("sandbox", styled(f"{level} ({sb.get('mechanism') or 'none'}); runner: {sb.get('runner')}; "
                                         f"network for executed code: {'on' if sb.get('network_default') else 'off'}",
                                         "green" if level == "full" else "yellow")))
        if sb.get("as_root"):  # the sandbox line alone would read as if sessions were confined like a user's
            fields.append(("as root", styled("sessions run as root: workflow code keeps root's capabilities "
                                             "(docs/security.md: run labd as a user)", "red")))
    kernel = st.get("kernel_limits")
    if kernel:  # a cgroup per session, or why not (daemon/cgroups.py)
        fields.append(("kernel limits", styled(kernel, "green" if kernel.startswith("cgroup") else "yellow")))
    tel = st.get("telemetry")
    if tel:
        fields.append(("telemetry", f"{tel['endpoint']}: {tel['exported_spans']} spans exported, "
                                    f"{tel['failures']} failures, {tel.get('skipped_spans', 0)} skipped"))
    mon = st.get("monitor")
    if mon and not mon.get("ok", True):  # limits are not being enforced: say it loudly
        why = (f"failing for {format_duration(mon.get('failing_for_s'))}: {mon.get('error')}" if mon.get("failing")
               else "its thread has ended" if not mon.get("alive") else
               f"no pass for {format_duration(mon.get('last_pass_s_ago'))}")
        fields.append(("limits", styled(f"NOT ENFORCED: the limits monitor is {why}", "red")))
    store = st.get("store") or {}
    if store.get("writable") is False:  # new sessions are refused until it is back: the refusal points here
        fields.append(("store", styled(f"NOT WRITABLE for {format_duration(store.get('down_for_s'))}: "
                                       f"{store.get('error')} (runners keep their events until it is back; new "
                                       "sessions are refused)", "red")))
    disk = st.get("disk")
    if disk:
        free = format_size(disk["free"]) if disk["free"] else "0B"
        text = f"{free} free of {format_size(disk['total'])} on the home's filesystem" + (
            f"; database {format_size(disk['db_bytes'])}" if disk.get("db_bytes") is not None else "")
        fields.append(("disk", styled(text + " (full: new sessions wait for room)", "red") if disk.get("low")
                       else text))
    ray = st.get("ray")
    if ray:  # the Ray launcher: where runners call home, and whether the cluster answers
        if ray.get("down_since"):
            since = time.strftime("%H:%M:%S", time.localtime(ray["down_since"]))
            waits = f"; {ray['adopting']} session(s) wait for it" if ray.get("adopting") else ""
            fields.append(("ray", styled(f"{ray['address']} DOES NOT ANSWER since {since}: {ray.get('error')} "
                                         f"(--on ray starts fail{waits}; next try in {ray.get('retry_in', 0):.0f}s)",
                                         "red")))
        else:
            waiting = ray.get("waiting_ports") or []
            text = f"{ray['address']}, runners call home at {ray.get('endpoint')}"
            if ray.get("driver_state") == "starting":
                text += "; connecting to the cluster"
            if ray.get("adopting"):
                text += f"; {ray['adopting']} session(s) wait for it to be adopted"
            fields.append(("ray", styled(text + f"; ports {waiting} taken: their runners reconnect once they are free",
                                         "yellow") if waiting else text))
    down = [name for name, alive in (st.get("threads") or {}).items() if not alive]
    if down:
        fields.append(("threads", styled(f"ended: {', '.join(down)} (see the daemon log)", "red")))
    ctx.out.fields(fields)
    counters = st.get("counters") or {}
    if counters:
        ctx.out.line("")
        ctx.out.table(["COUNTER", "VALUE"], [[k, str(v)] for k, v in sorted(counters.items())], right=("VALUE",))
    return 0


def _paths(ctx: Ctx) -> dict[str, Any]:
    layout = layout_for(ctx.home)
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    db, db_from, running = layout.default_db_url, "default (config.toml or LABD_DB may name another)", False
    if layout.connection_file.exists():
        try:
            db, db_from, running = ctx.client(timeout=2.0).status()["db"], "the running daemon", True
        except LabdError:
            pass
    return {"home": str(layout.home), "runtime_dir": str(layout.runtime_dir),
            "connection_file": str(layout.connection_file), "database": db, "database_from": db_from,
            "config_files": [str(xdg / "labd" / "config.toml"), str(layout.config_file)],
            "sessions_dir": str(layout.sessions_dir), "daemon_running": running,
            "daemon_log": f"stderr of `labd serve` (`serve --detach`: {layout.home / 'daemon.log'}; "
                          "under systemd: journalctl --user -u labd)"}


def cmd_paths(args: argparse.Namespace, ctx: Ctx) -> int:
    p = _paths(ctx)
    if args.json:
        ctx.out.json(p)
        return 0
    conn = "" if Path(p["connection_file"]).exists() else "  (absent: no daemon running)"
    ctx.out.fields([
        ("home", p["home"]),
        ("runtime dir", p["runtime_dir"]),
        ("connection file", p["connection_file"] + conn),
        ("database", f"{p['database']}  ({p['database_from']})"),
        ("config files", ", ".join(p["config_files"])),
        ("sessions", f"{p['sessions_dir']}  (one work directory per session)"),
        ("daemon log", p["daemon_log"]),
    ])
    return 0


def _params_text(params: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {p['default']!r}") for p in params)


def cmd_agents(args: argparse.Namespace, ctx: Ctx) -> int:
    roles = ctx.client().agents()
    if args.json:
        ctx.out.json(roles)
        return 0
    rows = [[r["name"], r["model"] or "(workflow's)", "yes" if r["code_execution"] else "",
             ",".join(r["mcp"]), r["source"], (r["description"] or last_line(r["system_prompt"]))[:60]]
            for r in roles]
    ctx.out.table(["ROLE", "MODEL", "CODE", "MCP", "SOURCE", "DESCRIPTION"], rows)
    return 0


def cmd_workflows(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    if args.target:
        info = c.inspect_workflow(args.target)
        if args.json:
            ctx.out.json(info)
            return 0
        ctx.out.line(f"{info['workflow']}  ({_params_text(info['params'])})", "bold")
        if info["doc"]:
            print(ctx.out.safe(info["doc"]))
        return 0
    flows = c.workflows()
    if args.json:
        ctx.out.json(flows)
        return 0
    for w in flows:  # a list, not a table: parameter lists are long
        ctx.out.line(f"{w['name']}  ({_params_text(w['params'])})", "bold")
        if w["doc"]:  # its first paragraph on one line (its first line stopped mid-sentence: "... after planning,")
            first = w["doc"].strip().split("\n\n", 1)[0]
            ctx.out.line(f"    {short(first, 200)}")
    ctx.out.line("also: package.module:function or path/to/flows.py[:function], resolved from where you stand "
                 "(labd workflows TARGET describes one)", "dim", err=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "serve", cmd_serve, "run the daemon in the foreground")
    s.add_argument("--db", help="database URL (default: SQLite in the home; postgresql://... for PostgreSQL)")
    s.add_argument("--log-format", choices=["auto", "json", "console"], help="log format (default auto)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="the least severe log records written (default info; $LABD_LOG_LEVEL)")
    s.add_argument("--listen", metavar="tcp://HOST:PORT",
                   help="also serve clients on TCP, encrypted and authenticated with CurveZMQ (events on PORT+1)")
    s.add_argument("--detach", action="store_true",
                   help="start the daemon in the background; return once it answers (prints pid and log file)")
    s.add_argument("--drain", action="store_true",
                   help="on SIGTERM/SIGINT stop the running sessions gracefully and wait for them before "
                        "exiting (default: they keep running and the next daemon adopts them)")
    s.add_argument("--check", action="store_true",
                   help="only read the configuration as the daemon would and say whether it would start (exit 0) or "
                        "what is wrong (exit 2); starts nothing: e.g. after editing a running service's config.toml")

    s = command(sub, "status", cmd_status, "the daemon: pid, uptime, home, database, running sessions, counters")
    add_json(s, "the daemon.status reply")

    s = command(sub, "paths", cmd_paths, "where labd keeps things: home, runtime dir, connection file, database, logs")
    add_json(s, "an object with those paths")

    s = command(sub, "agents", cmd_agents, "the agent registry: roles workflows ask for, and where each comes from")
    add_json(s, "a JSON array of roles")

    s = command(sub, "workflows", cmd_workflows, "built-in workflows and their parameters (or describe one)")
    s.add_argument("target", nargs="?", help="describe this workflow (mypkg.flows:study, ./flows.py, ...)")
    add_json(s, "a JSON array of workflows (or the one described)")
