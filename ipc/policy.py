"""Policies: declarative rules on what a session's agents may do, evaluated before each LLM call, tool call
and code execution (docs/design.md, "Policies"; docs/protocol.md, ``policy.decision``).

A rule is a table (``[[policy]]`` in config.toml or in a per-session policy file) with a ``name``, an
``effect`` and match keys::

    [[policy]]
    name = "ask-before-networked-code"
    action = "code"                 # llm | tool | code, or a list; default: any action
    network = true                  # code run with the network on
    effect = "require_approval"     # allow | deny | require_approval | cap

Match keys (all given keys must match; a key the action does not carry never matches):

- ``action``: ``llm`` | ``tool`` | ``code`` or a list of them;
- ``agent``, ``tool``, ``model``, ``language``: a glob (``*``, ``?``, ``[abc]``) or a list of globs; a glob
  starting with ``!`` excludes (``agent = "!planner"``: every agent but the planner). LLM calls carry agent and
  model; tool calls agent, tool and model; code executions agent, tool (``run_code``), model, language, network;
- ``network``: true / false, code executions only (the session's network setting for executed code); a code
  execution (the ``run_code`` tool) is decided once, as a ``code`` action, never also as a ``tool`` call;
- ``min_agent_cost`` / ``min_session_cost``: USD spent so far (by this agent / by the session) is at least this.

Effects: ``allow``; ``deny`` (the agent gets a refusal it can act on; ``reason`` is shown to it);
``require_approval`` (a durable approval of kind ``policy``; ``timeout`` seconds and ``on_timeout``
approve | reject, default reject); ``cap`` with ``max_cost`` (USD) and ``per`` agent | session (default agent):
refuses once the cost reached ``max_cost``; below it the rule does not apply and evaluation goes on (the runner
decides an LLM call once the calls in flight can no longer change the decision: runner/agents/inflight.py). A ``cap``
without ``action`` applies to LLM calls.

Order: the daemon's rules first (config.toml; the home's file before the user's), then the session's own
(``labd run --policy FILE``); the first rule that applies decides; no rule: allow. So a session's file can
add restrictions but cannot lift the daemon's.

This module (the rules' model and their evaluation) and :mod:`labd.ipc.policy_rules` (validating rule tables,
reading policy files) are plain data and stdlib only: the daemon validates rules with them, the runner
evaluates them, and front-ends (``labd policy check``) use them without a daemon.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

# load_file and parse_rules are resolved lazily by __getattr__ below (their module imports this one); listing them
# keeps ``from labd.ipc.policy import *`` bringing what it brought before the split.
__all__ = ["ACTIONS", "EFFECTS", "KEYS", "Action", "Decision", "Policy", "PolicyError", "Rule",
           "load_file", "parse_rules"]  # noqa: F822

ACTIONS = ("llm", "tool", "code")
EFFECTS = ("allow", "deny", "require_approval", "cap")
GLOB_KEYS = ("agent", "tool", "model", "language")
#: which match keys each action carries (a rule on a key the action lacks does not match it)
CARRIES = {"llm": {"agent", "model"}, "tool": {"agent", "tool", "model"},
           "code": {"agent", "tool", "model", "language", "network"}}
KEYS = ("name", "description", "effect", "action", *GLOB_KEYS, "network", "min_agent_cost", "min_session_cost",
        "max_cost", "per", "reason", "timeout", "on_timeout")


class PolicyError(ValueError):
    """A rule that cannot be used: ``rule`` names it (or ``#N``), ``key`` the offending key (or None)."""

    def __init__(self, message: str, rule: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.message, self.rule, self.key = message, rule, key

    def details(self) -> dict[str, Any]:
        return {"rule": self.rule, "key": self.key}


@dataclass(frozen=True)
class Rule:
    """One validated rule; ``index`` is its 1-based place in its source, ``source`` config | session | a file."""

    name: str
    effect: str
    actions: tuple[str, ...] | None = None
    globs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    network: bool | None = None
    min_agent_cost: float | None = None
    min_session_cost: float | None = None
    max_cost: float | None = None
    per: str = "agent"
    reason: str | None = None
    timeout: float | None = None
    on_timeout: str = "reject"
    description: str = ""
    source: str = "config"
    index: int = 1

    def to_table(self) -> dict[str, Any]:
        """The rule as a table again (only the keys it sets), as given in a file."""
        out: dict[str, Any] = {"name": self.name, "effect": self.effect}
        if self.description:
            out["description"] = self.description
        if self.actions is not None:
            out["action"] = list(self.actions)
        out.update({k: list(v) for k, v in self.globs.items()})
        for key in ("network", "min_agent_cost", "min_session_cost", "max_cost", "reason", "timeout"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.effect == "cap":
            out["per"] = self.per
        if self.effect == "require_approval":
            out["on_timeout"] = self.on_timeout
        return out

    def to_dict(self) -> dict[str, Any]:
        """The table plus where it comes from (``source``, ``index``): what ``policy.check`` returns."""
        return {**self.to_table(), "source": self.source, "index": self.index}

    def describe(self) -> str:
        """The match part in one line, e.g. ``action=code network=true``."""
        parts = []
        if self.actions is not None:
            parts.append("action=" + "|".join(self.actions))
        parts += [f"{k}={'|'.join(v)}" for k, v in self.globs.items()]
        if self.network is not None:
            parts.append(f"network={'on' if self.network else 'off'}")
        if self.min_agent_cost is not None:
            parts.append(f"agent cost>=${self.min_agent_cost:g}")
        if self.min_session_cost is not None:
            parts.append(f"session cost>=${self.min_session_cost:g}")
        return " ".join(parts) or "(every action)"

    def applies(self, action: Action) -> bool:
        """Do the match keys hold for ``action`` (costs and caps included)?"""
        if self.actions is not None and action.kind not in self.actions:
            return False
        for key, patterns in self.globs.items():
            value = getattr(action, key)
            if value is None or not _glob_match(patterns, value):
                return False
        if self.network is not None and (action.network is None or action.network != self.network):
            return False
        if self.min_agent_cost is not None and action.agent_cost < self.min_agent_cost:
            return False
        if self.min_session_cost is not None and action.session_cost < self.min_session_cost:
            return False
        if self.effect == "cap":
            spent = action.agent_cost if self.per == "agent" else action.session_cost
            return spent >= (self.max_cost or 0.0)
        return True


def _glob_match(patterns: tuple[str, ...], value: str) -> bool:
    positive = [p for p in patterns if not p.startswith("!")]
    if positive and not any(fnmatchcase(value, p) for p in positive):
        return False
    return not any(fnmatchcase(value, p[1:]) for p in patterns if p.startswith("!"))


@dataclass(frozen=True)
class Action:
    """What is about to happen: an LLM call, a tool call or a code execution, and the costs so far (USD)."""

    kind: str
    agent: str | None = None
    tool: str | None = None
    model: str | None = None
    language: str | None = None
    network: bool | None = None
    agent_cost: float = 0.0
    session_cost: float = 0.0

    @classmethod
    def from_dict(cls, data: Any) -> Action:
        """An action from ``{action, agent?, tool?, model?, language?, network?, agent_cost?, session_cost?}``
        (what ``policy.check`` and ``labd policy check`` take); :class:`PolicyError` names a bad field."""
        if not isinstance(data, dict):
            raise PolicyError("an action must be an object {action, agent, tool, model, ...}")
        unknown = sorted(set(data) - {"action", "agent", "tool", "model", "language", "network", "agent_cost",
                                      "session_cost"})
        if unknown:
            raise PolicyError(f"action: unknown field {unknown[0]!r}", key=unknown[0])
        kind = data.get("action")
        if kind not in ACTIONS:
            raise PolicyError(f"action must be one of {', '.join(ACTIONS)}, not {kind!r}", key="action")
        for key in ("agent", "tool", "model", "language"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise PolicyError(f"action: {key} must be a string", key=key)
        if data.get("network") is not None and not isinstance(data["network"], bool):
            raise PolicyError("action: network must be true or false", key="network")
        costs = {}
        for key in ("agent_cost", "session_cost"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value) or value < 0):
                raise PolicyError(f"action: {key} must be an amount of USD >= 0", key=key)
            costs[key] = float(value or 0.0)
        # the session has spent at least what one of its agents has
        session_cost = costs["session_cost"] if data.get("session_cost") is not None else costs["agent_cost"]
        tool = data.get("tool") or ("run_code" if kind == "code" else None)
        return cls(kind, agent=data.get("agent"), tool=tool if kind != "llm" else None, model=data.get("model"),
                   language=data.get("language") if kind == "code" else None,
                   network=data.get("network") if kind == "code" else None, agent_cost=costs["agent_cost"],
                   session_cost=session_cost)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind}
        for key in ("agent", "tool", "model", "language", "network"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["agent_cost"] = self.agent_cost
        out["session_cost"] = self.session_cost
        return out


@dataclass(frozen=True)
class Decision:
    """The rule that applies (None: no rule, allowed by default) and what it means for the action:
    ``outcome`` allow | deny | approval; ``reason`` is the text the agent (or the approver) reads."""

    rule: Rule | None
    outcome: str
    reason: str

    @property
    def effect(self) -> str:
        return self.rule.effect if self.rule is not None else "allow"

    def to_dict(self) -> dict[str, Any]:
        r = self.rule
        return {"rule": r.name if r else None, "source": r.source if r else None, "index": r.index if r else None,
                "effect": self.effect, "outcome": self.outcome, "reason": self.reason}


class Policy:
    """Rules in evaluation order: the first that applies decides; none: allow."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules = list(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    @classmethod
    def from_sources(cls, *sources: tuple[str, Sequence[Any]]) -> Policy:
        """Rules from ``(source, tables)`` pairs, in that order (each list validated by
        :func:`labd.ipc.policy_rules.parse_rules`)."""
        from labd.ipc.policy_rules import parse_rules  # validation imports this module's model

        return cls([rule for source, tables in sources for rule in parse_rules(tables, source)])

    def to_spec(self) -> list[dict[str, Any]]:
        """Plain data for the runner's start spec (read back with :meth:`from_spec`)."""
        return [r.to_dict() for r in self.rules]

    @classmethod
    def from_spec(cls, spec: Sequence[dict[str, Any]] | None) -> Policy:
        """The rules of a start spec (:meth:`to_spec`), validated again."""
        from labd.ipc.policy_rules import parse_rule

        rules = []
        for item in spec or ():
            table = {k: v for k, v in item.items() if k not in ("source", "index")}
            rule = parse_rule(table, int(item.get("index") or 1), str(item.get("source") or "config"))
            rules.append(rule)
        return cls(rules)

    def evaluate(self, action: Action) -> Decision:
        """The decision for ``action``."""
        for rule in self.rules:
            if rule.applies(action):
                return Decision(rule, _OUTCOME[rule.effect], _reason(rule, action))
        return Decision(None, "allow", "no rule applies (allowed by default)")


_OUTCOME = {"allow": "allow", "deny": "deny", "cap": "deny", "require_approval": "approval"}


def _reason(rule: Rule, action: Action) -> str:
    if rule.reason:
        return rule.reason
    if rule.effect == "cap":
        who = f"agent {action.agent}" if rule.per == "agent" else "the session"
        spent = action.agent_cost if rule.per == "agent" else action.session_cost
        return f"cost cap reached: {who} spent ${spent:.6f} of its ${rule.max_cost:g}"
    what = {"allow": "is allowed", "deny": "is not allowed",
            "require_approval": "needs a human's approval"}[rule.effect]
    return f"{_what(action)} {what} (policy rule {rule.name!r})"


def _what(action: Action) -> str:
    if action.kind == "llm":
        return f"an LLM call to {action.model or 'this model'}"
    if action.kind == "tool":
        return f"the tool {action.tool or '?'}"
    code = f"running {action.language} code" if action.language else "running code"
    return code + (" with the network on" if action.network else "")


def __getattr__(name: str) -> Any:
    """``load_file``, ``parse_rule`` and ``parse_rules`` live in :mod:`labd.ipc.policy_rules` (which imports this
    module); they are still found here, as before the split."""
    if name in ("load_file", "parse_rule", "parse_rules", "MAX_RULES"):
        from labd.ipc import policy_rules

        return getattr(policy_rules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
