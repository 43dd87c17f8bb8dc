"""Names checked by a pattern are the whole text: a name with a final newline is refused like any other bad name
(an attack review, 2026-12-04). ``$`` in a pattern also matches just before a final newline, so ``deploy\\n`` passed
as a skill name and was stored as a second skill that ``labd skills list`` printed as ``deploy``; a remote client
``bob\\n`` and a policy rule ``ask\\n`` passed likewise."""

from __future__ import annotations

import pytest

from labd.daemon.api.remote import NAME as REMOTE_NAME
from labd.ipc.policy import PolicyError
from labd.ipc.policy_rules import parse_rules
from labd.store.skills import NAME as SKILL_NAME
from labd.store.skills import SkillError, check_skill


@pytest.mark.parametrize("bad", ["deploy\n", "deploy\r\n", "deploy\n\n", "\ndeploy"])
def test_a_skill_name_with_a_newline_is_refused(bad: str) -> None:
    """A skill document (skill.import, skill.save's name) named with a newline is ``bad_skill`` on ``name``;
    the name without it is still good."""
    assert SKILL_NAME.match("deploy")
    assert not SKILL_NAME.match(bad)
    with pytest.raises(SkillError) as err:
        check_skill({"name": bad, "workflow": "demo.count"})
    assert err.value.field == "name"
    check_skill({"name": "deploy", "workflow": "demo.count"})


def test_a_remote_client_name_with_a_final_newline_is_refused() -> None:
    """remote.add / remote.remove take 1-64 letters, digits, '.', '_' or '-': not a name and a newline (it made a
    key file ``bob\\n.key`` beside ``bob.key``)."""
    assert REMOTE_NAME.match("bob")
    assert not REMOTE_NAME.match("bob\n")


def test_a_policy_rule_name_with_a_final_newline_is_refused() -> None:
    """A [[policy]] rule (config file or a session's own) named ``ask\\n`` is refused as a bad name: decisions and
    approvals name the rule, and ``ask`` and ``ask\\n`` read alike."""
    table = {"action": "tool", "effect": "deny"}
    parse_rules([{"name": "ask", **table}], "cfg.toml")
    with pytest.raises(PolicyError, match="name"):
        parse_rules([{"name": "ask\n", **table}], "cfg.toml")
