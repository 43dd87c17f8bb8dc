"""Validating policy rules: the tables of ``[[policy]]`` in config.toml and in per-session policy files
(:mod:`labd.ipc.policy` has the rules' model and their evaluation).

Strict: an unknown key, a wrong type, an unbalanced glob or a name used twice is a :class:`PolicyError` naming
the rule and the key, so that a typo never silently turns a rule off. Plain data and stdlib only, as the model.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from labd.ipc.policy import ACTIONS, CARRIES, EFFECTS, GLOB_KEYS, KEYS, PolicyError, Rule
from labd.ipc.tomlfile import TomlFileError, read_toml

__all__ = ["MAX_RULES", "load_file", "parse_rule", "parse_rules"]

MAX_RULES = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")  # \Z: "$" matches before a final newline too


def parse_rules(tables: Any, source: str = "config") -> list[Rule]:
    """Validate a list of rule tables strictly; raise :class:`PolicyError` naming the rule and the key."""
    if not isinstance(tables, list):
        raise PolicyError(f"{source}: policy must be a list of rule tables ([[policy]])")
    if len(tables) > MAX_RULES:
        raise PolicyError(f"{source}: at most {MAX_RULES} policy rules, not {len(tables)}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, table in enumerate(tables, 1):
        rule = parse_rule(table, i, source)
        if rule.name in seen:
            raise PolicyError(f"{source}: policy rule #{i}: the name {rule.name!r} is used twice", rule.name, "name")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def parse_rule(table: Any, index: int, source: str) -> Rule:  # noqa: C901 - one check per key, in key order
    """One rule table (``index``: its 1-based place, for messages)."""
    where = f"{source}: policy rule #{index}"
    if not isinstance(table, dict):
        raise PolicyError(f"{where} must be a table with name, effect and match keys")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PolicyError(f"{where}: name is required: 1-100 letters, digits, _ . : - (got {name!r})", f"#{index}",
                          "name")
    where = f"{source}: policy rule {name!r} (#{index})"

    def fail(key: str, problem: str) -> PolicyError:
        return PolicyError(f"{where}: {key}: {problem}", name, key)

    unknown = [k for k in table if k not in KEYS]
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {', '.join(KEYS)})")
    effect = table.get("effect")
    if effect not in EFFECTS:
        raise fail("effect", f"must be one of {', '.join(EFFECTS)}, not {effect!r}")
    actions = None
    if "action" in table:
        raw = table["action"]
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items or not all(isinstance(a, str) and a in ACTIONS for a in items):
            raise fail("action", f"must be one of {', '.join(ACTIONS)} or a non-empty list of them, not {raw!r}")
        actions = tuple(dict.fromkeys(items))
    elif effect == "cap":
        actions = ("llm",)  # costs come from LLM calls: a cap refuses further ones
    globs: dict[str, tuple[str, ...]] = {}
    for key in GLOB_KEYS:
        if key in table:
            globs[key] = _globs(table[key], fail, key)
    network = table.get("network")
    if network is not None and not isinstance(network, bool):
        raise fail("network", f"must be true or false, not {network!r}")
    costs = {k: _amount(table.get(k), fail, k) for k in ("min_agent_cost", "min_session_cost", "max_cost")}
    if effect == "cap" and costs["max_cost"] is None:
        raise fail("max_cost", "a cap needs max_cost (USD), e.g. max_cost = 2.0")
    if effect != "cap" and ("max_cost" in table or "per" in table):
        raise fail("max_cost" if "max_cost" in table else "per", "only for effect = \"cap\"")
    per = table.get("per", "agent")
    if per not in ("agent", "session"):
        raise fail("per", f"must be agent or session, not {per!r}")
    if effect != "require_approval" and ("timeout" in table or "on_timeout" in table):
        raise fail("timeout" if "timeout" in table else "on_timeout", "only for effect = \"require_approval\"")
    timeout = table.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not math.isfinite(timeout) or timeout <= 0):
        raise fail("timeout", f"must be a positive number of seconds, not {timeout!r}")
    on_timeout = table.get("on_timeout", "reject")
    if on_timeout not in ("approve", "reject"):
        raise fail("on_timeout", f"must be approve or reject, not {on_timeout!r}")
    for key in ("reason", "description"):
        if key in table and (not isinstance(table[key], str) or len(table[key]) > 1000):
            raise fail(key, "must be a text of at most 1000 characters")
    # a key no chosen action carries would make the rule dead: say so instead of never matching
    for key in [*globs, *(["network"] if network is not None else [])]:
        if actions is not None and not any(key in CARRIES[a] for a in actions):
            carriers = [a for a in ACTIONS if key in CARRIES[a]]
            raise fail(key, f"never set for action {'|'.join(actions)} (only for {', '.join(carriers)})")
    return Rule(name=name, effect=effect, actions=actions, globs=globs, network=network,
                min_agent_cost=costs["min_agent_cost"], min_session_cost=costs["min_session_cost"],
                max_cost=costs["max_cost"], per=per, reason=table.get("reason"),
                timeout=float(timeout) if timeout is not None else None, on_timeout=on_timeout,
                description=table.get("description", ""), source=source, index=index)


def _globs(raw: Any, fail: Any, key: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise fail(key, f"must be a glob or a non-empty list of globs, not {raw!r}")
    for item in items:
        if not isinstance(item, str) or not item.removeprefix("!") or len(item) > 200:
            raise fail(key, f"{item!r} is not a glob (1-200 characters; '!' in front excludes)")
        if not item.isprintable():
            raise fail(key, f"{item!r} has control characters")
        if not _balanced(item):
            raise fail(key, f"bad glob {item!r}: a '[' without its ']'")
    return tuple(items)


def _balanced(glob: str) -> bool:
    """fnmatch treats an unclosed ``[`` as a literal character: almost always a typo, so it is refused."""
    i = 0
    while i < len(glob):
        if glob[i] == "[":
            j = i + 1
            if j < len(glob) and glob[j] in "!^":
                j += 1
            if j < len(glob) and glob[j] == "]":
                j += 1
            close = glob.find("]", j)
            if close < 0:
                return False
            i = close
        i += 1
    return True


def _amount(value: Any, fail: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise fail(key, f"must be an amount of USD >= 0, not {value!r}")
    return float(value)


def load_file(path: str | Path) -> list[dict[str, Any]]:
    """The rule tables of a policy file (TOML with ``[[policy]]`` tables, as in config.toml); structure only —
    :func:`parse_rules` validates the rules."""
    p = Path(path)
    try:
        data = read_toml(p)
    except TomlFileError as exc:
        raise PolicyError(f"cannot read policy file {p}: {exc}" if exc.unreadable else f"{p}: not valid TOML: {exc}") \
            from None
    unknown = sorted(set(data) - {"policy"})
    if unknown:
        raise PolicyError(f"{p}: a policy file holds only [[policy]] tables, not {', '.join(unknown)}", None,
                          unknown[0])
    tables = data.get("policy", [])
    if not isinstance(tables, list):
        raise PolicyError(f"{p}: write the rules as [[policy]] tables (an array of tables)", None, "policy")
    return tables
