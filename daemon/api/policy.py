"""Policy requests: ``policy.check`` (the daemon's rules, or given ones, and what they decide for an action), and
the policy part of ``session.start`` (a session's own rules, validated; the runner's rules: daemon's, then its own)."""

from __future__ import annotations

from typing import Any

from labd.daemon.api.base import ApiError, Request, register
from labd.ipc.policy import Action, Policy, PolicyError
from labd.ipc.policy_rules import MAX_RULES, parse_rules

__all__ = ["runner_policy", "session_rules"]


def session_rules(req: Request) -> list[dict[str, Any]]:
    """The ``policy`` field of a request (rule tables), validated; ``bad_policy`` names the rule and the key."""
    tables = req.arg("policy", list, [], check=lambda r: len(r) <= MAX_RULES,
                     hint=f"a list of at most {MAX_RULES} rule objects")
    try:
        parse_rules(tables, "session policy")
    except PolicyError as exc:
        raise ApiError("bad_policy", exc.message, exc.details()) from None
    return list(tables)


def runner_policy(d: Any, session_tables: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The rules a session's runner evaluates, in order: the daemon's (config.toml), then the session's own."""
    return Policy.from_sources(("config", d.cfg.policy), ("session", session_tables or [])).to_spec()


@register
class CheckPolicy(Request):
    """Validate rules (given ones, or the daemon's) and, with ``action``, say which rule decides it."""

    type = "policy.check"

    def execute(self) -> Any:
        given = "rules" in self.body
        tables = self.arg("rules", list, [], check=lambda r: len(r) <= MAX_RULES,
                          hint=f"a list of at most {MAX_RULES} rule objects")
        try:
            policy = Policy.from_sources(("policy", tables) if given else ("config", self.daemon.cfg.policy))
        except PolicyError as exc:
            raise ApiError("bad_policy", exc.message, exc.details()) from None
        out: dict[str, Any] = {"source": "request" if given else "config",
                               "rules": [r.to_dict() for r in policy.rules], "decision": None}
        if self.body.get("action") is not None:
            try:
                action = Action.from_dict(self.body["action"])
            except PolicyError as exc:
                raise ApiError("bad_request", exc.message, {"key": exc.key}) from None
            out["decision"] = {**action.to_dict(), **policy.evaluate(action).to_dict()}
        return out
