"""Session commands: run, ps, show, stop, kill, pause, resume."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from labd.frontends.cli.base import CliError, Ctx, add_json, command
from labd.frontends.cli.waits import follow, wait_for
from labd.ipc import LabdError
from labd.ipc.limits import MAX_JSON_INT, MAX_LIMIT, MIN_MEMORY
from labd.ipc.units import (
    BeyondAny,
    UnitError,
    parse_cpus,
    parse_duration,
    parse_output_cap,
    parse_percent,
    parse_size,
)

__all__ = ["register", "parse_params", "limits_from", "bounded_size", "MAX_MEMORY", "MAX_OUTPUT"]

#: the largest --memory the daemon accepts (1 PiB)
MAX_MEMORY = int(MAX_LIMIT["memory"])
#: --max-output must stay below 2**64 (16 EiB): a JSON integer cannot be larger, and the daemon reads no more
MAX_OUTPUT = MAX_JSON_INT


def parse_params(items: list[str]) -> dict[str, str]:
    """``-p k=v`` pairs; a key given twice is refused (silently keeping the last one hid typos)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"-p/--param takes key=value, got {item!r}")
        if key in out:
            raise CliError(f"parameter {key!r} given twice ({out[key]!r} and {value!r}): give it once")
        out[key] = value
    return out


def bounded_size(text: str, most: int, limit: str) -> int:
    """:func:`parse_size` with a ceiling: more than ``most`` bytes, or a number too large to compute at all
    (``1e300T``), is refused here as ``beyond any machine (limit)``, before the daemon is asked."""
    try:
        size = parse_size(text)
    except BeyondAny:  # too large to compute (1e300T): said with the ceiling, like any size above it
        size = most + 1
    if size > most:
        raise UnitError(f"bad size {text!r}: beyond any machine ({limit})")
    return size


def limits_from(args: argparse.Namespace) -> dict[str, Any]:
    """Limits from the flags, parsed here so a typo is reported before anything reaches the daemon."""
    # An option given is parsed, even empty: `--memory ""` (an unset variable in a script) is an error, not "no
    # limit" -- tested with `is not None`, never by truth.
    for option in ("memory", "cpu", "cpus", "timeout", "max_output"):
        value = getattr(args, option, None)
        if value is not None and not value.strip():
            raise CliError(f"--{option.replace('_', '-')} needs a value, not {value!r} (leave the option out for "
                           + ("the daemon's default)" if option == "max_output" else "no limit)"))
    memory = None if args.memory is None else \
        _unit("--memory", lambda: bounded_size(args.memory, MAX_MEMORY, "at most 1024T, 1 PiB"))
    if memory is not None and memory < MIN_MEMORY:  # said here, in the option's terms (the daemon's reply spoke of
        # a JSON number's bytes: "sizes as text take a unit", to someone who had given one)
        raise CliError(f"--memory {args.memory.strip()} is below what a runner needs to start "
                       f"({MIN_MEMORY // 2**20}M)")
    if args.cpu is not None and args.cpus is not None:
        raise CliError("give --cpu (percent of one core) or --cpus (cores), not both")
    cpu = None
    cluster = getattr(args, "on", None) == "ray"  # on Ray: the CPUs its node reserves, not this machine's
    if args.cpu is not None:
        if not args.cpu.strip().endswith("%"):
            raise CliError(f"--cpu takes a percent of one core: did you mean --cpu {args.cpu.strip()}%? "
                           "(--cpus takes cores, e.g. --cpus 0.5)")
        cpu = _unit("--cpu", lambda: parse_percent(args.cpu, cluster=cluster))
    elif args.cpus is not None:
        cpu = _unit("--cpus", lambda: parse_cpus(args.cpus, cluster=cluster))
    timeout = _unit("--timeout", lambda: parse_duration(args.timeout)) if args.timeout is not None else None
    if args.budget is not None and not 0 < args.budget < math.inf:
        raise CliError("--budget must be a positive amount of USD (a number: no limit is no --budget)")
    limits: dict[str, Any] = {"memory": memory, "cpu": cpu, "timeout": timeout, "budget": args.budget,
                              "budget_action": args.on_budget}
    if getattr(args, "max_output", None) is not None:
        limits["max_output"] = max_output_arg(args.max_output)
    return limits


def _unit(option: str, parse: Callable[[], Any]) -> Any:
    """``parse()``, its error named by the option, as ``--memory``'s is (the message quotes only the value)."""
    try:
        return parse()
    except UnitError as exc:
        raise CliError(f"{option}: {exc}") from None


def procs_arg(text: str) -> str | int:
    """``--procs 50`` -> 50; ``none`` (or ``0``, as in the config's ``[daemon] procs = 0``) lifts the daemon's
    default limit for this session (the daemon checks the range and answers ``bad_limits``)."""
    if text.strip().lower() in ("none", "0"):
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of processes or none, not {text!r}") from None


def max_output_arg(text: str) -> str | int:
    """``--max-output 10M`` -> bytes; ``none`` (no cap) passes through for the daemon."""
    try:
        if text.strip().lower() != "none":  # parse_output_cap has no ceiling of its own
            bounded_size(text, MAX_OUTPUT, "under 16 EiB; \"none\" means no cap")
        size = parse_output_cap(text)
    except UnitError as exc:
        raise CliError(f"--max-output: {exc}") from None
    return "none" if size is None else size


def parse_tags(items: list[str]) -> dict[str, str]:
    """``--tag k=v`` (repeatable) -> ``{k: v}``; duplicates refused."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--tag takes key=value, not {item!r}")
        if key.strip() in out:
            raise CliError(f"--tag {key.strip()} given twice")
        out[key.strip()] = value
    return out


def parse_agents(items: list[str]) -> dict[str, str]:
    """``--agent engineer=my_engineer`` (repeatable) -> ``{"engineer": "my_engineer"}``; duplicates refused."""
    out: dict[str, str] = {}
    for item in items:
        role, sep, other = item.partition("=")
        if not sep or not role.strip() or not other.strip():
            raise CliError(f"--agent takes ROLE=OTHER_ROLE (e.g. engineer=my_engineer), not {item!r}")
        if role.strip() in out:
            raise CliError(f"--agent {role.strip()} given twice")
        out[role.strip()] = other.strip()
    return out


def read_policy(path: str) -> list[dict[str, Any]]:
    """The rule tables of ``labd run --policy FILE``, checked here first (the daemon checks them again)."""
    from labd.ipc.policy import PolicyError
    from labd.ipc.policy_rules import load_file, parse_rules

    try:
        tables = load_file(path)
        parse_rules(tables, path)
    except PolicyError as exc:
        raise CliError(exc.message) from None
    return tables


def placement_from(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--on ray --gpus 1 --resource big_node=1`` -> the ``placement`` of session.start (None: the default)."""
    resources: dict[str, float] = {}
    for item in args.resource or []:
        key, sep, value = item.partition("=")
        try:
            resources[key.strip()] = float(value)
        except ValueError:
            raise CliError(f"--resource takes NAME=AMOUNT (e.g. big_node=1), not {item!r}") from None
        if not sep or not key.strip():
            raise CliError(f"--resource takes NAME=AMOUNT (e.g. big_node=1), not {item!r}")
    if args.on is None and args.gpus is None and not resources:
        return None
    out: dict[str, Any] = {"on": args.on or "ray"}
    if args.gpus is not None:
        out["gpus"] = args.gpus
    if resources:
        out["resources"] = resources
    return out


def cmd_run(args: argparse.Namespace, ctx: Ctx) -> int:
    if args.raw and not args.follow:  # it was ignored: the user believed they would see the raw output
        raise CliError("--raw shapes what --follow prints: use it with -f")
    if args.name is not None and not args.name.strip():
        raise CliError("--name must not be empty (leave it out for a generated name)")
    limits = limits_from(args)
    c = ctx.client()
    params, agents = parse_params(args.param), parse_agents(args.agent)
    policy = read_policy(args.policy) if args.policy else None
    try:
        sid = c.start(args.workflow, name=args.name, params=params, agents=agents, procs=args.procs,
                      priority=args.priority, tags=parse_tags(args.tag) or None,
                      network=None if args.network is None else args.network == "on", placement=placement_from(args),
                      policy=policy, **limits)
    except KeyboardInterrupt:  # the request is with the daemon, which goes on with it: say so, not nothing
        ctx.out.line("\nlabd run: interrupted before the daemon answered: the session may start all the same. "
                     "`labd ps` shows it once it does (`labd stop ID` stops it).", "bold yellow", err=True)
        return 130
    if not args.json:
        say_if_queued(ctx, sid)
        if agents:
            say_unregistered_roles(ctx, agents)
    if not args.follow and args.wait:
        return wait_for(ctx, sid, args.json)
    if not args.follow:
        if args.json:
            ctx.out.json({"session": sid})
        else:
            print(sid)
        return 0
    if args.json:  # the live record as JSON lines, as `labd events -f --json` prints it
        from labd.frontends.cli.logs import follow_json

        return follow_json(ctx, sid)
    ctx.out.raw_output = args.raw_control_chars
    return follow(ctx, sid, raw=args.raw, header=True)


def say_unregistered_roles(ctx: Ctx, agents: dict[str, str]) -> None:
    """On stderr, for ``--agent ROLE=OTHER`` whose ROLE is no role of the registry: it replaces a role only if the
    workflow asks for one by that name (one that ``labd agents`` does not list), so a typo (``enginer=``) left the
    default engineer in place without a word. The daemon cannot tell (a workflow asks for roles as it runs)."""
    try:
        known = {str(a.get("name")) for a in ctx.client().agents()}
    except LabdError:
        return
    for role in sorted(set(agents) - known):
        ctx.out.line(f"note: --agent {ctx.out.safe(role)}=...: no role {ctx.out.safe(role)!r} in the registry (`labd "
                     "agents`); it takes effect only if the workflow asks for a role by that name", "yellow", err=True)


def say_if_queued(ctx: Ctx, sid: str) -> None:
    """On stderr, when the session waits in the run queue (else a follower said nothing until it started: `labd run
    --follow`, `labd logs -f`)."""
    try:
        row = ctx.client().session(sid)
    except LabdError:
        return
    if row.get("status") == "queued":
        place = row.get("queue_position")
        why = ctx.out.safe(row.get("reason") or "waiting for room in the run queue")
        ctx.out.line(f"session {sid} is queued{f' (#{place})' if isinstance(place, int) else ''}: {why}; it starts "
                     "once there is room (`labd ps` shows the queue)", "yellow", err=True)


def _priority(text: str) -> int:
    """``--priority``: a whole number -1000 to 1000, checked here so that the error comes with the usage line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number -1000 to 1000, not {text!r}") from None
    if not -1000 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be -1000 to 1000 (higher runs first), not {value}")
    return value


RUN_EPILOG = """workflow:
  a built-in (labd workflows), package.module:function, path/to/flows.py[:function] or ./flows.py:function,
  resolved where you stand: against this directory and $PYTHONPATH, as `python -c "import ..."` would.
units:
  --memory 512M | 2G   --cpu 50% (of one core) | --cpus 0.5 (cores)   --timeout 90s | 15m | 1h30m | 2d"""


#: ``--raw-control-chars`` (``run --follow`` and ``logs``): what it does, and why it is off by default
RAW_CONTROL_HELP = ("on a terminal too, write the session's output exactly as recorded, escape sequences and all. Off "
                    "by default: code the session ran could set your clipboard, retitle or clear the terminal, hide or "
                    "overwrite lines; by default such sequences are shown as text (\\x1b...) and only colours are "
                    "kept. Piped or redirected, the output is always exact")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "run", cmd_run, "start a session (prints its id; -f to follow it)", epilog=RUN_EPILOG)
    s.add_argument("workflow", help="built-in name, package.module:function, or path/to/flows.py[:function]")
    s.add_argument("--name", help="a name for the session (usable instead of its id)")
    s.add_argument("--param", "-p", action="append", default=[], metavar="K=V", help="a workflow parameter (repeat)")
    s.add_argument("--memory", help="memory limit for the whole process tree: 512M, 2G")
    s.add_argument("--cpu", help="CPU limit in percent of one core: 50%%")
    s.add_argument("--cpus", help="CPU limit in cores: 0.5 (= --cpu 50%%), 2")
    s.add_argument("--timeout", help="wall-time limit: 90s, 15m, 1h30m")
    s.add_argument("--budget", type=float, help="LLM budget in USD for the whole session, e.g. 2.50")
    s.add_argument("--on-budget", choices=["stop", "pause"], help="what crossing the budget does (default stop)")
    s.add_argument("--procs", type=procs_arg, metavar="N",
                   help="at most N processes in the session's tree (default: [daemon] procs, 256; none or 0: no limit)")
    s.add_argument("--max-output", metavar="SIZE",
                   help="keep at most this much stdout+stderr (10M, 1G; none: no cap; default: max_output)")
    s.add_argument("--tag", action="append", default=[], metavar="K=V", help="label the session (repeat)")
    s.add_argument("--network", choices=["on", "off"],
                   help="may code the agents execute use the network (default: [sandbox] network, off)")
    s.add_argument("--priority", type=_priority, help="run-queue order when the daemon is at max_sessions: -1000 to "
                   "1000, higher first (default 0)")
    s.add_argument("--on", choices=["local", "ray"], help="where it runs: here, or in its own actor on the daemon's "
                   "Ray cluster (default: [launcher] kind); with ray, --cpus and --memory are the actor's request")
    s.add_argument("--gpus", type=float, help="with --on ray: GPUs the session's actor asks Ray for")
    s.add_argument("--resource", action="append", default=[], metavar="NAME=N",
                   help="with --on ray: a custom Ray resource the node must have (placement; repeat)")
    s.add_argument("--agent", action="append", default=[], metavar="ROLE=OTHER",
                   help="use registry role OTHER wherever the workflow asks for ROLE (see `labd agents`; repeat)")
    s.add_argument("--policy", metavar="FILE", help="this session's own [[policy]] rules (after the daemon's; "
                   "see `labd policy check FILE`)")
    s.add_argument("--follow", "-f", action="store_true", help="show its output and agent activity until it ends "
                   "(exit status as with --wait)")
    s.add_argument("--wait", action="store_true", help="print its id, then wait quietly until it ends (exit status 0 "
                   "if it completed, 1 otherwise)")
    s.add_argument("--raw", action="store_true", help="with -f: only the session's own output, no activity lines")
    s.add_argument("--raw-control-chars", action="store_true", help="with -f: " + RAW_CONTROL_HELP)
    add_json(s, '{"session": ID} instead of the bare id')
