"""The agent registry: built-in roles, roles from config.toml and <home>/agents/*.toml, `labd agents`, and
`--agent role=other` per session — built-in workflows use registry roles by name, so an override changes what
the engineer is (here: its prompt makes the offline model answer as a researcher, with no code run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import running_daemon

pytestmark = pytest.mark.timeout(180)

QUIET_ENGINEER = ('extends = "engineer"\ncode_execution = false\n'
                  'system_prompt = "ROLE: researcher\\nYou only explain."\n')


def _kinds(c, sid: str) -> list[str]:
    return [e["kind"] for e in c.history(sid)]


def test_roles_are_listed_with_their_source(isolated_env: Path) -> None:
    """`agents.list` shows built-ins, a config.toml role and a registry-file role, each with where it came from;
    a role file's system_prompt_file is read relative to the file."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text('[agents.reviewer2]\nextends = "plan_reviewer"\nmodel = "offline"\n')
    (isolated_env / "agents").mkdir()
    (isolated_env / "agents" / "prompt.md").write_text("ROLE: engineer\nBe terse.")
    (isolated_env / "agents" / "terse.toml").write_text('system_prompt_file = "prompt.md"\ncode_execution = true\n')
    with running_daemon(isolated_env) as d, d.client() as c:
        roles = {r["name"]: r for r in c.agents()}
    assert {"planner", "plan_reviewer", "engineer", "researcher", "writer"} <= set(roles)
    assert roles["engineer"]["source"] == "built-in" and roles["engineer"]["code_execution"] is True
    assert roles["reviewer2"]["source"] == "config.toml [agents]" and roles["reviewer2"]["model"] == "offline"
    assert roles["reviewer2"]["system_prompt"] == roles["plan_reviewer"]["system_prompt"]
    assert roles["terse"]["source"].endswith("terse.toml")
    assert roles["terse"]["system_prompt"] == "ROLE: engineer\nBe terse."


def test_per_session_override_changes_the_engineer_of_a_builtin_workflow(isolated_env: Path) -> None:
    """`one_shot` runs its engineer with run_code; with `agents={"engineer": "quiet"}` the same workflow's
    engineer is the registry's `quiet` role: no code runs, the agent keeps its recorded name `engineer`."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "agents").mkdir()
    (isolated_env / "agents" / "quiet.toml").write_text(QUIET_ENGINEER)
    with running_daemon(isolated_env) as d, d.client() as c:
        normal = c.start("one_shot", params={"task": "Step 1 of 1: sum"})
        quiet = c.start("one_shot", params={"task": "Step 1 of 1: sum"}, agents={"engineer": "quiet"})
        for sid in (normal, quiet):
            assert c.wait(sid, timeout=90)["status"] == "completed"
        assert "code.execution" in _kinds(c, normal)
        assert "code.execution" not in _kinds(c, quiet)
        agents = {e["payload"]["agent"] for e in c.history(quiet) if e["kind"] == "llm.request"}
        assert agents == {"engineer"}


def test_config_role_of_a_builtin_name_replaces_it_everywhere(isolated_env: Path) -> None:
    """`[agents.engineer]` in config.toml replaces the built-in engineer for every session."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    role = QUIET_ENGINEER.replace('extends = "engineer"\n', "")
    (isolated_env / "config.toml").write_text("[agents.engineer]\n" + role)
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("planning_and_control", params={"task": "Step 1 of 1: fit", "max_steps": 1})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        assert "code.execution" not in _kinds(c, sid)
        assert {r["name"]: r for r in c.agents()}["engineer"]["source"] == "config.toml [agents]"


def test_bad_roles_are_refused_clearly(isolated_env: Path) -> None:
    """An override naming an unknown role is refused at start (`bad_agents`); a role file in <home>/agents that
    does not parse makes `agents.list` and `session.start` answer `bad_agents` naming the file (one rule,
    daemon/api/roles.py); a role with unknown keys in config.toml stops the daemon with a message naming it;
    `labd run --agent` checks its syntax, and notes a ROLE no registry role has (it replaces nothing unless the
    workflow asks for that name: a typo went unnoticed)."""
    from labd.ipc import LabdError

    with running_daemon(isolated_env) as d, d.client() as c:
        with pytest.raises(LabdError) as err:
            c.start("one_shot", agents={"engineer": "nobody"})
        assert err.value.code == "bad_agents" and "nobody" in err.value.message
        env = {**os.environ, "LABD_HOME": str(d.home)}
        out = subprocess.run([sys.executable, "-m", "labd", "run", "one_shot", "--agent", "engineer"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 2 and "ROLE=OTHER_ROLE" in out.stderr
        # a ROLE the registry does not have (a typo) starts, but says it may replace nothing; a registered one is quiet
        for role, noted in (("enginer", True), ("engineer", False)):
            out = subprocess.run([sys.executable, "-m", "labd", "run", "demo.count", "--agent", f"{role}=planner"],
                                 capture_output=True, text=True, env=env, timeout=60)
            assert out.returncode == 0 and out.stdout.strip(), out
            assert ("no role 'enginer' in the registry" in out.stderr) is noted, out.stderr
        out = subprocess.run([sys.executable, "-m", "labd", "agents", "--json"], capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0 and "engineer" in {r["name"] for r in json.loads(out.stdout)}
        (d.home / "agents").mkdir(exist_ok=True)
        (d.home / "agents" / "broken.toml").write_text("system_prompt = [unclosed\n")
        for ask in (lambda: c.request("agents.list"), lambda: c.start("one_shot")):
            with pytest.raises(LabdError) as err:
                ask()
            assert err.value.code == "bad_agents" and "broken.toml" in err.value.message
        (d.home / "agents" / "broken.toml").unlink()
    (isolated_env / "config.toml").write_text('[agents.x]\nsystem_prompt = "hi"\ntemperature = 3\n')
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(isolated_env), "serve"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "temperature" in out.stderr
