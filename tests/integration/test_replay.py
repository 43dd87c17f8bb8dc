"""labd replay / compare / tree with real daemons and runners: served responses, divergence, lineage."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from labd.ipc import LabdError
from tests.conftest import running_daemon, wait_until
from tests.support.scripted_openai import config_for, scripted_server

HITL = {"task": "Plain.\n- one\n- two", "max_steps": 2}


def labd(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=90)


def shape(c: Any, sid: str) -> tuple[list[tuple[Any, ...]], list[tuple[str, str, str]]]:
    dag = c.dag(sid)["dag"]
    nodes = [(n["node_id"], n["name"], n["kind"], n["status"], n["parent_node"]) for n in dag["nodes"]]
    return nodes, sorted((e["src"], e["dst"], e["type"]) for e in dag["edges"])


def final_files(c: Any, sid: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in c.files(sid):
        if f["change"] == "deleted":
            out.pop(f["path"], None)
        else:
            out[f["path"]] = f["sha256"]
    return out


def node_named(c: Any, sid: str, name: str) -> str:
    return next(n["node_id"] for n in c.dag(sid)["dag"]["nodes"] if n["name"] == name)


def test_full_replay_of_hitl_costs_nothing_and_reproduces_dag_and_files(isolated_env: Path) -> None:
    """A hitl session run against an OpenAI-compatible server, replayed twice: every LLM response and all
    three approvals come from the record (no request reaches the server, no approval waits), the cost is
    $0, the DAG (nodes, statuses, edges) and the final file hashes are the parent's; both replays name the
    parent, and `tree` shows the parent with its two children."""
    with scripted_server() as server:
        isolated_env.mkdir(parents=True, exist_ok=True)
        (isolated_env / "config.toml").write_text(config_for(server))
        with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
            sid = c.start("hitl", params=HITL)
            for _ in range(3):
                wait_until(lambda: c.approvals(sid), timeout=60, what="an approval")
                c.approve(sid)
            parent = c.wait(sid, timeout=90)
            assert parent["status"] == "completed", parent["reason"]
            asked = len(server.requests)
            assert asked >= 4 and parent["cost"] > 0

            rid = c.replay(sid)
            replay = c.wait(rid, timeout=90)
            assert replay["status"] == "completed", replay["reason"]
            assert len(server.requests) == asked  # zero requests reached the model
            assert replay["cost"] == 0
            assert (replay["parent_id"], replay["origin"], replay["branch_node"]) == (sid, "replay", None)
            assert replay["params"] == parent["params"]
            assert shape(c, rid) == shape(c, sid)
            files = final_files(c, sid)
            assert files and final_files(c, rid) == files
            history = list(c.history(rid))
            responses = [e["payload"] for e in history if e["kind"] == "llm.response"]
            assert len(responses) == asked and all(r["replayed"] for r in responses)
            replayed = [e["payload"] for e in history if e["kind"] == "approval.replayed"]
            assert [a["kind"] for a in replayed] == ["after_planning", "before_step", "before_step"]
            assert not c.approvals(rid, status="pending") and not [e for e in history if e["kind"] == "replay.miss"]
            same = c.compare(sid, rid)  # nothing differs but the cost
            assert {f for s in same["steps"] for f in s["changed"]} == {"cost"} and same["result"]["same"]
            assert not any(f["differs"] for f in same["files"]) and same["totals"][1]["cost"] == 0

            second = c.replay(rid)  # a replay of a replay serves what the first one was served
            assert c.wait(second, timeout=90)["status"] == "completed"
            assert len(server.requests) == asked
            c.replay(sid)
            tree = c.tree(second)
            assert tree["root"] == sid and tree["size"] == 4
            kids = tree["tree"]["children"]
            assert [k["origin"] for k in kids] == ["replay", "replay"] and kids[0]["id"] == rid
            assert [g["id"] for g in kids[0]["children"]] == [second]
            out = labd(isolated_env, "tree", sid)
            assert out.returncode == 0, out.stderr
            assert sid in out.stdout and f"`-- {second}" in out.stdout.replace("|-- ", "`-- ")


def test_changed_input_divergence_compare_and_bad_requests(isolated_env: Path, tmp_path: Path) -> None:
    """A replay whose workflow now asks something else (its input file changed) fails at the first divergence
    with a replay.miss naming the node and the recorded request expected there, never a guessed answer;
    `compare` of the session and a variant run shows the changed step result and the changed file (with a
    text diff), and the unchanged ones as such; bad requests get clear errors."""
    source = tmp_path / "note.txt"
    source.write_text("alpha\n")
    with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
        sid = c.start("labd_testflows:replay_probe", params={"source": str(source)})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        source.write_text("beta\n")
        rid = c.replay(sid)
        final = c.wait(rid, timeout=90)
        assert final["status"] == "failed" and "replay diverged" in final["reason"]
        miss = [e for e in c.history(rid) if e["kind"] == "replay.miss"]
        assert len(miss) == 1
        turn = miss[0]["node_id"]
        assert next(n for n in c.dag(rid)["dag"]["nodes"] if n["node_id"] == turn)["parent_node"] == \
            node_named(c, rid, "ask 1")
        assert "beta" in miss[0]["payload"]["input"] and "alpha" in miss[0]["payload"]["expected"]["input"]
        out = labd(isolated_env, "replay", sid, "--wait")
        assert out.returncode == 1 and "first divergence" in out.stdout, out.stdout + out.stderr

        source.write_text("alpha\n")  # a workflow without LLM calls whose second step is now named differently
        steps_sid = c.start("labd_testflows:replay_steps", params={"source": str(source)})
        assert c.wait(steps_sid, timeout=90)["status"] == "completed"
        source.write_text("beta\n")
        steps_rid = c.replay(steps_sid)
        assert c.wait(steps_rid, timeout=90)["status"] == "completed"  # reported, not fatal
        diverged = [e for e in c.history(steps_rid) if e["kind"] == "replay.diverged"]
        assert [(e["node_id"], e["payload"]) for e in diverged] == [
            (node_named(c, steps_rid, "analyse beta"), {"name": "analyse beta", "expected": "analyse alpha"})]

        variant = c.start("labd_testflows:replay_probe", params={"source": str(source)})
        assert c.wait(variant, timeout=90)["status"] == "completed"
        cmp = c.compare(sid, variant)
        steps = {s["name"]: s for s in cmp["steps"]}
        assert "result" in steps["ask 1"]["changed"] and "beta" in steps["ask 1"]["result_diff"][0]
        assert steps["ask 2"]["changed"] == []
        files = {f["path"]: f for f in cmp["files"]}
        assert files["answer_1.txt"]["states"] == ["changed"] and "+" in files["answer_1.txt"]["diffs"][0]
        assert "beta" in files["answer_1.txt"]["diffs"][0]
        assert files["answer_2.txt"]["states"] == ["same"]
        assert not cmp["result"]["same"]
        out = labd(isolated_env, "compare", sid, variant)
        assert out.returncode == 0 and "answer_1.txt" in out.stdout and "changed" in out.stdout, out.stderr

        with pytest.raises(LabdError) as err:
            c.replay("no-such-session")
        assert err.value.code == "not_found"
        with pytest.raises(LabdError) as err:
            c.replay(sid, from_node="n999")
        assert err.value.code == "unknown_node"
        with pytest.raises(LabdError) as err:
            c.compare(sid)
        assert err.value.code == "bad_request" and "at least two" in err.value.message
        waiting = c.start("labd_testflows:review_once")
        wait_until(lambda: c.approvals(waiting), timeout=60, what="an approval")
        with pytest.raises(LabdError) as err:
            c.replay(waiting)
        assert err.value.code == "not_finished"
        c.stop(waiting, grace=1)
        out = labd(isolated_env, "compare", sid)
        assert out.returncode == 2 and "at least two" in out.stderr


def test_a_divergence_with_the_same_input_says_which_part_of_the_request_differs(isolated_env: Path,
                                                                                  tmp_path: Path) -> None:
    """A replay whose agent's system prompt changed (its question did not) fails at the first call, and the
    report names the part that differs: the asked and recorded inputs read the same, which said nothing."""
    persona = tmp_path / "persona.txt"
    persona.write_text("You are careful.")
    with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
        sid = c.start("labd_testflows:replay_probe", params={"persona": str(persona), "steps": 1})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        persona.write_text("You are bold.")
        out = labd(isolated_env, "replay", sid, "--wait")
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        asked = next(x for x in lines if x.strip().startswith("asked:")).split(":", 1)[1]
        recorded = next(x for x in lines if x.strip().startswith("recorded:")).split(":", 1)[1]
        assert asked.strip() == recorded.strip()
        assert "  differs in: the system prompt" in lines, out.stdout
        rid = next(r["id"] for r in c.sessions(limit=10) if r["id"] not in (sid,) and r.get("origin") == "replay")
        (miss,) = [e for e in c.history(rid) if e["kind"] == "replay.miss"]
        assert miss["payload"]["differs"] == ["system"]


def test_replay_from_a_node_goes_live_after_it(isolated_env: Path) -> None:
    """`replay --from NODE` serves the calls recorded up to the end of NODE and sends the ones after it to
    the model: the server sees exactly the second step's request again, and only that call costs money. NODE may
    be a step's name, as for `branch --from` (it was refused `unknown_node`): the replay records the node's id. A
    session run without a process limit (``--procs none``) is replayed without one, not under the default 256."""
    with scripted_server() as server:
        isolated_env.mkdir(parents=True, exist_ok=True)
        (isolated_env / "config.toml").write_text(config_for(server))
        with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
            sid = c.start("labd_testflows:replay_probe", procs="none")
            assert c.wait(sid, timeout=90)["status"] == "completed"
            assert len(server.requests) == 2
            first = node_named(c, sid, "ask 1")
            rid = c.replay(sid, from_node="ask 1")  # the step's name: resolved to its node
            final = c.wait(rid, timeout=90)
            assert final["status"] == "completed", final["reason"]
            assert final["branch_node"] == first
            assert c.session(sid)["limits"]["procs"] is None and final["limits"]["procs"] is None
            assert len(server.requests) == 3 and server.requests[2]["messages"] == server.requests[1]["messages"]
            responses = {e["node_id"]: e["payload"] for e in c.history(rid) if e["kind"] == "llm.response"}
            step_of = {n["node_id"]: n["parent_node"] for n in c.dag(rid)["dag"]["nodes"]}
            served = {step_of[n]: bool(p.get("replayed")) for n, p in responses.items()}
            assert served == {node_named(c, rid, "ask 1"): True, node_named(c, rid, "ask 2"): False}
            assert 0 < final["cost"] < c.session(sid)["cost"]
            assert final_files(c, rid) == final_files(c, sid)


def test_replay_from_a_step_name_several_completed_steps_share_is_ambiguous(isolated_env: Path) -> None:
    """`replay --from NAME` where several completed steps share NAME (a loop's steps) is refused ``ambiguous``,
    listing their node ids, and starts nothing; one of those node ids is accepted and replays up to that step."""
    with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
        sid = c.start("labd_testflows:same_names", params={"n": 3})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        iters = [n["node_id"] for n in c.dag(sid)["dag"]["nodes"] if n["name"] == "iter"]
        assert len(iters) == 3
        before = {s["id"] for s in c.sessions()}
        with pytest.raises(LabdError) as err:
            c.replay(sid, from_node="iter")
        assert err.value.code == "ambiguous" and "give a node id" in err.value.message
        assert sorted(err.value.details["matches"]) == sorted(iters)
        assert {s["id"] for s in c.sessions()} == before  # nothing started
        out = labd(isolated_env, "replay", sid, "--from", "iter")
        assert out.returncode != 0 and "ambiguous" in out.stderr and iters[0] in out.stderr, out.stderr
        rid = c.replay(sid, from_node=iters[1])
        final = c.wait(rid, timeout=90)
        assert final["status"] == "completed" and final["branch_node"] == iters[1], final


def _members(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(m for child in node["children"] for m in _members(child))]


def test_replay_and_compare_of_a_resumed_session_use_its_effective_run(isolated_env: Path, tmp_path: Path) -> None:
    """A session whose second step failed after its LLM call, resumed to completion, has in its record an
    attempt that the resume superseded (the step and its call were made again, under new node ids). Its replay
    reports no step divergence and is served only the calls of the run that counted (``replay.json`` holds three,
    not four); `compare` of the session with its replay lines each step up with the attempt that completed and
    finds nothing changed but the cost, and says how many superseded attempts it left out."""
    counter = tmp_path / "counts"
    counter.mkdir()
    with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
        sid = c.start("labd_testflows:resumable_asks", params={"counter": str(counter)})
        assert c.wait(sid, timeout=90)["status"] == "failed"
        c.resume(sid, reason="the second step was flaky")
        wait_until(lambda: c.session(sid)["status"] == "completed", timeout=90, what="the resumed session")
        failed = [n for n in c.dag(sid)["dag"]["nodes"] if n["name"] == "ask 2"]
        assert sorted(n["status"] for n in failed) == ["completed", "failed"]  # two attempts in the record

        rid = c.replay(sid)
        final = c.wait(rid, timeout=90)
        assert final["status"] == "completed", final["reason"]
        history = list(c.history(rid))
        assert not [e for e in history if e["kind"] in ("replay.diverged", "replay.miss")]
        seed = json.loads((d.home / "sessions" / rid / "replay.json").read_text())
        superseded = next(n["node_id"] for n in failed if n["status"] == "failed")
        nested = {n["node_id"] for n in c.dag(sid)["dag"]["nodes"] if n["parent_node"] == superseded}
        assert len(seed["order"]) == 3 and not {o["node"] for o in seed["order"]} & nested
        assert superseded not in set(seed["steps"].values()) | set(seed["steps"])
        assert final_files(c, rid) == final_files(c, sid)

        same = c.compare(sid, rid)
        assert [s["name"] for s in same["steps"]] == ["ask 1", "ask 2", "ask 3"]
        assert {f for s in same["steps"] for f in s["changed"]} == {"cost"} and same["result"]["same"], same["result"]
        assert [t["superseded"] for t in same["totals"]] == [1, 0]
        out = labd(isolated_env, "compare", sid, rid)
        assert out.returncode == 0, out.stderr
        assert "superseded" in out.stdout and "ask 2 #2" not in out.stdout
        # the family tree counts the resume (it counted none: a resume goes failed -> queued, not -> running)
        members = {m["id"]: m for m in _members(c.tree(sid)["tree"])}
        assert members[sid]["resumes"] == 1 and members[rid]["resumes"] == 0
        assert "resumed 1x" in labd(isolated_env, "tree", sid).stdout


def test_replay_of_a_branch_reuses_what_it_reused_and_reports_no_divergence(isolated_env: Path,
                                                                            tmp_path: Path) -> None:
    """A branch's replay runs as the branch did: the step the branch reused is reused again (not run, its
    recorded result and files restored), the branch's own calls are served, the DAG is the branch's (its node
    ids numbered after the parent's, as the branch's are) and no divergence is reported."""
    counter = tmp_path / "counts"
    counter.mkdir()
    with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
        sid = c.start("labd_testflows:resumable_asks", params={"counter": str(counter), "fail_second": 0})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        bid = c.branch(sid, "ask 2")["sessions"][0]["session"]
        assert c.wait(bid, timeout=90)["status"] == "completed"
        rid = c.replay(bid)
        final = c.wait(rid, timeout=90)
        assert final["status"] == "completed", final["reason"]
        history = list(c.history(rid))
        assert not [e for e in history if e["kind"] in ("replay.diverged", "replay.miss")]
        branch_calls = [e for e in c.history(bid) if e["kind"] == "llm.response"]
        assert [e["payload"]["replayed"] for e in history if e["kind"] == "llm.response"] == [True] * len(branch_calls)
        assert shape(c, rid) == shape(c, bid)
        assert "reused" in {n[3] for n in shape(c, rid)[0]}
        assert final_files(c, rid) == final_files(c, bid) == final_files(c, sid)


def test_replay_of_a_branch_with_a_hypothesis_or_changed_params_is_served_whole(isolated_env: Path) -> None:
    """A branch made with ``--hypothesis`` (its live agents' system prompts carry it) or with changed params
    (its reused plan was made with the parent's) replays completed, every call served from its record, at no
    cost. Both failed with ``ReplayMiss``: the replay had no hypothesis, and planned again with the new params."""
    with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
        sid = c.start("planning_and_control")
        assert c.wait(sid, timeout=90)["status"] == "completed"
        step2 = node_named(c, sid, "step 2: compute it with the closed formula")
        hyp = c.branch(sid, step2, hypothesis="the closed formula is exact")["sessions"][0]["session"]
        fewer = c.branch(sid, step2, params={"max_steps": 2})["sessions"][0]["session"]
        for bid in (hyp, fewer):
            assert c.wait(bid, timeout=90)["status"] == "completed"
        requests = [e for e in c.events(hyp, kinds=["llm.request"], full=True)["events"]]
        assert requests and all("the closed formula is exact" in json.dumps(e["payload"]) for e in requests)
        for bid in (hyp, fewer):
            rid = c.replay(bid)
            final = c.wait(rid, timeout=90)
            assert final["status"] == "completed", final["reason"]
            responses = [e for e in c.history(rid) if e["kind"] == "llm.response"]
            assert responses and all(e["payload"].get("replayed") for e in responses)
            assert c.cost(rid)["total"]["cost"] == 0
            assert shape(c, rid) == shape(c, bid)
        # compare says what they were started with where it differs
        cmp = c.compare(sid, hyp, fewer)
        assert cmp["inputs"] == {"params": {"max_steps": [None, None, "2"]},
                                 "hypothesis": [None, "the closed formula is exact", None]}
        out = labd(isolated_env, "compare", sid, hyp, fewer).stdout
        assert "the closed formula is exact" in out and "-p max_steps" in out and "(default)" in out, out


def _record_finished(home: Path, sids: list[str], steps: int) -> None:
    """Write finished sessions of ``steps`` completed steps each straight into ``home``'s store (no daemon runs)."""
    from labd.store.db import migrate, open_engine
    from labd.store.writer import BatchWriter
    from tests.unit.test_store import CREATED, Batch

    home.mkdir(parents=True, exist_ok=True)
    eng = open_engine(f"sqlite:///{home / 'labd.db'}")
    migrate(eng)
    writer = BatchWriter(eng)
    b = Batch({})
    for sid in sids:
        b.add(sid, "session.created", {**CREATED, "name": f"big-{sid}", "workdir": f"/w/{sid}"})
        for i in range(steps):
            b.add(sid, "step.started", {"name": f"s{i}", "path": str(i)}, src="r", node=f"n{i + 1}")
            b.add(sid, "step.finished", {"name": f"s{i}", "status": "completed", "duration": 0.1}, src="r",
                  node=f"n{i + 1}")
        b.add(sid, "session.finished", {"outcome": "completed", "result": None}, src="r")
        b.add(sid, "session.ended", {"ended_by": "runner", "exit_code": 0})
    b.commit(writer)
    writer.close()
    eng.dispose()


def test_the_daemon_answers_other_clients_while_a_long_comparison_is_read(isolated_env: Path) -> None:
    """Comparing two large sessions reads their whole record on a worker thread (daemon/reads.py): while it runs,
    the daemon answers other clients (its status counts the read in flight), then the comparison arrives whole.
    On the request loop, a comparison of two 30,000-step sessions held every client (``labd ps``, a GUI, approvals)
    for seconds."""
    n = 10_000
    _record_finished(isolated_env, ["b16a00000001", "b16a00000002"], n)
    with running_daemon(isolated_env) as d, d.client(timeout=120) as c, d.client(timeout=60) as other:
        assert c.session("b16a00000001")["status"] == "completed"
        out: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: out.update(result=c.compare("b16a00000001", "b16a00000002")))
        reader.start()
        seen: list[int] = []

        def in_flight() -> bool:
            seen.append(other.status()["long_reads"])
            return seen[-1] >= 1 or "result" in out

        wait_until(in_flight, timeout=60, interval=0.01, what="the comparison counted as a long read")
        reader.join(120)
        assert max(seen) >= 1, seen  # answered while the comparison ran, not after it
        result = out["result"]
        assert result["sessions"] == ["b16a00000001", "b16a00000002"]
        assert len(result["steps"]) == n
        assert other.status()["long_reads"] == 0
