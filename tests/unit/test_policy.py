"""The policy rule engine (labd.ipc.policy): strict validation naming rule and key, matching, first match wins,
default allow, caps, and the round trip through the runner's start spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from labd.ipc.policy import Action, Policy, PolicyError
from labd.ipc.policy_rules import load_file, parse_rules


def _policy(*tables: dict) -> Policy:
    return Policy(parse_rules(list(tables), "test"))


def test_first_matching_rule_wins_and_no_match_allows() -> None:
    """Rules are tried in order; the first that applies decides; with none, the action is allowed."""
    p = _policy({"name": "a", "action": "tool", "tool": "shell*", "effect": "deny"},
                {"name": "b", "action": "tool", "effect": "require_approval"})
    assert p.evaluate(Action("tool", agent="x", tool="shell_run")).rule.name == "a"  # type: ignore[union-attr]
    d = p.evaluate(Action("tool", agent="x", tool="search"))
    assert d.rule is not None and d.rule.name == "b" and d.outcome == "approval"
    d = p.evaluate(Action("llm", agent="x", model="m"))
    assert d.rule is None and d.outcome == "allow" and d.effect == "allow"


def test_globs_lists_and_negation() -> None:
    """A glob list matches any of its patterns; `!` patterns exclude; matching is case-sensitive."""
    p = _policy({"name": "only-planner", "action": "llm", "model": ["gpt-4*", "o[13]*"], "agent": "!planner",
                 "effect": "deny"})
    assert p.evaluate(Action("llm", agent="writer", model="gpt-4o")).outcome == "deny"
    assert p.evaluate(Action("llm", agent="writer", model="o3-mini")).outcome == "deny"
    assert p.evaluate(Action("llm", agent="planner", model="gpt-4o")).outcome == "allow"
    assert p.evaluate(Action("llm", agent="writer", model="GPT-4o")).outcome == "allow"
    assert p.evaluate(Action("llm", agent="writer", model="o2")).outcome == "allow"


def test_a_key_the_action_lacks_never_matches() -> None:
    """`network` is a property of code runs only; `tool` of tool calls and code runs (run_code)."""
    p = _policy({"name": "net", "network": True, "effect": "deny"}, {"name": "t", "tool": "run_code",
                                                                       "effect": "require_approval"})
    assert p.evaluate(Action("llm", agent="a", model="m")).outcome == "allow"
    assert p.evaluate(Action("code", agent="a", tool="run_code", network=True)).rule.name == "net"  # type: ignore[union-attr]
    assert p.evaluate(Action("code", agent="a", tool="run_code", network=False)).rule.name == "t"  # type: ignore[union-attr]


def test_cap_applies_only_once_reached_then_refuses() -> None:
    """A cap below its amount does not apply (evaluation goes on); at or above it, it refuses (LLM calls by
    default); `per = "session"` counts the session's cost."""
    p = _policy({"name": "cap", "effect": "cap", "agent": "eng", "max_cost": 2.0},
                {"name": "s", "effect": "cap", "per": "session", "max_cost": 5},
                {"name": "later", "action": "llm", "effect": "require_approval"})
    assert p.evaluate(Action("llm", agent="eng", model="m", agent_cost=1.99, session_cost=1.99)).rule.name == "later"  # type: ignore[union-attr]
    d = p.evaluate(Action("llm", agent="eng", model="m", agent_cost=2.0, session_cost=2.0))
    assert d.rule is not None and d.rule.name == "cap" and d.outcome == "deny" and "2" in d.reason
    assert p.evaluate(Action("tool", agent="eng", tool="t", agent_cost=3.0)).outcome == "allow"  # LLM only
    assert p.evaluate(Action("llm", agent="other", model="m", agent_cost=0, session_cost=5)).rule.name == "s"  # type: ignore[union-attr]


def test_cost_conditions() -> None:
    """`min_agent_cost` / `min_session_cost` match once that much was spent."""
    p = _policy({"name": "pricey", "min_session_cost": 1.0, "action": ["llm", "tool"], "effect": "require_approval"})
    assert p.evaluate(Action("tool", agent="a", tool="t", session_cost=0.5)).outcome == "allow"
    assert p.evaluate(Action("tool", agent="a", tool="t", session_cost=1.0)).outcome == "approval"


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"name": "r", "effect": "block"}, "effect", "one of allow"),
    ({"name": "r", "effect": "deny", "tol": "x"}, "tol", "unknown key"),
    ({"name": "r", "effect": "deny", "agent": "eng[ineer"}, "agent", "bad glob"),
    ({"name": "r", "effect": "deny", "agent": []}, "agent", "non-empty list"),
    ({"name": "r", "effect": "deny", "action": "shell"}, "action", "llm, tool, code"),
    ({"name": "r", "effect": "cap"}, "max_cost", "needs max_cost"),
    ({"name": "r", "effect": "deny", "max_cost": 1}, "max_cost", "only for effect"),
    ({"name": "r", "effect": "cap", "max_cost": -1}, "max_cost", ">= 0"),
    ({"name": "r", "effect": "deny", "network": "yes"}, "network", "true or false"),
    ({"name": "r", "effect": "deny", "timeout": 5}, "timeout", "only for effect"),
    ({"name": "r", "effect": "require_approval", "on_timeout": "maybe"}, "on_timeout", "approve or reject"),
    ({"name": "r", "effect": "deny", "action": "llm", "tool": "x"}, "tool", "never set for action llm"),
    ({"name": "r", "effect": "deny", "action": "tool", "network": True}, "network", "only for code"),
])
def test_bad_rules_name_the_rule_and_the_key(table: dict, key: str, words: str) -> None:
    """Each kind of mistake is refused with a message naming the rule and the offending key."""
    with pytest.raises(PolicyError) as err:
        parse_rules([table], "cfg.toml")
    assert err.value.rule == "r" and err.value.key == key
    assert "cfg.toml: policy rule 'r' (#1)" in err.value.message and words in err.value.message


def test_names_are_required_and_unique() -> None:
    """A rule without a usable name, or a name used twice, is refused."""
    with pytest.raises(PolicyError, match="name is required"):
        parse_rules([{"effect": "deny"}])
    with pytest.raises(PolicyError, match="used twice"):
        parse_rules([{"name": "a", "effect": "deny"}, {"name": "a", "effect": "allow"}])
    with pytest.raises(PolicyError, match="list of rule tables"):
        parse_rules({"name": "a"})


def test_spec_round_trip_keeps_order_and_source() -> None:
    """What the daemon ships to the runner reads back as the same rules, in order, with their sources."""
    p = Policy.from_sources(("config", [{"name": "a", "tool": "x*", "effect": "deny"}]),
                            ("session", [{"name": "b", "effect": "cap", "max_cost": 1, "per": "session"}]))
    back = Policy.from_spec(p.to_spec())
    assert [(r.name, r.source, r.index) for r in back.rules] == [("a", "config", 1), ("b", "session", 1)]
    assert back.rules == p.rules


def test_load_file_and_action_from_dict(tmp_path: Path) -> None:
    """A policy file holds only [[policy]] tables; an action read from a dict fills run_code for code and
    takes the agent's cost as the session's when none is given."""
    f = tmp_path / "p.toml"
    f.write_text('[[policy]]\nname = "x"\neffect = "deny"\n')
    assert load_file(f) == [{"name": "x", "effect": "deny"}]
    f.write_text('[daemon]\nx = 1\n')
    with pytest.raises(PolicyError, match="only \\[\\[policy\\]\\] tables"):
        load_file(f)
    f.write_text("[[policy]\n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_file(f)
    a = Action.from_dict({"action": "code", "agent": "e", "network": True, "agent_cost": 2})
    assert a.tool == "run_code" and a.session_cost == 2.0 and a.network is True
    with pytest.raises(PolicyError, match="one of llm"):
        Action.from_dict({"action": "think"})


def test_front_ends_show_refusals_and_approvals_not_default_allows() -> None:
    """`labd logs` (and `labd top`) give a refused action and a pending approval a line naming the rule; an
    action allowed because no rule applies is recorded but not shown."""
    from labd.frontends.cli.activity import Activity
    from labd.frontends.top.format import activity_line

    def ev(**p: object) -> dict:
        return {"kind": "policy.decision", "ts": 0.0, "node_id": "n3", "payload": p}

    act = Activity("s1")
    denied = ev(action="tool", tool="shell", agent="eng", rule="no-shell", effect="deny", outcome="denied",
                reason="no shells")
    (line,) = act.lines(denied)
    assert "policy no-shell: denied tool shell" in line.text and "no shells" in line.text
    (line,) = act.lines(ev(action="code", language="python", network=True, agent="eng", rule="ask",
                           effect="require_approval", outcome="pending", reason="r"))
    assert "python code (network on) waits for approval" in line.text
    default = ev(action="llm", model="m", agent="eng", rule=None, effect="allow", outcome="allowed", reason="r")
    assert act.lines(default) == []
    assert activity_line(default) is None
    top = activity_line(denied)
    assert top is not None and "policy no-shell: denied tool shell" in top.plain


def test_validation_names_are_still_found_in_the_policy_module() -> None:
    """SDK users who imported ``load_file``/``parse_rules`` from ``labd.ipc.policy`` before validation moved to
    ``labd.ipc.policy_rules`` get the same functions, by name and by ``import *``; an unknown name is still an
    AttributeError."""
    import labd.ipc.policy as policy_mod
    import labd.ipc.policy_rules as rules_mod

    assert policy_mod.load_file is rules_mod.load_file
    assert policy_mod.parse_rules is rules_mod.parse_rules
    assert policy_mod.MAX_RULES == rules_mod.MAX_RULES
    with pytest.raises(AttributeError):
        policy_mod.no_such_name  # noqa: B018
    star: dict[str, object] = {}
    exec("from labd.ipc.policy import *", star)  # what ``import *`` brought before the split, it still brings
    assert star["load_file"] is rules_mod.load_file and star["parse_rules"] is rules_mod.parse_rules
    assert star["Policy"] is policy_mod.Policy
