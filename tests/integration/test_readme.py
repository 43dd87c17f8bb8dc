"""The README's workflow example runs as written (so the README stays true)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, wait_until


def _fresh_env(home: Path, tmp: Path) -> dict[str, str]:
    """What a new login shell has: no PYTHONPATH, labd on PATH; only the home and runtime dir point at the
    test's daemon (a user's default home is the same for every shell)."""
    import os

    return {"HOME": str(tmp), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LABD_HOME": str(home),
            "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"], "LANG": "C.UTF-8"}


def test_the_readme_workflow_example_runs_from_its_folder(daemon, tmp_path: Path) -> None:
    """The example module from README.md, saved as mypkg/flows.py in a temporary folder, runs with the
    README's own command typed in a fresh shell there (the daemon has never seen that folder): the agent
    runs (tracked), `run --follow` shows the approval waiting and how to answer it, `labd approve` answers,
    and the workflow returns the human's decision."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# mypkg/flows\.py.*?)```", readme, re.S)
    assert code, "README example not found"
    command = re.search(r"run: (labd run mypkg\.flows:study[^\n]*)", code.group(1))
    assert command, "the example's run command is not in its first comment"
    project = tmp_path / "project"
    (project / "mypkg").mkdir(parents=True)
    (project / "mypkg" / "flows.py").write_text(code.group(1))
    env = _fresh_env(daemon.home, tmp_path)
    assert str(project) not in daemon.env.get("PYTHONPATH", "")

    def labd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", " ".join(args)], cwd=project, env=env, capture_output=True,
                              text=True, timeout=60)

    run = subprocess.Popen(["bash", "-c", command.group(1)], cwd=project, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        pending = wait_until(lambda: json.loads(labd("labd approvals --json").stdout or "[]"), timeout=60,
                             what="the review approval")
        sid = pending[0]["session_id"]
        assert pending[0]["kind"] == "review" and pending[0]["prompt"].startswith("Accept? DONE")
        answer = labd("labd approve", sid)
        assert answer.returncode == 0, answer.stderr
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert f"approval {pending[0]['id']} waiting (review)" in err and f"labd approve {sid}" in err
    assert "analyst · turn" in err and "ran python code" in err and "session completed" in err
    with daemon.client() as c:
        result = next(c.history(sid, kinds=["session.finished"]))["payload"]["result"]
        assert result["accepted"] is True and result["answer"].startswith("DONE")
        kinds = {e["kind"] for e in c.history(sid)}
        assert {"agent.turn.started", "llm.request", "code.execution", "file.created"} <= kinds


def test_the_readme_policy_example_keeps_the_default_model_usable(tmp_path: Path) -> None:
    """The README's policy rules, checked with its own `labd policy check`: gpt-4o is refused to agents other than
    the planner, as its name says, but the configuration example's default model (gpt-4o-mini) is not. The
    example's ``"gpt-4o*"`` matched gpt-4o-mini too, so the two examples together refused nearly every LLM call."""
    readme = (REPO / "README.md").read_text()
    rules = re.search(r"```toml\n(\[\[policy\]\].*?)```", readme, re.S)
    default = re.search(r'^model = "([^"]+)"', readme.split("## Configuration", 1)[-1], re.M)
    assert rules and default, "README policy or configuration example not found"
    (tmp_path / "rules.toml").write_text(rules.group(1))

    def decide(agent: str, model: str) -> str:
        out = subprocess.run([sys.executable, "-m", "labd", "policy", "check", str(tmp_path / "rules.toml"),
                              "--action", "llm", "--agent", agent, "--model", model, "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["decision"]["effect"])

    assert decide("writer", "gpt-4o") == "deny"
    assert decide("planner", "gpt-4o") != "deny"
    assert decide("writer", default.group(1)) != "deny", default.group(1)
