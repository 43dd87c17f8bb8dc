"""Durable sessions: checkpoints at completed steps, `resume` of an ended session from its last completed
step (steps not executed again, the work directory restored), and divergence detection."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.integration.cli_support import labd


def _events(home: Path, sid: str, kind: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "labd.db") as conn:
        return conn.execute("SELECT seq, src_seq, node_id, payload FROM events WHERE session_id = ? AND kind = ? "
                            "ORDER BY seq", (sid, kind)).fetchall()


def _counts(counter: Path) -> dict[str, int]:
    return {p.name: int(p.read_text()) for p in counter.iterdir()}


def _ended(c: Any, sid: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (lambda s: s if s["status"] in ("completed", "failed", "cancelled", "lost") else None)(
        c.session(sid)), timeout=timeout, interval=0.1, what=f"session {sid} ended")


def _second_step(c: Any, sid: str) -> dict[str, Any]:
    """The step node of planning_and_control's second planned step ("step 2: ...") in session ``sid``."""
    return next(s for s in c.session(sid)["steps"] if s["name"].startswith("step 2:") and s["kind"] == "step")


def test_resume_skips_completed_steps_and_restores_the_work_directory(shared_daemon, tmp_path: Path) -> None:
    """A 4-step workflow whose step 3 fails once: `labd checkpoints` lists steps 1-2 with their files and results;
    `resume` completes it; steps 1-2 ran once in all, step 3
    saw the files as step 2 left them (its failed run's writes undone), results of skipped steps restored;
    the history shows failed -> queued by the client; src_seq goes on gap-free after the first runner's."""
    counter = tmp_path / "counts"
    counter.mkdir()
    with shared_daemon.client() as c:
        sid = c.start("labd_testflows:durable_four", params={"counter": str(counter)})
        assert _ended(c, sid)["status"] == "failed"
        cps = c.checkpoints(sid)
        assert [cp["name"] for cp in cps] == ["one", "two"]
        table = labd("checkpoints", sid).stdout.splitlines()  # a header, then one row per step with its result
        assert table[0].split() == ["NODE", "STEP", "FILES", "SIZE", "NEW", "TOOK", "RESULT"]
        assert table[1].split()[1:3] == ["one", "1"] and table[1].rstrip().endswith("{'x': 1}")
        assert table[2].split()[1:3] == ["two", "2"] and table[2].rstrip().endswith("2")
        reply = c.resume(sid, reason="fixed the flaky step")
        assert reply["resumed"] and reply["from_status"] == "failed" and reply["steps_kept"] == 2
        s = c.wait(sid, timeout=60)  # follows past the first end (the SDK's wait after a resume)
        s = c.session(sid)
        assert s["status"] == "completed", s
        assert _counts(counter) == {"one": 1, "two": 1, "three": 2, "four": 1}
        result = _events(shared_daemon.home, sid, "session.finished")[-1][3]
        assert '"seen":{"a.txt":"two","sub/b.txt":"b"}' in result and '"two":2' in result
        hist = [(h["from_status"], h["to_status"], h["actor"]) for h in s["history"] if h["node_id"] is None]
        assert ("failed", "queued", "client") in hist and hist[-1][1] == "completed"
        assert any("fixed the flaky step" in (h["reason"] or "") for h in s["history"])
        src = [r[1] for r in _events_all(shared_daemon.home, sid)]
        assert src == sorted(src) and len(src) == len(set(src))  # one runner sequence, no duplicates
        assert len(_events(shared_daemon.home, sid, "session.continued")) == 1
        restored = _events(shared_daemon.home, sid, "checkpoint.restored")
        assert len(restored) == 1
        files = sorted(p.name for p in (shared_daemon.home / "sessions" / sid / "work").rglob("*.txt"))
        assert files == ["a.txt", "b.txt", "junk.txt"]
        objects = shared_daemon.home / "sessions" / sid / "checkpoints" / "objects"
        assert objects.is_dir()
        c.rm(sid)  # retention: checkpoints are events and files of the session directory, deleted with it
        wait_until(lambda: not objects.exists(), timeout=30, what="checkpoint objects removed")
        assert not _events(shared_daemon.home, sid, "step.checkpoint")


def _events_all(home: Path, sid: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "labd.db") as conn:
        return conn.execute("SELECT seq, src_seq FROM events WHERE session_id = ? AND src = 'r' ORDER BY seq",
                            (sid,)).fetchall()


def test_resume_refusals_and_divergence(shared_daemon, tmp_path: Path) -> None:
    """`resume` of a completed session is refused with a clear error; a workflow whose re-execution asks for
    another step than the record holds at a position fails with a step.diverged event, not a silent guess; a branch
    from a step the session lacks is `unknown_node` listing the steps it can branch from; a hypothesis too long and a
    number past 64 bits are refused saying so."""
    from labd.ipc import LabdError

    counter = tmp_path / "c"
    counter.mkdir()
    with shared_daemon.client() as c:
        done = c.start("demo.count", params={"n": 2})
        assert _ended(c, done)["status"] == "completed"
        with pytest.raises(LabdError) as err:
            c.resume(done)
        assert err.value.code == "not_resumable" and "completed" in str(err.value)
        sid = c.start("labd_testflows:durable_diverge", params={"counter": str(counter)})
        assert _ended(c, sid)["status"] == "failed"
        c.resume(sid)
        s = _ended(c, sid)
        assert s["status"] == "failed" and "diverged" in s["reason"], s["reason"]
        div = _events(shared_daemon.home, sid, "step.diverged")
        assert len(div) == 1 and '"expected":"first"' in div[0][3] and '"got":"other"' in div[0][3]
        for kwargs, code in (({"from_node": "no such step"}, "unknown_node"), ({"from_node": "first", "count": 0},
                                                                                  "bad_request")):
            with pytest.raises(LabdError) as err:
                c.branch(sid, **kwargs)
            assert err.value.code == code, err.value
        # the nodes it can branch from, as events.query and session.replay list a session's nodes
        steps = {n["node_id"] for n in c.dag(sid)["dag"]["nodes"] if n["kind"] != "agent"}
        with pytest.raises(LabdError) as err:
            c.branch(sid, from_node="no such step")
        assert steps and set(err.value.details["nodes"]) == steps and err.value.details["node"] == "no such step"
        # what is wrong is said: a hypothesis too long (it said "must be text"), a seq past 64 bits (">= 0")
        with pytest.raises(LabdError, match="at most 10,000 characters"):
            c.branch(sid, from_node="first", hypothesis="x" * 10_001)
        with pytest.raises(LabdError, match="'since' is 10+, past 64 bits"):  # refused before it is sent
            c.request("events.query", session=sid, since=10**22)
        with pytest.raises(LabdError, match="out of range"):  # a client that sends it as JSON does
            c.request("events.query", session=sid, since=float(10**22))


def test_branch_from_a_step_name_several_completed_steps_share_is_ambiguous(shared_daemon) -> None:
    """`branch --from iter` where a loop completed three steps named `iter`: refused as `ambiguous`, naming their
    node ids (it silently took the first); `--from <node id>` branches from the one meant."""
    from labd.ipc import LabdError

    with shared_daemon.client() as c:
        sid = c.start("labd_testflows:same_names", params={"n": 3})
        assert _ended(c, sid)["status"] == "completed"
        with pytest.raises(LabdError) as err:
            c.branch(sid, from_node="iter")
        ids = [s["node_id"] for s in c.session(sid)["steps"] if s["name"] == "iter"]
        assert err.value.code == "ambiguous" and len(ids) == 3
        assert all(i in err.value.message for i in ids)
        made = c.branch(sid, from_node=ids[1])
        child = made["sessions"][0]["session"] if "sessions" in made else made["session"]
        assert _ended(c, child)["status"] == "completed"


def _subtree_step(steps: list[dict[str, Any]]) -> dict[str, str | None]:
    parent = {s["node_id"]: s["parent_node"] for s in steps}
    return parent


def _within(node: str | None, ancestors: set[str], parent: dict[str, str | None]) -> bool:
    seen = set()
    while node is not None and node not in seen:
        if node in ancestors:
            return True
        seen.add(node)
        node = parent.get(node)
    return False


def test_deep_research_killed_midway_is_lost_then_resumed_without_repeating_llm_calls(daemon) -> None:
    """deep_research paused after its first checkpoint, its daemon and runner SIGKILLed (status lost after the
    restart); `labd resume` (the CLI)
    completes it: no step completes twice, and no LLM request after the resume belongs to a step that had
    completed before the kill (their calls were not repeated). The session's own policy rules (`--policy`)
    still govern the resumed runner: its LLM calls are decided by them. (A daemon of its own: it is killed.)"""
    import os
    import signal


    with daemon.client() as c:
        sid = c.start("deep_research", params={"subquestions": 2, "max_steps": 2},
                      policy=[{"name": "llm-allowed", "action": "llm", "effect": "allow"}])
        wait_until(lambda: c.events(sid, kinds=["step.checkpoint"])["events"], timeout=30, interval=0.01,
                   what="a first checkpoint")
        c.pause(sid, "test: hold it mid-way")
        wait_until(lambda: c.session(sid)["status"] == "paused", timeout=30, what="paused")
        pid = c.session(sid)["pid"]
    daemon.kill9()  # no daemon sees the runner die: the next one finds it gone and records it lost
    os.killpg(pid, signal.SIGKILL)
    daemon.start()
    with daemon.client() as c:
        assert _ended(c, sid)["status"] == "lost"
        kill_seq = c.session(sid)["last_seq"]
        before = {cp["node_id"] for cp in c.checkpoints(sid)}
        assert before
        out = labd("resume", sid, "--reason", "runner was killed", "--json")
        assert '"resumed": true' in out.stdout, out.stdout + out.stderr
        s = _ended(c, sid)
        assert s["status"] == "completed", s["reason"]
        steps = c.session(sid)["steps"]
        done = [st["name"] for st in steps if st["status"] == "completed" and st["kind"] != "agent"]
        assert len(done) == len(set(done)) and "synthesis" in done
        assert not [st for st in steps if st["status"] == "running"]  # the killed runner's open steps: interrupted
        parent = _subtree_step(steps)
        later = [e for e in c.events(sid, since=kill_seq, kinds=["llm.request"])["events"]]
        assert later, "the resumed run made the calls of the steps that had not completed"
        assert not [e for e in later if _within(e["node_id"], before, parent)]
        decided = [e["payload"] for e in c.events(sid, since=kill_seq, kinds=["policy.decision"])["events"]
                   if e["payload"]["action"] == "llm"]
        assert decided and all(p["rule"] == "llm-allowed" for p in decided), decided[:3]
        assert (daemon.home / "sessions" / sid / "work" / "report.md").exists()


FLAKY = """\
import os


def flaky(ctx, marker: str = ""):
    for i in range(3):
        with ctx.step(f"part {i}") as node:
            if i == 1 and not os.path.exists(marker):
                raise RuntimeError("transient failure")
            print(f"part {i} done")
            node.result = i
"""


def test_resume_and_branch_wait_for_the_sessions_they_continue(shared_daemon, tmp_path: Path) -> None:
    """`labd resume S --follow` prints what the continued run does (not the first run's output again) and exits 0
    when it completes; `labd resume S --wait` waits quietly and exits 1 when the continuation fails again, its
    final status on stderr; `labd branch --wait` likewise for every branch it started. Before, both only asked,
    and a script had to poll `labd show` for the end."""
    flows = tmp_path / "flaky.py"
    flows.write_text(FLAKY)
    marker = tmp_path / "marker"
    with shared_daemon.client() as c:
        first = c.start(f"{flows}:flaky", params={"marker": str(marker)})
        again = c.start(f"{flows}:flaky", params={"marker": str(tmp_path / "never")})
        assert _ended(c, first)["status"] == "failed" and _ended(c, again)["status"] == "failed"
    marker.write_text("now it works")
    out = labd("resume", first, "--follow")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "part 1 done\npart 2 done\n" in out.stdout and "part 0 done" not in out.stdout, out.stdout
    assert "resumed from failed (1 completed steps kept)" in out.stdout
    waited = labd("resume", again, "--wait")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert f"session {again} ended failed" in waited.stderr and "transient failure" in waited.stderr
    both = labd("resume", again, "--follow", "--json")
    assert both.returncode == 2 and "use --wait" in both.stderr
    ok = labd("branch", first, "--from", "part 1", "--wait")  # `labd branch --wait`: until every branch has ended
    assert ok.returncode == 0 and len(ok.stdout.split()) == 1, ok.stdout + ok.stderr
    bad = labd("branch", again, "--from", "part 1", "--count", "2", "--wait")
    kids = bad.stdout.split()
    assert bad.returncode == 1 and len(kids) == 2, bad.stdout + bad.stderr
    assert all(f"session {kid} ended failed" in bad.stderr for kid in kids), bad.stderr


def test_branch_planning_and_control_from_its_second_step_with_a_hypothesis(shared_daemon) -> None:
    """`branch --from <step 2> --hypothesis`: planning and step 1 are `reused` (no LLM request of theirs in the
    branch), the work directory is restored to exactly the parent's files at that point (same manifest, same
    file hashes), the hypothesis is in the recorded input of the re-executed step's agent, and the branch
    records its parent and branch node; two branches (--count 2) run."""
    with shared_daemon.client() as c:
        parent = c.start("planning_and_control", params={"max_steps": 3})
        assert _ended(c, parent)["status"] == "completed"
        second = _second_step(c, parent)
        reply = c.branch(parent, second["node_id"], hypothesis="the input is in Kelvin", count=2)
        assert reply["node"] == second["node_id"] and len(reply["sessions"]) == 2 and reply["reused"] >= 2
        kids = [s["session"] for s in reply["sessions"]]
        for kid in kids:
            assert _ended(c, kid)["status"] == "completed", c.session(kid)["reason"]
        kid = kids[0]
        row = c.session(kid)
        assert (row["parent_id"], row["origin"], row["branch_node"]) == (parent, "branch", second["node_id"])
        ksteps = row["steps"]
        by_name = {s["name"]: s for s in ksteps}
        assert by_name["planning"]["status"] == "reused"
        assert next(s for s in ksteps if s["name"].startswith("step 1:"))["status"] == "reused"
        assert [s["status"] for s in ksteps if s["name"].startswith("step 2:")] == ["completed"]
        requests = c.events(kid, kinds=["llm.request"], full=True)["events"]
        assert requests and not [e for e in requests if e["payload"]["agent"] in ("planner", "plan_reviewer")]
        # the work directory as the parent's was when step 2 started: the same manifest (content-addressed)
        before = [cp for cp in c.checkpoints(parent) if cp["seq"] < second["start_seq"]]
        restored = _events(shared_daemon.home, kid, "checkpoint.restored")
        assert len(restored) == 1 and f'"manifest":"{before[-1]["manifest"]}"' in restored[0][3]
        created = {e["payload"]["path"]: e["payload"]["sha256"] for e in c.events(parent, kinds=["file.created"])[
            "events"] if e["seq"] < second["start_seq"]}
        manifest = _seeded_files(shared_daemon.home, kid)
        assert created and all(manifest[p][0] == h for p, h in created.items())
        restored_files = {str(p.relative_to(work)): _sha(p) for work in [shared_daemon.home / "sessions" / kid / "work"]
                          for p in work.rglob("*") if p.is_file() and p.name in {q.rsplit("/", 1)[-1] for q in created}}
        assert restored_files == created  # the files the parent had then are still as they were (not rewritten)
        kid_cps = {cp["name"]: cp for cp in c.checkpoints(kid)}  # its record stands alone (for its own resume)
        assert kid_cps["planning"].get("reused") and kid_cps[by_name["planning"]["name"]]["result_inline"]
        hypothesis = [e for e in requests if "the input is in Kelvin" in str(e["payload"])]
        assert hypothesis and {e["payload"]["agent"] for e in hypothesis} == {"engineer"}


def _seeded_files(home: Path, sid: str) -> dict[str, Any]:
    """The work directory the daemon handed a branch's runner (resolved manifest: path -> [sha256, size, mode])."""
    import orjson

    return dict(orjson.loads((home / "sessions" / sid / "durable.seed.json").read_bytes())["files"])


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_branch_that_fails_resumes_without_running_its_reused_steps(shared_daemon, tmp_path: Path) -> None:
    """A branch (`labd branch`, the CLI) from step three reuses steps one and two; when its step three fails,
    `resume` of the branch
    skips them as well (its own record holds them) and completes: one and two ran once in all, across parent,
    branch and resume, and the branch's step three saw the parent's files as step two left them."""
    counter = tmp_path / "counts"
    counter.mkdir()
    with shared_daemon.client() as c:
        parent = c.start("labd_testflows:durable_four", params={"counter": str(counter), "fail_three": 2})
        assert _ended(c, parent)["status"] == "failed"
        import json


        out = labd("branch", parent, "--from", "three", "--instructions", "try again", "--json")
        assert out.returncode == 0, out.stderr
        kid = json.loads(out.stdout)["sessions"][0]["session"]
        assert _ended(c, kid)["status"] == "failed"  # step three's second run fails too
        c.resume(kid)
        assert c.wait(kid, timeout=60)["status"] == "completed"
        assert _counts(counter) == {"one": 1, "two": 1, "three": 3, "four": 1}
        result = _events(shared_daemon.home, kid, "session.finished")[-1][3]
        assert '"seen":{"a.txt":"two","sub/b.txt":"b"}' in result and '"two":2' in result


def _one_slot(home: Path) -> Path:
    """``home`` configured with ``max_sessions = 1`` (a second session waits in the run queue)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[daemon]\nmax_sessions = 1\n")
    return home


def _failed_then_blocked(c: Any, counter: Path) -> tuple[str, str]:
    """A durable_four session whose step three failed (its next run sleeps 1.5 s in step three), and a ticker
    holding the only run slot: (failed session, blocker)."""
    counter.mkdir()
    sid = c.start("labd_testflows:durable_four", params={"counter": str(counter), "fail_three": 1,
                                                         "sleep_three": 1.5})
    assert _ended(c, sid)["status"] == "failed"
    blocker = c.start("labd_testflows:ticker", params={"n": 400, "delay": 0.05})
    wait_until(lambda: c.session(blocker)["status"] == "running", timeout=30, what="blocker running")
    return sid, blocker


@pytest.mark.slow
def test_daemon_sigkill_during_resume_duplicates_nothing_and_completes_after_restart(isolated_env: Path,
                                                                                     tmp_path: Path) -> None:
    """The daemon is SIGKILLed twice while resumes run: once while the resumed session waits in the run queue
    (max_sessions = 1, another session holds the slot), once while its new runner is inside step 3. After each
    restart the resume goes on and completes: steps 1-2 ran once, each step completed once, one runner
    sequence without duplicates, one session.continued per resume. (A daemon of its own: configured, and killed.)"""
    import psutil

    from tests.conftest import running_daemon

    counter = tmp_path / "counts"
    with running_daemon(_one_slot(isolated_env)) as d:
        with d.client() as c:
            sid, blocker = _failed_then_blocked(c, counter)
            c.resume(sid)
            assert c.session(sid)["status"] == "queued"
        d.kill9()
        d.start()
        with d.client() as c:
            assert c.session(sid)["status"] == "queued"  # re-queued by the new daemon, still a continuation
            c.kill(blocker)
            wait_until(lambda: (counter / "three").exists() and (counter / "three").read_text() == "2",
                       timeout=60, what="step three running again")
            pid = c.session(sid)["pid"]
        d.kill9()
        d.start()
        with d.client() as c:
            s = _ended(c, sid, timeout=90)
            assert s["status"] == "completed", s["reason"]
        assert _counts(counter) == {"one": 1, "two": 1, "three": 2, "four": 1}
        names = [st["name"] for st in s["steps"] if st["status"] == "completed"]
        assert sorted(names) == ["four", "one", "three", "two"]
        src = [r[1] for r in _events_all(d.home, sid)]
        assert src == sorted(src) and len(src) == len(set(src))
        assert len(_events(d.home, sid, "session.continued")) == 1
        def runner_gone() -> bool:  # the end is recorded before the process is gone; a zombie counts as gone
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_until(runner_gone, timeout=30, what="the resumed runner to exit")


@pytest.mark.slow
def test_daemon_sigkill_during_branch_duplicates_nothing_and_completes_after_restart(isolated_env: Path,
                                                                                     tmp_path: Path) -> None:
    """The daemon is SIGKILLed twice while a branch runs: once while the branch waits in the run queue
    (max_sessions = 1, another session holds the slot), once while its runner is inside step three. After each
    restart the branch goes on and completes: exactly one branch session exists, steps one and two ran once in
    all (the parent's runs; the branch reused them), one runner sequence without duplicates. (A daemon of its own:
    configured, and killed.)"""
    import psutil

    from tests.conftest import running_daemon

    counter = tmp_path / "counts"
    with running_daemon(_one_slot(isolated_env)) as d:
        with d.client() as c:
            parent, blocker = _failed_then_blocked(c, counter)
            kid = c.branch(parent, "three", instructions="once more")["sessions"][0]["session"]
            wait_until(lambda: c.session(kid)["status"] == "queued", timeout=30, what="the branch queued")
        d.kill9()
        d.start()
        with d.client() as c:
            assert c.session(kid)["status"] == "queued"  # re-queued by the new daemon, still a branch
            c.kill(blocker)
            wait_until(lambda: (counter / "three").read_text() == "2", timeout=60, what="the branch's step three")
            pid = c.session(kid)["pid"]
        d.kill9()
        d.start()
        with d.client() as c:
            s = _ended(c, kid, timeout=90)
            assert s["status"] == "completed", s["reason"]
            family = [x for x in c.sessions(limit=50) if x.get("parent_id") == parent]
            assert [x["id"] for x in family] == [kid]
        assert _counts(counter) == {"one": 1, "two": 1, "three": 2, "four": 1}
        src = [r[1] for r in _events_all(d.home, kid)]
        assert src == sorted(src) and len(src) == len(set(src))
        assert s["parent_id"] == parent and s["origin"] == "branch"

        def runner_gone() -> bool:
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_until(runner_gone, timeout=30, what="the branch's runner to exit")


def test_a_branch_of_a_branch_from_a_step_it_reused_starts_from_that_steps_files(shared_daemon, tmp_path: Path) -> None:
    """Three steps each append a line to ``acc.txt``. A branch B1 from step s2 reuses s0 and s1; a branch B2 of
    B1 from s1 reuses s0 only, and must start from the files as they were after s0 (B1's checkpoint of s0 is the
    parent's), ending with the same file as a branch of the parent from s1. Before, every step a branch reused was
    checkpointed with the files restored at the branch point, so B2 started from s1's files and ran s1 again on
    them: ``0 1 1 2`` (an exploratory test found it)."""
    flows = tmp_path / "acc.py"
    flows.write_text("def acc(ctx):\n"
                     "    for i in range(3):\n"
                     "        with ctx.step(f's{i}'):\n"
                     "            with open('acc.txt', 'a') as f:\n"
                     "                f.write(f'{i}\\n')\n")
    with shared_daemon.client() as c:
        parent = c.start(f"{flows}:acc")
        assert _ended(c, parent)["status"] == "completed"
        b1 = c.branch(parent, "s2")["sessions"][0]["session"]
        assert _ended(c, b1)["status"] == "completed"
        b2 = c.branch(b1, "s1")["sessions"][0]["session"]
        direct = c.branch(parent, "s1")["sessions"][0]["session"]
        for sid in (b2, direct):
            assert _ended(c, sid)["status"] == "completed"
        work = {sid: Path(c.session(sid)["workdir"]) / "acc.txt" for sid in (parent, b1, b2, direct)}
        assert {sid: p.read_text() for sid, p in work.items()} == dict.fromkeys(work, "0\n1\n2\n")
        files = {cp["name"]: cp["files"] for cp in c.checkpoints(b1)}  # what B1 records of the steps it reused
        assert files == {"s0": 1, "s1": 1, "s2": 1}, files


def test_a_replay_of_a_branch_that_reused_planned_steps_is_served_whole_from_the_record(shared_daemon) -> None:
    """planning_and_control branched from its second step reuses the planning and step 1, a *planned* step (its node
    in the branch has the id the reused plan gave it, not the parent's). A replay of the branch reuses them too and
    serves every LLM response of the branch from the record: it completes having called no model. (Once, when a
    replay ran the reused steps again, the reused planned step's calls were not found: ReplayMiss.)"""
    with shared_daemon.client() as c:
        parent = c.start("planning_and_control", params={"max_steps": 2})
        assert _ended(c, parent)["status"] == "completed"
        second = _second_step(c, parent)
        kid = c.branch(parent, second["node_id"])["sessions"][0]["session"]
        assert _ended(c, kid)["status"] == "completed"
        replay = c.replay(kid)
        final = _ended(c, replay, timeout=120)
        assert final["status"] == "completed", final.get("reason")
        live = [e for e in c.history(replay, kinds=["llm.response"]) if not e["payload"].get("replayed")]
        assert not live, f"{len(live)} LLM responses were not served from the record"


def test_a_session_that_failed_in_its_first_step_can_be_branched_with_other_params(shared_daemon) -> None:
    """A session that failed in its first step recorded no checkpoint, and there is nothing before that step to
    reuse: a branch from it starts the workflow again with the changed params (0 steps reused). It was refused
    (``no_checkpoint``), which left no way to run a failed session again with other params."""
    with shared_daemon.client() as c:
        sid = c.start("demo.fail", params={"message": "first try"})
        assert _ended(c, sid)["status"] == "failed"
        first = next(n for n in c.dag(sid)["dag"]["nodes"] if n["kind"] == "step")
        r = c.branch(sid, first["node_id"], params={"message": "second try"})
        assert r["reused"] == 0
        kid = r["sessions"][0]["session"]
        assert _ended(c, kid)["status"] == "failed" and "second try" in c.session(kid)["reason"]
        assert c.session(kid)["params"] == {"message": "second try"}


def test_a_branch_shows_the_results_of_the_steps_it_reused_as_its_parent_does(shared_daemon, tmp_path: Path) -> None:
    """`labd checkpoints` of a branch shows a reused step's result as the parent's shows it (``10``), not as the
    stored pickle's base64 (the branch's checkpoint lacked the parent's preview)."""
    flows = tmp_path / "res.py"
    flows.write_text("def res(ctx):\n"
                     "    for i in range(2):\n"
                     "        with ctx.step(f'r{i}') as node:\n"
                     "            node.result = (i + 1) * 10\n")
    with shared_daemon.client() as c:
        parent = c.start(f"{flows}:res")
        assert _ended(c, parent)["status"] == "completed"
        branch = c.branch(parent, "r1")["sessions"][0]["session"]
        assert _ended(c, branch)["status"] == "completed"
    shown = {sid: labd("--home", str(shared_daemon.home), "checkpoints", sid).stdout for sid in (parent, branch)}
    row = {sid: next(line for line in out.splitlines() if " r0 " in f" {line} ") for sid, out in shown.items()}
    assert " 10" in row[branch] and "gAV" not in row[branch], shown[branch]
    logs = labd("--home", str(shared_daemon.home), "logs", branch).stdout + labd("--home", str(shared_daemon.home),
                                                                                   "logs", branch).stderr
    assert "r0 reused from the record" in logs and "✗" not in logs, logs  # was "✗ n1 r0 reused in 0ms"


def test_a_step_open_when_its_session_is_killed_is_interrupted_not_running_for_ever(shared_daemon) -> None:
    """`labd kill` while a step runs: once the session has ended, that step reads ``interrupted`` (with its end
    time), not ``running`` for ever in `show`, the DAG and compare; a resume then runs it again. Before, only a
    resume marked it (an exploratory test found it)."""
    with shared_daemon.client() as c:
        sid = c.start("demo.count", params={"n": 3, "delay": 30})
        wait_until(lambda: any(s["status"] == "running" for s in c.session(sid)["steps"]), timeout=60,
                   what="a step running")
        c.kill(sid)
        assert _ended(c, sid)["status"] in ("cancelled", "failed")
        steps = c.session(sid)["steps"]
        assert not [s for s in steps if s["status"] in ("running", "paused")], steps
        (open_step,) = [s for s in steps if s["status"] == "interrupted"]
        assert open_step["ended_at"] is not None
        c.resume(sid)
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="the resumed session running")
        c.stop(sid)
        _ended(c, sid)


def test_resume_and_branch_of_a_session_of_this_machine_check_its_cpus_against_this_machine(shared_daemon) -> None:
    """A session that ran here, resumed or branched with more CPUs than this machine has, is refused
    (``bad_limits``), as its start would have been; the refused resume leaves the session resumable. (The bound
    for a Ray session is its cluster's: a resume checks its limits before it has read where the session ran, and
    accepted any local session's CPUs up to 1024 cores.)"""
    import os

    from labd.ipc import LabdError

    too_many = f"{((os.cpu_count() or 1) + 1) * 100}%"
    with shared_daemon.client() as c:
        sid = c.start("demo.count", params={"n": 2, "delay": 0.0})
        assert _ended(c, sid)["status"] == "completed"
        with pytest.raises(LabdError) as err:
            c.branch(sid, "count 2", limits={"cpu": too_many})
        assert err.value.code == "bad_limits", err.value
        failed = c.start("demo.fail")
        assert _ended(c, failed)["status"] == "failed"
        for kwargs in ({"limits": {"cpu": too_many}}, {"limits": {"cpu": too_many}, "budget": 5.0}):
            with pytest.raises(LabdError) as err:
                c.resume(failed, **kwargs)
            assert err.value.code == "bad_limits" and "cpu" in str(err.value).lower(), err.value
        assert c.resume(failed, limits={"cpu": "50%"})["resumed"] is True
        assert _ended(c, failed)["status"] == "failed"


def test_checkpoints_show_a_step_that_added_no_bytes_as_nothing_new(shared_daemon, tmp_path: Path) -> None:
    """`labd checkpoints`: the NEW column of a step that wrote nothing is "-" (it read "+-"); a step that wrote
    bytes shows them with "+"."""
    flows = tmp_path / "quiet_flows.py"
    flows.write_text("import pathlib\n\ndef flow(ctx):\n    with ctx.step('write'):\n"
                     "        pathlib.Path('a.txt').write_text('abc')\n    with ctx.step('idle'):\n        pass\n")
    r = labd("run", f"{flows}:flow")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    with shared_daemon.client() as c:
        assert _ended(c, sid)["status"] == "completed"
    rows = {line.split()[1]: line.split() for line in labd("checkpoints", sid).stdout.splitlines()[1:]}
    assert rows["write"][4] == "+3B" and rows["idle"][4] == "-", rows


def test_the_result_of_a_resumed_session_is_its_completed_runs(shared_daemon, tmp_path: Path) -> None:
    """``Client.result`` of a session that failed and was resumed to completion returns the completed run's value;
    it read the first ``session.finished`` (the failed run's, with no result) and raised ``ResultMissing``. A
    session failed again after a resume reports that run's error, not the first one's."""
    counter = tmp_path / "counts"
    counter.mkdir()
    with shared_daemon.client() as c:
        sid = c.start("labd_testflows:durable_four", params={"counter": str(counter), "fail_three": 2})
        assert c.wait(sid, timeout=60)["status"] == "failed"
        c.resume(sid)
        assert c.wait(sid, timeout=60)["status"] == "failed"
        with pytest.raises(Exception, match="step three fails on run 2"):
            c.result(sid)
        c.resume(sid)
        assert c.wait(sid, timeout=60)["status"] == "completed"
        assert c.result(sid)["two"] == 2


def test_a_branch_with_no_reply_says_it_may_still_be_made_once(daemon) -> None:
    """A branch that gets no reply (here, the daemon stopped with SIGSTOP so the client times out, after its keyed
    retry) says it may still be made, once; once the daemon goes on, both attempts made one branch, not two (a review
    made 4 branches out of 2 by retrying an unkeyed branch)."""
    import os
    import signal

    from labd.ipc import LabdError

    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 2, "delay": 0})
        assert _ended(c, sid)["status"] == "completed"
    assert daemon.proc is not None
    with daemon.client(timeout=1.0) as c:
        c.ping()  # connected while the daemon answers: the first attempt reaches it
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(LabdError) as err:
                c.branch(sid, "count 2")
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
    assert err.value.code == "timeout" and "one idempotency key" in err.value.message, err.value
    with daemon.client() as c:
        wait_until(lambda: [s for s in c.sessions(status=[]) if s.get("parent_id") == sid], what="the branch")
        assert len([s for s in c.sessions(status=[]) if s.get("parent_id") == sid]) == 1


def test_a_branch_from_an_agents_name_says_agent_turns_are_no_branch_point(shared_daemon) -> None:
    """`labd branch S --from engineer`, where engineer is an agent whose turns are nodes of the session: refused as
    before (`unknown_node`), now saying that the name is an agent's and to branch from the step its turns ran in (a
    review read "has no node 'engineer'" beside a DAG full of engineer turns)."""
    from labd.ipc import LabdError

    with shared_daemon.client() as c:
        sid = c.start("one_shot", params={"task": "Step 1 of 1: sum the squares"})
        assert _ended(c, sid)["status"] == "completed"
        agents = {n.get("agent") for n in c.dag(sid)["dag"]["nodes"] if n["kind"] == "agent"}
        assert "engineer" in agents, agents
        with pytest.raises(LabdError) as err:
            c.branch(sid, "engineer")
    assert err.value.code == "unknown_node" and "names agent turns" in err.value.message, err.value
