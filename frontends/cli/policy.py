"""`labd policy check [FILE]`: validate policy rules and show which rule an action would hit.

With FILE the rules are read and checked here (no daemon needed); without, the daemon's ``[[policy]]`` rules are
asked for (``policy.check``). Exit code 0 when the rules are valid, 2 when not."""

from __future__ import annotations

import argparse
from typing import Any

from labd.frontends.cli.base import CliError, Ctx, add_json, command
from labd.ipc.policy import Action, Policy, PolicyError
from labd.ipc.policy_rules import load_file, parse_rules

__all__ = ["register"]


def _action(args: argparse.Namespace) -> dict[str, Any] | None:
    given = {k: getattr(args, k) for k in ("agent", "tool", "model", "language", "network", "cost", "session_cost")
             if getattr(args, k) is not None}
    if args.action is None:
        if given:
            raise CliError("--agent/--tool/--model/--language/--network/--cost describe an action: add "
                           "--action llm|tool|code")
        return None
    out: dict[str, Any] = {"action": args.action}
    for key in ("agent", "tool", "model", "language"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if args.network is not None:
        out["network"] = args.network == "on"
    if args.cost is not None:
        out["agent_cost"] = args.cost
    if args.session_cost is not None:
        out["session_cost"] = args.session_cost
    return out


def cmd_policy(args: argparse.Namespace, ctx: Ctx) -> int:
    action = _action(args)
    if args.with_daemon and not args.file:
        raise CliError("--with-daemon goes with a FILE: the daemon's rules, then the file's")
    if args.file:
        # the daemon's rules first, as a session started with --policy FILE would meet them
        ahead = Policy.from_spec(ctx.client().request("policy.check")["rules"]).rules if args.with_daemon else []
        try:
            rules = ahead + parse_rules(load_file(args.file), args.file)
            decision = None
            if action is not None:
                act = Action.from_dict(action)
                decision = {**act.to_dict(), **Policy(rules).evaluate(act).to_dict()}
        except PolicyError as exc:
            if args.json:
                ctx.out.json({"file": args.file, "valid": False,
                              "error": {"code": "bad_policy", "message": exc.message, "details": exc.details()}})
                return 2
            raise CliError(exc.message) from None
        where = f"the daemon's rules + {args.file}" if args.with_daemon else args.file
        result: dict[str, Any] = {"file": args.file, "valid": True, "source": where,
                                  "rules": [r.to_dict() for r in rules], "decision": decision}
    else:
        body: dict[str, Any] = {"action": action} if action is not None else {}
        result = {"file": None, "valid": True, **ctx.client().request("policy.check", **body)}
        result["source"] = "the daemon's config.toml"
    if args.json:
        ctx.out.json(result)
        return 0
    _show(ctx, result)
    return 0


def _show(ctx: Ctx, result: dict[str, Any]) -> None:
    rules = result["rules"]
    where = result["source"]
    if not rules:
        ctx.out.line(f"{where}: no policy rules (every action is allowed)")
    else:
        ctx.out.line(f"{where}: {len(rules)} rule{'s' if len(rules) != 1 else ''}, valid; the first that applies "
                     "decides, none: allow")
        sources = len({r["source"] for r in rules}) > 1
        ctx.out.table(["#", "NAME", "EFFECT", "MATCH", "REASON"] + (["SOURCE"] if sources else []),
                      [[str(r["index"]), r["name"], _effect(r), Policy.from_spec([r]).rules[0].describe(),
                        r.get("reason", "")] + ([r["source"]] if sources else []) for r in rules])
    d = result.get("decision")
    if d is None:
        return
    what = " ".join(f"{k}={v}" for k, v in d.items()
                    if k in ("action", "agent", "tool", "model", "language", "network") and v is not None)
    if d["rule"] is None:
        ctx.out.line(f"{what} → allow (no rule applies)", "green")
        return
    style = {"allow": "green", "deny": "bold red", "approval": "bold yellow"}[d["outcome"]]
    effect = d["effect"] if d["effect"] in ("allow", "deny") else f"{d['effect']} → {d['outcome']}"
    ctx.out.line(f"{what} → rule {d['rule']!r} ({d['source']} #{d['index']}): {effect}: {d['reason']}", style)


def _effect(rule: dict[str, Any]) -> str:
    if rule["effect"] == "cap":
        return f"cap ${rule['max_cost']:g}/{rule.get('per', 'agent')}"
    return str(rule["effect"])


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "policy", cmd_policy, "check policy rules and which rule an action would hit",
                epilog="examples:\n  labd policy check rules.toml\n"
                       "  labd policy check rules.toml --action code --agent engineer --network on\n"
                       "  labd policy check --action llm --agent writer --model gpt-4o   (the daemon's rules)\n"
                       "  labd run one_shot --policy rules.toml                         (a session's own rules)")
    s.add_argument("what", choices=["check"], help="check: validate the rules (and decide --action)")
    s.add_argument("file", nargs="?", metavar="FILE", help="a TOML file of [[policy]] tables (default: the "
                   "daemon's rules from config.toml)")
    s.add_argument("--with-daemon", action="store_true", help="with FILE: the daemon's rules first, then the file's "
                   "(what a session started with --policy FILE meets)")
    s.add_argument("--action", choices=["llm", "tool", "code"], help="an action to decide")
    s.add_argument("--agent", help="the agent that acts")
    s.add_argument("--tool", help="the tool it calls (tool actions; code actions are run_code)")
    s.add_argument("--model", help="the agent's model as the provider names it (as in llm.request: gpt-4o-mini, "
                   "not the [models.<name>] key)")
    s.add_argument("--language", help="code actions: python or bash")
    s.add_argument("--network", choices=["on", "off"], help="code actions: the session's network setting")
    s.add_argument("--cost", type=float, metavar="USD", help="what the agent has spent so far")
    s.add_argument("--session-cost", type=float, metavar="USD", help="what the session has spent so far "
                   "(default: --cost)")
    add_json(s)
