"""The warm template (zygote): a process that has imported the runner stack and forks runners on request.

Started once by the daemon as ``python -m labd.runner.template``. It imports everything a runner needs,
freezes the GC generations (so children do not unshare ~28 MiB on their first collection), and then
holds **no sockets, no threads and no session state**: ZeroMQ contexts cannot survive a fork.

Protocol (JSON lines; the daemon writes requests on our stdin, we answer on our stdout):

- ``{"op": "spawn", "req": R, "spec": {...}}`` -> ``{"op": "spawned", "req": R, "pid": P, "create_time": T | null,
  "via": "spare" | "fork"}`` (``create_time`` is known when a spare took the spec: read when it was forked)
- ``{"op": "inspect", "req": R, "workflow": W, "params": {...}, "path": [dirs], "confine": {...} | null}`` ->
  ``{"op": "inspected", "req": R, "ok": bool, "code"?, "message"?, "details"?}`` (resolved in a throwaway child
  confined as a runner, so importing user code never touches the template or the daemon's files; answered when
  the child is done, in any order: spawns and other checks go on meanwhile; :mod:`labd.runner.checks`, which keeps
  one checker child forked ahead)
- unsolicited: ``{"op": "exited", "pid": P, "exit_code": C | null, "signal": S | null, "cpu": seconds}`` (user +
  system CPU of the child and the descendants it reaped, from ``wait4``); ``{"op": "forked",
  "pid": P}`` for every child it forks (runner, spare, checker, check): the monitor takes any other child of the
  template for an escapee (daemon/escapees.py)
- ``{"op": "ready", "pid": P, "clone_filter": "on" | "unavailable: ..."}`` once, when it is ready

End of stdin (the daemon went away): the template closes its spare and checker, waits until its runners have ended
(see :func:`_outlive_runners`), then exits; runners live on.

Spare runner (``LABD_SPARE_RUNNERS``, default 1; 0 = off): the template keeps one pre-forked child that has
done every session-independent step (:mod:`labd.runner.spare`) and waits on a private pipe. A spawn hands
the spec to it (no fork on the request's path); the next spare is forked :data:`SPARE_DELAY_S` later, so
its fork and warm-up do not compete with the runner that just started. Only a spare that has finished its
warm-up (one byte on its ready pipe) is handed a spec; otherwise, or without a spare, a spawn forks.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import json
import os
import select
import signal
import sys
import time
from typing import Any

from setproctitle import setproctitle

from labd.ipc.units import shortened
from labd.runner.checks import CHECKER_DELAY_S, Check, Checker, end_group, fork_check, fork_checker, unreaped
from labd.runner.pipes import write_all
from labd.runner.process_setup import keep_in_tree, limit_files_from_env

#: imported before any fork so every runner starts warm
PRELOAD = ["zmq", "orjson", "structlog", "psutil", "labd.runner.session", "labd.runner.workflows.demo",
           "labd.runner.agents", "labd.runner.workflows.planning", "labd.runner.workflows.one_shot",
           "labd.runner.workflows.deep_research"]


def _set_title(title: str) -> None:
    """Name this process in ps/htop (``labd: study-1 (mypkg.flows:study)``) instead of ``python -m ...``."""
    setproctitle(title[:200])


def _write(out_fd: int, obj: dict[str, Any]) -> None:
    try:
        write_all(out_fd, (json.dumps(obj) + "\n").encode())
    except BrokenPipeError:
        # The daemon is gone (killed while we reaped a child or forked a spare): the loop reads end of file on its
        # input next and outlives the runners. Raising here ended the template at once, orphaning the runners'
        # process groups: the kernel sends SIGHUP to an orphaned group with a stopped member, which killed a session
        # stopped for its CPU quota (test_a_runner_left_stopped_by_a_dead_daemon_is_continued_on_adoption, rarely).
        pass


def _reap(out_fd: int, spare: int | None = None) -> bool:
    """Report ended children to the daemon; True if ``spare`` (the unused spare's pid) was among them. Its end is
    reported too: it ran no session (no session has its pid), but the daemon counts it among the template's
    children until it hears of its exit."""
    spare_died = False
    while True:
        try:  # which child ended, without reaping it: a checker's group is killed while its pid is still its own
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return spare_died
        if ended is None or ended.si_pid == 0:
            return spare_died
        end_group(ended.si_pid, reaping=True)
        pid, status, usage = os.wait4(ended.si_pid, 0)
        spare_died = spare_died or pid == spare
        # CPU seconds of the child and of the descendants it reaped (a runner reaps its session's processes)
        cpu = round(usage.ru_utime + usage.ru_stime, 3)
        if os.WIFSIGNALED(status):
            _write(out_fd, {"op": "exited", "pid": pid, "exit_code": None, "signal": os.WTERMSIG(status), "cpu": cpu})
        else:
            _write(out_fd, {"op": "exited", "pid": pid, "exit_code": os.waitstatus_to_exitcode(status),
                            "signal": None, "cpu": cpu})


def _fork_child(in_fd: int, out_fd: int, wake_fds: tuple[int, int], job: Any, close: tuple[int, ...] = ()) -> int:
    """Fork; in the child, shed the template's fds (and ``close``: a spare's pipe, which must stay the
    template's alone) and signal setup, run ``job`` and exit."""
    pid = os.fork()
    if pid:
        # The child makes itself a group leader too; whichever runs first wins, so its group exists before we
        # report its pid (the daemon may signal the group at once: a stop right after the start).
        try:
            os.setpgid(pid, pid)
        except OSError:  # it already exited (ESRCH)
            pass
        _write(out_fd, {"op": "forked", "pid": pid})  # any other child of ours is an escapee (daemon/escapees.py)
        return pid
    # --- child ---
    try:
        # Own process group (signals to the group reach the whole runner tree), but not a session of its own:
        # with autogroup scheduling every session is a scheduling group that weighs as much as the daemon's,
        # so N busy runners outvoted the daemon's recording N to 1. All runners stay in the template's group
        # and together weigh as one against the daemon (docs/design.md, "Runners share one scheduling group").
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        for fd in (*wake_fds, in_fd, *close):
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDWR)  # fd 0 itself when in_fd was 0, just closed
        os.dup2(devnull, 0)
        os.dup2(devnull, out_fd)  # drop the template's reply pipe without freeing fd 1 for reuse
        if devnull not in (0, out_fd):
            # Closing it when it *is* fd 0 left stdin closed, and the capture's next pipe took fd 0: a session
            # reading stdin read its own output back (lost from the record) or waited on it for ever.
            os.close(devnull)
        # The GC stays frozen in the child: objects inherited from the template are never scanned, so
        # the first full collection neither takes ~65 ms nor unshares ~27 MiB (docs/benchmarks.md).
        job()
    finally:
        os._exit(1)
    return 0  # pragma: no cover


#: fork the next spare this long after a launch: not while the runner that just started sets itself up
SPARE_DELAY_S = 0.05
#: after a spare died unused (killed, crashed in its warm-up), wait this long before the next one
SPARE_RETRY_S = 1.0
SPEC_PIPE_SIZE = 1 << 20  # a spec of up to this size is handed over without waiting for the spare to read
#: an unused spare or checker is replaced this often: its prepared Landlock rules hold every file they grant, so a
#: file deleted beside labd's home kept its space for as long as the daemon ran (docs/security.md)
RENEW_S = shortened(300.0, "LABD_SPARE_RENEW_S", floor=1.0)


def _run_spec(spec: dict[str, Any]) -> None:
    from labd.runner.session import child_main
    from labd.runner.title import runner_title

    _set_title(runner_title(spec.get("name") or spec["session_id"], spec["workflow"], spec["session_id"]))
    child_main(spec)


class _Spare:
    """The one spare runner: its pid, the write end of its spec pipe, the read end of its ready pipe (one byte
    when its warm-up is done), and its create time."""

    def __init__(self, pid: int, fd: int, ready_fd: int, create_time: float | None,
                 group: list[str] | None = None) -> None:
        self.pid, self.fd, self.ready_fd, self.create_time = pid, fd, ready_fd, create_time
        self.group = group  # the cgroup it joined while warming up (the daemon's next session's: daemon/cgroups.py)
        self._ready = False

    @property
    def fds(self) -> tuple[int, int]:
        return self.fd, self.ready_fd

    def ready(self) -> bool:
        """True once it has warmed up: a spec handed over earlier would wait for the warm-up (a fork is quicker)."""
        if not self._ready and select.select([self.ready_fd], [], [], 0)[0]:
            self._ready = os.read(self.ready_fd, 1) == b"r"
        return self._ready

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _fork_spare(in_fd: int, out_fd: int, wake_fds: tuple[int, int], hints: dict[str, list[str]],
                close: tuple[int, ...] = ()) -> _Spare:
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        fcntl.fcntl(w, 1031, SPEC_PIPE_SIZE)  # F_SETPIPE_SZ (Linux)
    except OSError:
        pass

    def job() -> None:
        from labd.runner.spare import single_threaded, wait_for_spec, warm_up

        _set_title("labd: spare runner (warming up)")
        try:
            warm_up(hints)
        except Exception:  # noqa: BLE001 - an optimisation only: a spare that could not warm up still serves
            pass
        if not single_threaded():  # never wait with a thread Landlock would not confine (runner/spare.py)
            os._exit(0)
        os.write(ready_w, b"r")
        os.close(ready_w)
        _set_title("labd: spare runner")  # ready (tests look for this title)
        spec = wait_for_spec(r, hints)
        if spec is None:  # the template is gone (or dropped us): a spare never outlives it
            os._exit(0)
        _run_spec(spec)

    pid = _fork_child(in_fd, out_fd, wake_fds, job, close=(w, ready_r, *close))
    os.close(r)
    os.close(ready_w)
    try:
        import psutil

        create_time: float | None = psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - the daemon reads it itself then
        create_time = None
    return _Spare(pid, w, ready_r, create_time, hints.get("cgroup_next"))


def _hand_over(spare: _Spare, spec: dict[str, Any]) -> bool:
    """Give ``spec`` to the spare (all of it, then end of file); False if the spare is gone."""
    try:
        write_all(spare.fd, json.dumps(spec).encode())
        return True
    except OSError:  # EPIPE: it died before we noticed
        return False
    finally:
        spare.close()


def _outlive_runners() -> None:
    """Stay until every child has ended, then return. Runners share our session, each in its own process
    group: were we to exit first, their groups would become orphaned, and the kernel sends SIGHUP (then SIGCONT)
    to an orphaned group with a stopped member, which would kill a session stopped for its CPU quota at that
    moment. Nothing else is done meanwhile; the next daemon adopts the runners."""
    signal.set_wakeup_fd(-1)
    _set_title("labd: runner template (daemon gone; waiting for its runners to end)")
    for pid in unreaped():  # no answer will be read: what the checks started ends now
        end_group(pid)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def main() -> None:
    limit_files_from_env()
    clone_filter = keep_in_tree()
    for name in PRELOAD:
        importlib.import_module(name)
    for name in [m for m in os.environ.get("LABD_PRELOAD", "").split(",") if m]:
        try:  # a preload is an optimisation: one that fails to import must not keep the template from serving
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any error of the module's own code
            print(f"labd: preload {name!r} not imported: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop, not the terminal
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _set_title("labd: runner template")
    gc.collect()
    gc.freeze()
    try:
        hello = {"op": "ready", "pid": os.getpid(), "clone_filter": clone_filter}
        write_all(out_fd, (json.dumps(hello) + "\n").encode())  # not _write: a broken pipe here ends the template
    except BrokenPipeError:  # the daemon failed to start while we imported (daemon/startup.py): nothing to serve
        return
    use_spare = os.environ.get("LABD_SPARE_RUNNERS", "1").strip() not in ("0", "")
    spare: _Spare | None = None
    spare_due: float | None = time.monotonic() if use_spare else None
    hints: dict[str, list[str]] = {}
    buf = b""
    inspecting: dict[int, Check] = {}  # checks at work, by the fd their answer comes on
    checker: Checker | None = None  # a child forked ahead of the next check (runner/checks.py)
    checker_due: float | None = time.monotonic() + SPARE_DELAY_S if use_spare else None
    spare_born = checker_born = 0.0  # when each was forked (renewed RENEW_S later if still unused)

    def private() -> tuple[int, ...]:
        """The template's ends of its children's pipes: no other child may hold them (read another's
        answer, or keep a pipe open that should close when the template goes)."""
        return (*(spare.fds if spare is not None else ()), *(checker.fds if checker is not None else ()),
                *inspecting)

    def fork(job: Any, close: tuple[int, ...]) -> int:
        return _fork_child(in_fd, out_fd, (wake_r, wake_w), job, (*private(), *close))

    while True:
        now = time.monotonic()
        if spare is not None and now >= spare_born + RENEW_S:  # end of file: it exits once warm; a new one walks anew
            spare.close()
            spare, spare_due = None, now
        if checker is not None and now >= checker_born + RENEW_S:
            checker.close()
            checker, checker_due = None, now
        if spare is None and spare_due is not None and now >= spare_due:
            spare, spare_due, spare_born = _fork_spare(in_fd, out_fd, (wake_r, wake_w), hints, private()), None, now
        if checker is None and checker_due is not None and now >= checker_due:
            checker, checker_due, checker_born = fork_checker(fork, hints.get("confine_hide")), None, now
        now = time.monotonic()
        for late in [j for j in inspecting.values() if now >= j.deadline]:  # an import that never returns
            _write(out_fd, inspecting.pop(late.fd).answer(timed_out=True))
        due = [t for t in (spare_due, checker_due, *(j.deadline for j in inspecting.values()),
                           spare and spare_born + RENEW_S, checker and checker_born + RENEW_S) if t]
        timeout = max(0.0, min(due) - now) if due else None
        try:
            ready, _, _ = select.select([in_fd, wake_r, *inspecting], [], [], timeout)
        except InterruptedError:
            continue
        for fd in ready:
            inspection = inspecting.get(fd)
            if inspection is not None and inspection.read():  # answer() keeps to its fields, whatever was written
                _write(out_fd, inspecting.pop(fd).answer())
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            if _reap(out_fd, spare.pid if spare else None):  # the spare died unused
                assert spare is not None  # noqa: S101 - _reap reports only the spare we named
                spare.close()
                spare, spare_due = None, time.monotonic() + SPARE_RETRY_S
        if in_fd not in ready:
            continue
        chunk = os.read(in_fd, 65536)
        if not chunk:  # the daemon is gone; our children (runners) carry on
            for fd in private():  # an unused spare and checker see end of file and exit
                os.close(fd)
            # End of our output is the answer the daemon waits for (daemon/template_launcher.py, shutdown): from here on
            # we only reap. Replaced, not closed, so fd 1 is not reused.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out_fd)
            os.close(devnull)
            _outlive_runners()
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            if req["op"] == "spawn":
                spec = req["spec"]
                reply: dict[str, Any] | None = None
                if spare is not None and spare.ready():  # used once, whether the hand-over worked or not
                    if _hand_over(spare, spec):
                        reply = {"pid": spare.pid, "create_time": spare.create_time, "via": "spare"}
                    spare = None
                if spare is not None and spare.group and spare.group == spec.get("cgroup"):
                    # still warming up in the group this spec's runner gets (the daemon made it ahead for it): it
                    # must not wait there (the session's end kills what is left in its group); dropped, and the next
                    # spare prepares for the next group (end of file: it exits once warm)
                    spare.close()
                    spare = None
                if reply is None:  # no spare, or still warming up: fork (a spare's pipes never go to the child)
                    pid = fork(lambda s=spec: _run_spec(s), ())
                    reply = {"pid": pid, "create_time": None, "via": "fork"}
                _write(out_fd, {"op": "spawned", "req": req["req"], **reply})
                if use_spare:  # the next spare prepares for the same daemon settings
                    from labd.runner.spare import hints_of

                    hints = hints_of(spec)
                    if spare is None:
                        spare_due = time.monotonic() + SPARE_DELAY_S
            elif req["op"] in ("hints", "renew") and use_spare:  # hints: at the daemon's start, what every runner
                # gets; renew: the disk is full, and what the spare and checker hold open may be what was deleted
                from labd.runner.spare import hints_of

                primed = hints_of(req["spec"]) if req["op"] == "hints" else hints
                if primed != hints or req["op"] == "renew":  # those forked before prepare for the wrong things
                    hints = primed
                    if spare is not None:
                        spare.close()
                    if checker is not None:
                        checker.close()
                    spare = checker = None
                    spare_due = checker_due = time.monotonic() + SPARE_DELAY_S
            elif req["op"] == "inspect":
                if (req.get("confine") or {}).get("hide") and "confine_hide" not in hints:  # for the next checker
                    hints = {**hints, "confine_hide": [str(p) for p in req["confine"]["hide"]]}
                check = checker.hand_over(req) if checker is not None else None
                if checker is not None:  # used once, whether the hand-over worked or not
                    checker, checker_due = None, (time.monotonic() + CHECKER_DELAY_S if use_spare else None)
                if check is None:  # none ready: fork one for this check
                    check = fork_check(fork, req)
                if check.fd < 0:  # it died before it read the check
                    _write(out_fd, check.answer())
                else:
                    inspecting[check.fd] = check

if __name__ == "__mp_main__":  # a process multiprocessing spawned from a runner: the session's ctx (runner/spawned.py)
    from labd.runner.spawned import attach

    attach()

if __name__ == "__main__":
    main()
