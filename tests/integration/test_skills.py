"""Skills: saved from a completed planning_and_control session and run again — planning is not repeated (no
planner call), the same step structure runs with the code that worked given as a hint, the new session names
its skill and origin; versions, search, export/import, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)


def _agents_called(c, sid: str) -> list[str]:
    return [e["payload"]["agent"] for e in c.history(sid) if e["kind"] == "llm.request"]


def test_save_and_run_a_skill_without_planning_again(daemon, tmp_path: Path) -> None:
    """A skill from a 2-step planning session: running it makes no planner/reviewer calls, runs the same steps,
    gives each engineer the code that worked, and records the skill and its origin on the new session; export
    refuses to write over a file (an error, not a traceback) and writes to stdout with ``-o -``."""
    from labd.ipc import LabdError

    with daemon.client() as c:
        origin = c.start("planning_and_control",
                         params={"task": "Step 1 of 2: fit. Step 2 of 2: plot", "max_steps": 2})
        assert c.wait(origin, timeout=90)["status"] == "completed"
        assert "planner" in _agents_called(c, origin)
        saved = c.request("skill.save", session=origin, name="fit-and-plot", parameters=["task"],
                          description="fit a curve, then plot it")
        assert saved == {"name": "fit-and-plot", "version": 1}
        doc = c.request("skill.get", name="fit-and-plot")["skill"]
        assert len(doc["steps"]) == 2 and all(s["code"] for s in doc["steps"]) and doc["origin_session"] == origin
        assert "engineer" in doc["agents"] and doc["agents"]["engineer"]["system_prompt"].startswith("ROLE: engineer")
        with pytest.raises(LabdError) as err:
            c.start("skill:fit-and-plot")  # `task` is the skill's parameter
        assert err.value.code == "bad_params"
        run = c.start("skill:fit-and-plot", params={"task": "Step 1 of 2: fit 2025. Step 2 of 2: plot"})
        assert c.wait(run, timeout=90)["status"] == "completed"
        called = _agents_called(c, run)
        assert "planner" not in called and "plan_reviewer" not in called and called.count("engineer") >= 2
        inputs = [e["payload"]["input"] for e in c.history(run) if e["kind"] == "llm.request"]
        assert "Code that worked for this step before" in inputs[0]
        # the skill's parameter reaches every step (it reached none: the saved plan ran for the old task)
        assert all("Task: Step 1 of 2: fit 2025" in i for i in inputs), inputs
        created = next(e for e in c.history(run) if e["kind"] == "session.created")["payload"]
        assert created["skill"] == {"name": "fit-and-plot", "version": 1, "origin_session": origin}
        steps = [n["name"] for n in c.dag(run)["dag"]["nodes"] if n["kind"] == "step"]
        assert len(steps) == 2
        # a second save is version 2; search finds it; export/import round-trips under a new name
        assert c.request("skill.save", session=origin, name="fit-and-plot")["version"] == 2
        assert [s["name"] for s in c.request("skill.list", search="2 of 2: plot")["skills"]] == ["fit-and-plot"]
    env = {**os.environ, "LABD_HOME": str(daemon.home)}
    out_file = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "labd", "skills", "export", "fit-and-plot", "-o", str(out_file)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    # never over an existing file: a one-line error, not a traceback; -o - writes the same document to stdout
    r = subprocess.run([sys.executable, "-m", "labd", "skills", "export", "fit-and-plot", "-o", str(out_file)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "exists" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "labd", "skills", "export", "fit-and-plot", "-o", "-"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout) == json.loads(out_file.read_text()), r.stderr
    # NAME@VERSION as `labd run skill:NAME@VERSION` takes it (show failed: "field 'name' must be 1-100 letters")
    r = subprocess.run([sys.executable, "-m", "labd", "skills", "show", "fit-and-plot@1", "--json"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "labd", "skills", "show", "fit-and-plot@one"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "must be a version number" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "labd", "skills", "import", str(out_file), "--name", "shared-fit"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "shared-fit" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "labd", "skills", "--json"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert {s["name"] for s in json.loads(r.stdout)} == {"fit-and-plot", "shared-fit"}
    assert json.loads(out_file.read_text())["plan"] == doc["plan"]


def test_each_step_of_a_skill_keeps_its_own_goal_from_a_later_step_or_a_branch(daemon) -> None:
    """A skill saved from a later step (``--from``), or from a branch (whose first steps were reused, not run),
    pairs every step with its own plan entry: a skill from step 2 begins with step 2's goal (it had step 1's,
    so each step's code ran under the goal of the step before), and a branch's skill holds its reused steps too.
    A workflow without a plan gives its steps no role (they read ``[engineer]``)."""
    with daemon.client() as c:
        sid = c.start("planning_and_control")
        assert c.wait(sid, timeout=90)["status"] == "completed"
        plan = next(e for e in c.history(sid) if e["kind"] == "session.finished")["payload"]["result"]["plan"]
        goals = [p["goal"] for p in plan]
        step2 = next(n["node_id"] for n in c.dag(sid)["dag"]["nodes"] if n["name"].startswith("step 2:"))
        c.request("skill.save", session=sid, name="later", from_node=step2)
        doc = c.request("skill.get", name="later")["skill"]
        assert [s["goal"] for s in doc["steps"]] == goals[1:]
        assert [s["name"][:7] for s in doc["steps"]] == ["step 2:", "step 3:"]
        assert all(s["code"] and f"step_{i}.json" in s["code"][0] for i, s in enumerate(doc["steps"], 2))
        bid = c.branch(sid, step2)["sessions"][0]["session"]
        assert c.wait(bid, timeout=90)["status"] == "completed"
        c.request("skill.save", session=bid, name="branched")
        doc = c.request("skill.get", name="branched")["skill"]
        assert [s["goal"] for s in doc["steps"]] == goals
        counted = c.start("demo.count", params={"n": 2, "delay": 0})
        assert c.wait(counted, timeout=60)["status"] == "completed"
        c.request("skill.save", session=counted, name="counted")
        assert {s["agent"] for s in c.request("skill.get", name="counted")["skill"]["steps"]} == {"none"}


def test_skill_errors(daemon) -> None:
    """A failed session cannot become a skill; unknown skills and bad names are refused; rm deletes every version."""
    from labd.ipc import LabdError

    with daemon.client() as c:
        bad = c.start("demo.fail")
        c.wait(bad, timeout=60)
        for body, code in (({"session": bad, "name": "x"}, "not_completed"),
                           ({"session": bad, "name": "bad name!"}, "bad_request")):
            with pytest.raises(LabdError) as err:
                c.request("skill.save", **body)
            assert err.value.code == code
        with pytest.raises(LabdError) as err:
            c.start("skill:nope")
        assert err.value.code == "not_found"
        ok = c.start("demo.count", params={"n": 1})
        c.wait(ok, timeout=60)
        c.request("skill.save", session=ok, name="count-once")
        c.request("skill.save", session=ok, name="count-once")
        assert c.request("skill.delete", name="count-once") == {"name": "count-once", "versions": 2}
        with pytest.raises(LabdError) as err:
            c.request("skill.get", name="count-once")
        assert err.value.code == "not_found", err.value


def test_save_from_a_node_the_session_lacks_is_unknown_node(daemon) -> None:
    """`skills save --from n99` of a session without node n99 is refused as everywhere else a missing node is
    (events.query --node): `unknown_node`, with `details.nodes` the session's node ids (not `not_found`, which means
    no such session); `labd skills save` says it in one line, exit 2, and nothing is saved."""
    from labd.ipc import LabdError

    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 2, "delay": 0})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        with pytest.raises(LabdError) as query:
            c.request("events.query", session=sid, node="n99")
        with pytest.raises(LabdError) as save:
            c.request("skill.save", session=sid, name="from-nowhere", from_node="n99")
        assert (save.value.code, save.value.details) == (query.value.code, query.value.details)
        assert save.value.code == "unknown_node" and f"session {sid} has no node 'n99'" in str(save.value)
        assert save.value.details["nodes"] == [n["node_id"] for n in c.dag(sid)["dag"]["nodes"]] != []
    r = subprocess.run([sys.executable, "-m", "labd", "skills", "save", sid, "--name", "from-nowhere", "--from", "n99"],
                       capture_output=True, text=True, env={**os.environ, "LABD_HOME": str(daemon.home)}, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("[unknown_node]"), r
    with daemon.client() as c:
        assert c.request("skill.list")["skills"] == []


def test_a_skill_of_a_long_session_keeps_its_plan_and_every_file(daemon) -> None:
    """A session whose plan (in its last event) comes after 5,200 file events: the skill has the plan's goals and
    roles, and lists every file. Before, a save read the session's first 5,000 such events only: the plan was lost
    (each goal became the step's name, a run of the skill named its steps ``step 1: step 1: ...``), later steps lost
    their code and answers, and nothing said so."""
    with daemon.client(timeout=120) as c:
        sid = c.start("labd_testflows:plan_after_files")
        assert c.wait(sid, timeout=150)["status"] == "completed"
        c.request("skill.save", session=sid, name="long-one")
        doc = c.request("skill.get", name="long-one")["skill"]
    assert [(s["goal"], s["agent"]) for s in doc["steps"]] == [("write every file", "engineer"),
                                                               ("sum it up", "writer")]
    assert doc["plan"][1]["depends_on"] == [0]
    assert len(doc["files"]) == 5200 and len({f["step"] for f in doc["files"]}) == 1  # all written in step 1


def test_a_submitted_functions_session_is_no_skill(daemon) -> None:
    """A `Client.submit` session cannot become a skill: its call (the pickled function and arguments) is not in a
    skill, so `labd run skill:NAME` could only fail (it did, with "field 'payload' goes with workflow ...: use
    Client.submit"). Saving it is refused `bad_skill`, saying why; so is importing such a document."""
    from labd.ipc import LabdError

    with daemon.client() as c:
        sid = c.submit(lambda: 1)
        assert c.result(sid, timeout=60) == 1
        with pytest.raises(LabdError) as err:
            c.request("skill.save", session=sid, name="fn-skill")
        assert err.value.code == "bad_skill" and "submitted function" in err.value.message, err.value
        with pytest.raises(LabdError) as err:
            c.request("skill.import", document={"name": "fn-skill", "workflow": "labd.runner.workflows.function:call"})
        assert "submitted function" in err.value.message
        assert not [s for s in c.request("skill.list")["skills"] if s["name"] == "fn-skill"]


def test_a_skill_from_a_resumed_session_holds_each_step_once_with_its_goal(daemon) -> None:
    """A planning_and_control session stopped by its budget inside step 2, resumed and stopped again further on,
    then resumed with a larger budget to completion, gives a skill of its three steps, each once and with its own
    plan entry; before, the skill read the stopped run's outcome (no plan: every goal fell back to the step's name,
    agent ``none``) and held step 1 twice (its completed node and a resume's re-announcement of it; after two
    resumes, the first one's too)."""
    task = "Analyse numbers.\n- compute the mean\n- compute the median\n- write a report"
    with daemon.client() as c:
        sid = c.start("planning_and_control", params={"task": task}, budget=0.0007)
        assert c.wait(sid, timeout=90)["status"] != "completed"
        c.resume(sid, budget=c.session(sid)["cost"] + 0.0003)  # a few more calls: stopped again, a step further
        assert c.wait(sid, timeout=90)["status"] != "completed"
        c.resume(sid, budget=1.0)
        assert c.wait(sid, timeout=90)["status"] == "completed"
        c.request("skill.save", session=sid, name="resumed")
        steps = c.request("skill.get", name="resumed")["skill"]["steps"]
        assert [s["goal"] for s in steps] == ["compute the mean", "compute the median", "write a report"]
        assert [s["agent"] for s in steps] == ["engineer"] * 3
