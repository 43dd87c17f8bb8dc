"""Unit tests for daemon/cgroups.py: where a daemon makes its sessions' groups (detection on stand-in trees, for the
layouts this machine does not have) and what it writes into a session's group. The kernel's side is tested for real
in tests/integration/test_cgroups.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from labd.daemon.cgroups import DAEMON_LEAF, SessionCgroups, base_name, detect


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))

    info = warning


def _v2(tmp_path: Path, own: str, controllers: str = "cpu memory pids") -> tuple[Path, str, str]:
    """A stand-in unified hierarchy: the mount, /proc/self/cgroup and /proc/self/mounts texts."""
    mount = tmp_path / "cg"
    d = mount / own.lstrip("/")
    d.mkdir(parents=True)
    bases = {d.parent / base_name(tmp_path / "home"), mount / base_name(tmp_path / "home")}
    for g in {d, d.parent, mount, *bases}:  # what the kernel makes with each group: its interface files
        g.mkdir(exist_ok=True)
        (g / "cgroup.controllers").write_text(controllers + "\n")
        (g / "cgroup.subtree_control").write_text("")
    return mount, f"0::{own}\n", f"cgroup2 {mount} cgroup2 rw,nosuid 0 0\n"


def test_v2_a_delegated_leaf_puts_sessions_beside_the_daemon(tmp_path: Path) -> None:
    """A daemon in ``<delegated>/labd-daemon`` (systemd DelegateSubgroup=): the sessions' base is a sibling of its
    leaf, with memory and pids enabled on the delegated group and on the base, for the sessions beneath."""
    mount, proc, mounts = _v2(tmp_path, f"/system.slice/labd.service/{DAEMON_LEAF}")
    found, said = detect(tmp_path / "home", proc_cgroup=proc, mounts=mounts, euid=1000)
    assert said == "cgroup v2 (memory, pids)"
    [h] = found
    assert h.base.parent == mount / "system.slice/labd.service" and h.base.name.startswith("labd-")
    assert h.mount == mount and h.controllers == ("memory", "pids")
    assert (h.base.parent / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (h.base / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_v2_elsewhere_needs_root_and_then_uses_the_top(tmp_path: Path) -> None:
    """Not in a labd-daemon leaf: an unprivileged daemon makes no group (the no-internal-processes rule forbids
    enabling controllers in its own group) and says how to get them; as root, the sessions go under the top."""
    mount, proc, mounts = _v2(tmp_path, "/user.slice/session-3.scope")
    found, said = detect(tmp_path / "home", proc_cgroup=proc, mounts=mounts, euid=1000)
    assert found == [] and "DelegateSubgroup=labd-daemon" in said
    found, said = detect(tmp_path / "home", proc_cgroup=proc, mounts=mounts, euid=0)
    assert [h.base.parent for h in found] == [mount] and said.startswith("cgroup v2")


def test_v2_without_the_controllers_says_which_it_has(tmp_path: Path) -> None:
    """A delegated group that offers no memory controller: no groups, and the reason lists what is there."""
    _, proc, mounts = _v2(tmp_path, f"/x/{DAEMON_LEAF}", controllers="cpu pids")
    found, said = detect(tmp_path / "home", proc_cgroup=proc, mounts=mounts, euid=0)
    assert found == [] and "offers cpu pids" in said


def test_v1_uses_the_daemons_own_group_in_each_hierarchy(tmp_path: Path) -> None:
    """cgroup v1 with separate memory and pids hierarchies: one base under the daemon's own group in each."""
    for c in ("memory", "pids"):
        (tmp_path / c / "box").mkdir(parents=True)
    mounts = (f"cgroup {tmp_path}/memory cgroup rw,memory 0 0\ncgroup {tmp_path}/pids cgroup rw,pids 0 0\n"
              "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    found, said = detect(tmp_path / "home", proc_cgroup="4:memory:/box\n8:pids:/box\n0::/\n", mounts=mounts)
    assert said == "cgroup v1 (memory, pids)"
    assert [(h.controllers, h.base.parent) for h in found] == [(("memory",), tmp_path / "memory/box"),
                                                               (("pids",), tmp_path / "pids/box")]


def test_off_and_missing_hierarchies(tmp_path: Path) -> None:
    """``cgroups = "off"`` makes none; a machine with neither usable layout makes none and says why."""
    assert detect(tmp_path, "off") == ([], 'off: [daemon] cgroups = "off"')
    found, said = detect(tmp_path, proc_cgroup="4:memory:/\n", mounts=f"cgroup {tmp_path} cgroup rw,memory 0 0\n")
    assert found == [] and said.startswith("unavailable")


def _creating_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in tree has no interface files until written (the kernel makes them with each group)."""
    monkeypatch.setattr("labd.daemon.cgroups._write", lambda path, text: Path(path).write_text(text))


@pytest.mark.parametrize(("memory", "tasks", "expect"), [
    (150 << 20, 256, {"memory.max": str(150 << 20), "memory.swap.max": "0", "memory.oom.group": "1",
                      "pids.max": "256"}),
    (None, None, {"pids.max": "max"}),  # no memory limit: the new group's own "max" is left as it is
])
def test_a_v2_session_group_gets_its_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory: int | None,
                                            tasks: int | None, expect: dict[str, str]) -> None:
    """A session's v2 group: memory.max is its memory limit (no swap beside it), the whole group goes on an OOM kill,
    pids.max is the daemon's session_tasks; the runner is told the group's cgroup.procs to join, and the group made
    ahead for the next runner (with the task bound already) is the one the next session gets. Without limits:
    nothing written but "max" for the tasks (a new group's memory is counted, not bounded)."""
    _creating_writes(monkeypatch)
    _, proc, mounts = _v2(tmp_path, f"/d/{DAEMON_LEAF}")
    found, _ = detect(tmp_path / "home", proc_cgroup=proc, mounts=mounts, euid=0)
    cg = SessionCgroups(found, tasks, _Log())
    joins, ahead = cg.create("s1", memory)
    assert joins is not None and ahead is not None and joins != ahead
    cg.make_ahead()  # the launcher, once the spec is sent
    group = Path(joins[0]).parent
    assert group.parent == found[0].base
    assert {name: (group / name).read_text() for name in expect} == expect
    assert (Path(ahead[0]).parent / "pids.max").read_text() == expect["pids.max"]
    assert cg.has("s1")
    assert cg.create("s2", memory)[0] == ahead  # the next session gets the group made ahead


def test_a_group_whose_limit_cannot_be_set_is_logged_and_the_session_goes_on(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting the memory limit fails (the kernel refuses a limit below what the group holds): the runner is told to
    join no group (the /proc monitor alone holds its memory), a warning names the session, the group stays the
    session's (a spare already in it is released with it at the end), and the next session still gets one."""
    def refuse_memory(path: Path, text: str) -> None:
        if Path(path).name == "memory.max":
            raise OSError(16, "Device or resource busy")
        Path(path).write_text(text)

    monkeypatch.setattr("labd.daemon.cgroups._write", refuse_memory)
    _, proc, mounts = _v2(tmp_path, f"/d/{DAEMON_LEAF}")
    found, _ = detect(tmp_path / "home", proc_cgroup=proc, mounts=mounts, euid=0)
    log = _Log()
    cg = SessionCgroups(found, 4096, log)
    joins, ahead = cg.create("s2", 1 << 30)
    assert joins is None and ahead is not None and cg.has("s2")
    cg.make_ahead()
    assert [kw.get("session_id") for _, kw in log.lines] == ["s2"]
    monkeypatch.setattr("labd.daemon.cgroups._write", lambda path, text: Path(path).write_text(text))
    assert cg.create("s3", 1 << 30)[0] == ahead and cg.has("s3")


def test_breach_reads_the_kernels_oom_kill_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose group's memory.events counts an OOM kill is a memory breach held by the kernel, measured at
    the kernel's peak; with none, no breach."""
    _creating_writes(monkeypatch)
    _, proc, mounts = _v2(tmp_path, f"/d/{DAEMON_LEAF}")
    found, _ = detect(tmp_path / "home", proc_cgroup=proc, mounts=mounts, euid=0)
    cg = SessionCgroups(found, 4096, _Log())
    joins, _ = cg.create("s3", 100 << 20)
    assert joins is not None
    group = Path(joins[0]).parent
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\n")
    assert cg.breach("s3", 100 << 20) is None
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\n")
    (group / "memory.peak").write_text(str(100 << 20))
    assert cg.breach("s3", 100 << 20) == {"limit": "memory", "measured": 100 << 20, "max": 100 << 20,
                                          "unit": "bytes", "action": "kill", "enforced_by": "cgroup", "oom_kills": 2}
