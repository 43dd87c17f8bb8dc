"""Skills as a power user relies on them (skills review): a hitl skill reuses its plan (the one a human kept), given
``plan``/``hints`` win over a skill's, search finds texts (not field names, wildcards taken literally), and the
CLI's small promises: what a run reuses, the code a run will hand to agents, ``-o DIR``, names and parameters.
Against a real daemon, shared by the module (each test its own skill names)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labd.ipc import LabdError
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)


def _labd(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LABD_HOME": str(home)}, cwd=cwd)


def _answer_all(c, sid: str, decide) -> None:
    """Answer each approval of ``sid`` with ``decide(approval)`` until the session ends."""
    while c.session(sid)["status"] not in ("completed", "failed", "cancelled", "lost"):
        pending = wait_until(lambda: c.approvals(sid) or c.session(sid)["status"] in ("completed", "failed"),
                             timeout=60, what="an approval or the end")
        if isinstance(pending, list):
            ap = pending[0]
            c.resolve(sid, approval_id=ap["id"], **decide(ap))


def test_a_hitl_skill_puts_its_plan_to_the_human_and_leaves_out_the_step_a_human_rejected(shared_daemon) -> None:
    """A hitl session whose second step a human rejected makes a skill of one step; a run of it puts that plan to
    the human (no planner call), runs the one step with the code that worked and the new task. Before, a hitl skill
    planned again (planner and reviewer called) and brought back the step the human had rejected."""
    with shared_daemon.client(timeout=60) as c:
        sid = c.start("hitl", params={"task": "Plain.\n- one\n- two", "max_steps": 2})

        def origin(ap):
            second = ap["kind"] == "before_step" and "step 2" in ap["prompt"]
            return {"decision": "reject" if second else "approve", "feedback": "not this one" if second else None}

        _answer_all(c, sid, origin)
        assert c.session(sid)["status"] == "completed"
        c.request("skill.save", session=sid, name="kept-by-a-human", parameters=["task"])
        got = c.request("skill.get", name="kept-by-a-human")
        assert got["reuses"] == "plan" and len(got["skill"]["steps"]) == 1
        run = c.start("skill:kept-by-a-human", params={"task": "Plain.\n- one again"})
        first = wait_until(lambda: c.approvals(run), timeout=60, what="the plan put to the human")[0]
        assert first["kind"] == "after_planning"
        assert [s["goal"] for s in first["context"]["plan"]] == [got["skill"]["plan"][0]["goal"]]
        _answer_all(c, run, lambda ap: {"decision": "approve"})
        assert c.session(run)["status"] == "completed"
        calls = [e["payload"] for e in c.history(run, kinds=["llm.request"])]
        assert not [p for p in calls if p["agent"] in ("planner", "plan_reviewer")]
        steps = [n["name"] for n in c.dag(run)["dag"]["nodes"] if n["kind"] == "step" and n["name"].startswith("step")]
        assert len(steps) == 1, steps
        assert any("Task: Plain.\n- one again" in p["input"] for p in calls if p["agent"] == "engineer"), calls


def test_a_plan_given_to_a_skill_run_wins_over_the_skills(shared_daemon) -> None:
    """``-p plan=...`` on a run of a planning skill runs the given plan (the protocol says given params win; the
    skill's plan was put over it), and the skill's hints are not given to it unless asked."""
    with shared_daemon.client(timeout=60) as c:
        sid = c.start("planning_and_control", params={"task": "Step 1 of 2: fit. Step 2 of 2: plot", "max_steps": 2})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        c.request("skill.save", session=sid, name="given-wins", parameters=["task"])
        run = c.start("skill:given-wins", params={"task": "t", "plan": [{"agent": "engineer", "goal": "my own step"}],
                                                  "hints": ["MY HINT"]})
        assert c.wait(run, timeout=90)["status"] == "completed"
        steps = [n["name"] for n in c.dag(run)["dag"]["nodes"] if n["kind"] == "step" and n["name"].startswith("step")]
        assert steps == ["step 1: my own step"]
        inputs = [e["payload"]["input"] for e in c.history(run, kinds=["llm.request"])]
        assert "MY HINT" in inputs[0] and "Code that worked" not in inputs[0]
        # a plan alone: the skill's hints (made for its own steps, by position) are not given to it either
        alone = c.start("skill:given-wins", params={"task": "t", "plan": [{"agent": "engineer", "goal": "mine"}]})
        assert c.wait(alone, timeout=90)["status"] == "completed"
        first = next(e["payload"]["input"] for e in c.history(alone, kinds=["llm.request"]))
        assert "Code that worked" not in first


def test_search_finds_texts_literally_and_not_field_names(shared_daemon, tmp_path: Path) -> None:
    """``skill.list`` search: a text with a newline and a quote (as code holds it) is found; a field name
    (``origin_session``), ``%`` and ``_`` match nothing unless a text holds them. Before, the raw JSON was searched
    with LIKE: a field name or ``%`` listed every skill, and escaped texts were never found."""
    doc = {"name": "searched-one", "workflow": "demo.count", "description": "a_b here",
           "steps": [{"name": "s", "goal": "g", "code": ['print("hello")\nprint(1)']}]}
    other = {"name": "searched-two", "workflow": "demo.count", "description": "axb there"}
    with shared_daemon.client(timeout=60) as c:
        for d in (doc, other):
            c.request("skill.import", document=d)

        def found(text: str) -> set[str]:
            return {s["name"] for s in c.request("skill.list", search=text)["skills"]} & {"searched-one",
                                                                                       "searched-two"}
        assert found('("hello")\nprint') == {"searched-one"}
        assert found("origin_session") == set() and found("workflow") == set()
        assert found("%") == set() and found("a_b") == {"searched-one"} and found("AXB") == {"searched-two"}
        assert found("demo.count") == {"searched-one", "searched-two"}  # a value


def test_the_cli_says_what_a_run_reuses_shows_its_code_and_refuses_what_it_cannot_save(shared_daemon,
                                                                                      tmp_path: Path) -> None:
    """`labd skills save` says what its runs reuse (params only for a workflow without a saved plan); `show
    --code` prints the code a run gives to agents; `export -o DIR` writes NAME.skill.json into DIR; a parameter
    named twice, ``skill:`` without a name, and a name starting with '.' are refused saying the rule."""
    home = shared_daemon.home
    with shared_daemon.client(timeout=60) as c:
        counted = c.start("demo.count", params={"n": 1, "delay": 0})
        assert c.wait(counted, timeout=60)["status"] == "completed"
        c.request("skill.import", document={"name": "with-code", "workflow": "planning_and_control",
                                            "plan": [{"agent": "engineer", "goal": "read it"}],
                                            "steps": [{"name": "step 1: read it", "goal": "read it",
                                                       "code": ["open('/etc/hostname').read()\nprint('x')"],
                                                       "answer": "done"}]})
        with pytest.raises(LabdError) as twice:
            c.request("skill.save", session=counted, name="twice", parameters=["n", "n"])
        assert twice.value.code == "bad_request" and "'n' is named more than once" in twice.value.message
        with pytest.raises(LabdError) as empty:
            c.start("skill:")
        assert empty.value.code == "bad_request" and "starting with a letter or digit" in empty.value.message
        with pytest.raises(LabdError) as dotted:
            c.request("skill.save", session=counted, name=".x")
        assert "starting with a letter or digit" in dotted.value.message
    r = _labd(home, "skills", "save", counted, "--name", "counted", "--param", "n")
    assert r.returncode == 0 and "its runs reuse its params only (demo.count takes no saved plan" in r.stdout, r
    r = _labd(home, "skills", "show", "with-code", "--code")
    assert r.returncode == 0 and "open('/etc/hostname').read()" in r.stdout and "answer: done" in r.stdout, r
    assert "reuse its plan" in r.stdout
    r = _labd(home, "skills", "export", "counted", "-o", str(tmp_path))
    assert r.returncode == 0, r
    assert json.loads((tmp_path / "counted.skill.json").read_text())["workflow"] == "demo.count"


def test_a_skill_of_a_module_workflow_runs_from_another_directory(shared_daemon, tmp_path: Path) -> None:
    """A session of ``myflows:study`` started in the directory holding ``myflows.py`` makes a skill that runs from
    any directory: the skill keeps where its session imported the workflow from (``sys_path``), looked in after the
    running client's own directories. Before, the run failed ``unknown_workflow`` anywhere else."""
    home = shared_daemon.home
    project = tmp_path / "project"
    project.mkdir()
    (project / "skillmod_flows.py").write_text("def study(ctx, topic: str = 'a'):\n    print('studied', topic)\n"
                                               "    return topic\n")
    r = _labd(home, "run", "skillmod_flows:study", "-p", "topic=first", "--json", cwd=project)
    assert r.returncode == 0, r
    sid = json.loads(r.stdout)["session"]
    with shared_daemon.client(timeout=60) as c:
        assert c.wait(sid, timeout=60)["status"] == "completed"
        c.request("skill.save", session=sid, name="module-skill", parameters=["topic"])
        assert c.request("skill.get", name="module-skill")["skill"]["sys_path"][0] == str(project)
    shown = _labd(home, "skills", "show", "module-skill")
    assert f"imports from  {project}" in shown.stdout, shown  # read before running it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _labd(home, "run", "skill:module-skill", "-p", "topic=second", "--json", cwd=elsewhere)
    assert r.returncode == 0, r
    run = json.loads(r.stdout)["session"]
    with shared_daemon.client(timeout=60) as c:
        assert c.wait(run, timeout=60)["status"] == "completed"
        assert "studied second" in "".join(e["payload"]["text"] for e in c.history(run, kinds=["output"]))


def test_the_sdk_saves_lists_reads_imports_and_deletes_skills(shared_daemon, tmp_path: Path) -> None:
    """The Python SDK has the skills calls (a user had to know the protocol's ``skill.*`` requests), `labd show` of
    a skill's run says which skill and version it ran, and `labd skills import` refuses an integer past 64 bits,
    which the wire would have carried as a text (the skill changed without a word)."""
    with shared_daemon.client(timeout=60) as c:
        sid = c.start("demo.count", params={"n": 1, "delay": 0})
        assert c.wait(sid, timeout=60)["status"] == "completed"
        assert c.save_skill(sid, "sdk-made", parameters=["n"], description="counted by the SDK") == \
            {"name": "sdk-made", "version": 1}
        assert [s["name"] for s in c.skills(search="counted by the SDK")] == ["sdk-made"]
        got = c.skill("sdk-made")
        assert got["reuses"] == "params" and got["skill"]["parameters"] == ["n"]
        assert c.import_skill(got["skill"], name="sdk-copy")["version"] == 1
        assert c.delete_skill("sdk-made") == {"name": "sdk-made", "versions": 1}
        assert c.save_skill(sid, "sdk-made")["version"] == 2  # never a number given before
        run = c.start("skill:sdk-copy", params={"n": 2})
        assert c.wait(run, timeout=60)["status"] == "completed"
    shown = _labd(shared_daemon.home, "show", run)  # which skill and version it ran (only `labd events` said)
    assert shown.returncode == 0 and f"skill sdk-copy version 1, saved from session {sid}" in shown.stdout, shown
    with shared_daemon.client(timeout=60) as c, pytest.raises(LabdError) as err:  # the SDK checks it too
        c.import_skill({"name": "huge", "workflow": "demo.count", "params": {"n": 10**30}})
    assert err.value.code == "bad_request" and err.value.details == {"field": "params.n"}
    huge = tmp_path / "huge.skill.json"
    huge.write_text('{"name": "huge", "workflow": "demo.count", "params": {"n": ' + "9" * 400 + "}}")
    r = _labd(shared_daemon.home, "skills", "import", str(huge))
    assert r.returncode == 2 and "params.n is a number too large to keep exactly" in r.stderr, r


def test_an_import_that_could_never_run_as_written_is_refused_naming_the_field(shared_daemon) -> None:
    """A planning skill whose plan names a role this daemon does not have (it ran as the engineer without a word), or
    whose step depends on a later or missing one (dropped without a word), is refused naming the field; `--from` an
    agent turn inside a step saves from that step (it dropped the step)."""
    plan_doc = {"name": "bad-plan", "workflow": "planning_and_control"}
    with shared_daemon.client(timeout=60) as c:
        for plan, field in (([{"agent": "no_such_role", "goal": "g"}], "plan[0].agent"),
                            ([{"agent": "engineer", "goal": "g", "depends_on": [5]}], "plan[0].depends_on")):
            with pytest.raises(LabdError) as err:
                c.import_skill({**plan_doc, "plan": plan})
            assert err.value.code == "bad_request" and err.value.details["field"] == field, err.value
        sid = c.start("planning_and_control", params={"task": "Step 1 of 2: fit. Step 2 of 2: plot", "max_steps": 2})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        nodes = c.dag(sid)["dag"]["nodes"]
        step1 = next(n for n in nodes if n["kind"] == "step" and n["name"].startswith("step 1"))
        turn = next(n for n in nodes if n["kind"] == "agent" and n.get("parent_node") and
                    _inside(nodes, n, step1["node_id"]))
        c.save_skill(sid, "from-a-turn", from_node=turn["node_id"])
        assert [s["name"] for s in c.skill("from-a-turn")["skill"]["steps"]][0] == step1["name"]


def _inside(nodes: list[dict], node: dict, step: str) -> bool:
    """Is ``node`` nested (at any depth) in node ``step``?"""
    by_id = {n["node_id"]: n for n in nodes}
    while node.get("parent_node"):
        if node["parent_node"] == step:
            return True
        node = by_id.get(node["parent_node"], {})
    return False


def test_an_imported_skill_brings_no_directories_onto_the_import_path(shared_daemon, tmp_path: Path) -> None:
    """A skill document naming ``sys_path`` (a directory another local user could write, holding a ``json.py``) is
    imported without it, and a run of it imports nothing from there; a built-in workflow's skill never adds its
    session's directories. Otherwise a shared skill file of a built-in workflow could run any code as its user."""
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "json.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')\nraise SystemExit(3)\n")
    with shared_daemon.client(timeout=60) as c:
        c.import_skill({"name": "with-a-trap", "workflow": "demo.count", "params": {"n": 1, "delay": 0},
                        "sys_path": [str(trap)]})
        assert "sys_path" not in c.skill("with-a-trap")["skill"]
        run = c.start("skill:with-a-trap")
        assert c.wait(run, timeout=60)["status"] == "completed"
    assert not (tmp_path / "pwned").exists()


def test_a_big_file_does_not_count_as_code_and_search_reads_texts_not_times(shared_daemon, tmp_path: Path) -> None:
    """A session that wrote a 9 MB file saves as a skill (the file's size was counted as characters of code: "over
    8,000,000 characters", even with --from its last step); search ignores the skill's own time and version (``1``
    matched every skill), and folds case beyond ASCII (``café`` finds ``CAFÉ``). Retest of the skills review."""
    flows = tmp_path / "bigfile_flows.py"
    flows.write_text("def write(ctx):\n    (ctx.workdir / 'big.bin').write_bytes(b'x' * 9_000_000)\n")
    with shared_daemon.client(timeout=60) as c:
        sid = c.start(f"{flows}:write")
        assert c.wait(sid, timeout=60)["status"] == "completed"
        assert c.save_skill(sid, "wrote-big")["version"] == 1
        assert c.skill("wrote-big")["skill"]["files"][0]["size"] == 9_000_000
        c.import_skill({"name": "accented", "workflow": "demo.count", "description": "CAFÉ notes"})
        names = {s["name"] for s in c.skills(search="café")}
        assert "accented" in names and "wrote-big" not in names
        assert "wrote-big" not in {s["name"] for s in c.skills(search=str(int(c.skill("wrote-big")["skill"]
                                                                                 ["created_at"]))[:4])}


def test_a_skill_too_large_for_one_message_is_refused_saying_from_where(small_daemon, tmp_path: Path) -> None:
    """On a daemon whose messages are 64 KiB, a session that wrote 600 files with long names makes a skill document
    larger than a message (its file list: not counted by the cap on code and answers): the save is refused naming
    ``--from``, instead of storing a skill that `show` and `import` could never carry."""
    flows = tmp_path / "manyfiles_flows.py"
    flows.write_text("def write(ctx):\n    for i in range(600):\n"
                     "        (ctx.workdir / f\"{'a-long-file-name-' * 4}{i}.txt\").write_text(str(i))\n")
    with small_daemon.client(timeout=60) as c:
        sid = c.start(f"{flows}:write")
        assert c.wait(sid, timeout=90)["status"] == "completed"
        with pytest.raises(LabdError) as err:
            c.save_skill(sid, "too-big")
        assert err.value.code == "bad_skill" and "--from" in err.value.message, err.value
        assert c.skills() == []
