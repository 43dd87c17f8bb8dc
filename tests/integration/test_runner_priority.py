"""[daemon] runner_nice: the daemon starts each runner at that niceness, so that session code yields the CPU to
the daemon's recording when both want it (docs/design.md, "Event path end to end")."""

from __future__ import annotations

import os
from pathlib import Path

from labd.daemon.priority import group_nice
from labd.ipc import Client
from tests.conftest import DaemonProc, running_daemon, wait_until


def runner_of(c: Client, sid: str) -> int:
    return int(wait_until(lambda: c.session(sid).get("pid"), timeout=30, what="the runner's pid"))


def autogroup(pid: int) -> str | None:
    """The name of a process's autogroup; None without autogroups or in the root one (the kernel leaves it empty)."""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except (OSError, IndexError):
        return None


def nices(pid: int) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")}


def test_runners_run_the_configured_steps_below_the_daemon_and_0_at_its_level(isolated_env: Path) -> None:
    """With runner_nice = 15, a session's runner (every thread, and its session's autogroup where the kernel has
    them) runs 15 nice values below the daemon (capped at 19) while the daemon keeps its own; with runner_nice = 0
    (the default) the runner runs at the daemon's nice value (inherited; nothing is changed)."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    for configured in (15, 0):
        (isolated_env / "config.toml").write_text(f"[daemon]\nrunner_nice = {configured}\n")
        with running_daemon(isolated_env) as d, d.client() as c:
            daemon_pid = int(c.status()["pid"])
            own = os.getpriority(os.PRIO_PROCESS, daemon_pid)
            own_group = group_nice(daemon_pid)  # None without autogroups or in the root one (e.g. a container)
            sid = c.start("demo.sleep", params={"seconds": 60})
            pid = runner_of(c, sid)
            assert nices(pid) == {min(19, own + configured)}
            if own_group is not None and group_nice(pid) is not None and configured:
                assert group_nice(pid) == min(19, own_group + configured)
            assert os.getpriority(os.PRIO_PROCESS, daemon_pid) == own
            c.stop(sid)


def test_ingest_counts_what_its_time_went_to(daemon: DaemonProc) -> None:
    """daemon.status counters say how often the ingest loop turned, how long it waited in its poll and how many
    batches it wrote in how long (what scripts/bench_events.py reads); they grow with a session's events."""
    with daemon.client() as c:
        before = c.status()["counters"]
        sid = c.start("demo.events", params={"n": 20_000})
        wait_until(lambda: c.session(sid)["status"] == "completed", timeout=60, what="the session's end")
        after = c.status()["counters"]
    grew = {k: after.get(k, 0) - before.get(k, 0)
            for k in ("ingest.passes", "ingest.idle_us", "ingest.batches", "ingest.write_us", "events_persisted")}
    assert grew["events_persisted"] >= 20_000
    assert grew["ingest.passes"] >= grew["ingest.batches"] >= 20_000 // 7_000
    assert grew["ingest.idle_us"] > 0 and grew["ingest.write_us"] > 0


def test_runners_share_one_scheduling_group_apart_from_the_daemon(daemon: DaemonProc) -> None:
    """Each runner leads its own process group (stop/kill reach its tree) but stays in the template's session, so
    with autogroup scheduling all runners are one group that weighs as much as the daemon's, not one group each
    (4 busy runners left the ingest thread waiting for a CPU a third of the time: docs/design.md)."""
    with daemon.client() as c:
        template = int(c.status()["template_pid"])
        daemon_pid = int(c.status()["pid"])
        sids = [c.start("demo.sleep", params={"seconds": 60}) for _ in range(2)]
        pids = [runner_of(c, sid) for sid in sids]
        for pid in pids:
            assert os.getpgid(pid) == pid
            assert os.getsid(pid) == os.getsid(template) != pid
        assert os.getsid(daemon_pid) != os.getsid(template)
        groups = {autogroup(pid) for pid in [*pids, template]} - {None}
        assert len(groups) <= 1  # one group for the template and every runner (where the kernel has autogroups)
        for sid in sids:
            c.stop(sid)
