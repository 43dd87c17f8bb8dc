"""The local launcher: runners forked from a warm template process (``labd.runner.template``) over a JSON-lines pipe.

A fork from a parent that already imported the runner stack takes ~2 ms instead of ~0.8 s for a cold start. The
template outlives a daemon restart's runners; the spec it is sent never holds the runner's key (:func:`hand_over_key`
writes it to the session's directory first). It implements :class:`labd.daemon.launcher.Launcher`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import structlog

from labd.daemon.launcher import ExitInfo, LaunchError, close_pipes, readable, room, signal_group
from labd.daemon.priority import lower_priority, own_priority
from labd.runner.spool import SEGMENT

__all__ = ["TemplateLauncher", "hand_over_key", "KEY_FILE", "NOFILE_ENV"]

#: the template sets RLIMIT_NOFILE (soft = hard) to this before it forks anything (runner/template.py)
NOFILE_ENV = "LABD_SESSION_NOFILE"


class TemplateLauncher:
    """Forks runners from a warm ``labd.runner.template`` process over a JSON-lines pipe."""

    def __init__(self, env: dict[str, str] | None = None, preload: list[str] | None = None,
                 timeout: float = 30.0, spare_runners: int = 1, runner_nice: int = 0, session_nofile: int = 0) -> None:
        self._env = dict(os.environ if env is None else env)
        if preload:
            self._env["LABD_PRELOAD"] = ",".join(preload)
        self._env.pop(NOFILE_ENV, None)
        if session_nofile:  # every process forked from the template inherits it (0: the daemon's, inherited)
            self._env[NOFILE_ENV] = str(session_nofile)
        # a warm spare runner in the template (runner/spare.py): 1 = on, 0 = off
        self._env["LABD_SPARE_RUNNERS"] = "1" if spare_runners else "0"
        self._runner_nice = runner_nice  # each runner is reniced once launched (daemon/priority.py)
        self._base_priority: tuple[int, int | None] | None = None  # the daemon's, read at template start
        self._timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False  # its first "ready" was read (TemplateLauncher.start)
        self._buf = b""
        self._exits: list[ExitInfo] = []
        self._replies: list[dict[str, Any]] = []
        self._req = 0
        self._inspecting: set[int] = set()  # inspect requests not answered yet
        #: the pids of the template's children it announced ("forked") and that have not exited; replaced, never
        #: changed in place: the monitor's thread reads it (template_children)
        self._children: frozenset[int] = frozenset()
        #: CLOCK_BOOTTIME when the pipe was last read empty: children forked well before it are in _children
        self._drained = 0.0
        self.clone_filter: str | None = None  # the template's clone filter: "on" or why not (its "ready")
        #: each runner's cgroup, made here and joined by the runner first thing (daemon/cgroups.py); set by the daemon
        self.cgroups: Any = None
        #: what every runner's spec shares (set by the daemon): sent to each template once it is ready, so that its
        #: first spare prepares for it too, not only the spares after the first launch (runner/spare.py, hints_of)
        self.hints: Any = None

    def spawn(self) -> None:
        """Start the template process and return at once: it imports the runner stack (~2 s) while the caller
        goes on (``labd serve`` imports the daemon's own modules meanwhile: daemon/startup.py)."""
        if self._runner_nice:  # what runners are placed relative to: read once per template, not per launch
            self._base_priority = own_priority()
        self._proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "labd.runner.template"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=self._env, start_new_session=True, close_fds=True,
        )
        assert self._proc.stdout is not None  # noqa: S101 - Popen contract with stdout=PIPE
        os.set_blocking(self._proc.stdout.fileno(), False)

    def start(self) -> None:
        """Wait until the template is ready (spawned now unless :meth:`spawn` was called)."""
        if self._proc is None:
            self.spawn()
        ready = self._wait_for(lambda m: m.get("op") == "ready")
        if ready is None:
            raise LaunchError("runner template did not start (see the daemon log for its error)")
        self._ready = True
        self.clone_filter = ready.get("clone_filter")
        if self.hints is not None:
            self._send({"op": "hints", "spec": self.hints()})

    def abandon(self) -> None:
        """End a template spawned but never waited for (the daemon failed to start before it needed it): it has
        forked nothing yet, so it is killed rather than left to finish importing the runner stack."""
        if self._proc is not None and not self._ready:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    @property
    def template_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def template_children(self) -> tuple[int | None, frozenset[int], float]:
        """The template's pid, the children it announced (runners, spare, checker, checks) and when its pipe was
        last read empty (``CLOCK_BOOTTIME`` seconds: a child started well before then and not announced is none of
        its own), for the monitor's escapee backstop (daemon/escapees.py); safe to call from another thread."""
        drained = self._drained  # read first: _read_available sets it after the children it covers
        proc = self._proc
        return (proc.pid if proc is not None else None), self._children, drained

    def fileno(self) -> int | None:
        return self._proc.stdout.fileno() if self._proc and self._proc.stdout else None

    def _send(self, msg: dict[str, Any]) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._restart()
        assert self._proc is not None and self._proc.stdin is not None  # noqa: S101
        self._proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self._proc.stdin.flush()

    def _restart(self) -> None:
        # The template died (killed by an admin, OOM): start a fresh one; running sessions are unaffected.
        self._proc = None
        self.start()

    def _read_available(self) -> None:
        """Read all the template has written; exits go to the exit queue, replies to the reply list."""
        assert self._proc is not None and self._proc.stdout is not None  # noqa: S101
        gone = False
        drained: float | None = None
        while True:
            before = time.clock_gettime(time.CLOCK_BOOTTIME)
            try:
                chunk = os.read(self._proc.stdout.fileno(), 65536)
            except BlockingIOError:
                drained = before  # all it wrote before then is in _buf
                break
            if not chunk:
                gone = True  # after the lines it wrote before it died (exits, answers) are taken
                break
            self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:  # e.g. a preloaded module printed on import: not ours, skip it
                continue
            if msg.get("op") == "exited":
                cpu = msg.get("cpu")
                self._exits.append(ExitInfo(msg["pid"], msg["exit_code"], msg["signal"],
                                            cpu=float(cpu) if isinstance(cpu, (int, float)) else None))
                self._children = self._children - {msg["pid"]}
            elif msg.get("op") == "forked":
                self._children = self._children | {msg["pid"]}
            else:
                self._replies.append(msg)
        if drained is not None:
            self._drained = drained
        if gone:
            self._template_gone()

    def _template_gone(self) -> None:
        """The template's pipe closed (it was killed): reap it and start a fresh one. Running sessions are
        unaffected; their exits are then noticed by the monitor instead."""
        assert self._proc is not None  # noqa: S101 - only called while a template runs
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        code = self._proc.returncode  # an admin, the OOM killer: said, as the session ends it causes are not
        structlog.get_logger("labd.daemon").warning(
            "runner template died; starting a new one (running sessions carry on)", pid=self._proc.pid,
            **({"signal": signal.Signals(-code).name} if code < 0 else {"exit_code": code}))
        close_pipes(self._proc)
        self._proc = None
        self._buf = b""
        self._children = frozenset()  # the new template's children are announced anew
        self._lost_inspections()
        try:
            self.start()
        except LaunchError:
            self._proc = None  # the next launch tries again

    def _wait_for(self, pred: Any) -> dict[str, Any] | None:
        assert self._proc is not None and self._proc.stdout is not None  # noqa: S101
        deadline = time.monotonic() + self._timeout
        fd = self._proc.stdout.fileno()
        while True:
            self._read_available()
            for i, msg in enumerate(self._replies):
                if pred(msg):
                    del self._replies[i]
                    return msg
            if self._proc.poll() is not None or time.monotonic() >= deadline:
                return None
            readable(fd, max(0.0, min(0.5, deadline - time.monotonic())))

    def launch(self, spec: dict[str, Any]) -> tuple[int, float]:
        self._req += 1
        req = self._req
        sid = spec.get("session_id")
        joins, ahead = (self.cgroups.create(sid, (spec.get("limits") or {}).get("memory"))
                        if self.cgroups and sid else (None, None))
        if joins or ahead:  # its group, and the next runner's (the template's next spare joins it while it waits)
            spec = {**spec, "cgroup": joins, "cgroup_next": ahead}
        reply: dict[str, Any] | None = None
        try:  # raises too (no disk for the key file, a template that cannot be restarted): as no answer
            self._send({"op": "spawn", "req": req, "spec": hand_over_key(spec)})
            reply = self._wait_for(lambda m: m.get("op") == "spawned" and m.get("req") == req)
        finally:
            if reply is None and (joins or ahead):  # no runner: the group recorded for it goes (limit or not)
                self.cgroups.release(sid)
        if reply is None and self._proc is None:
            raise LaunchError("runner template died while starting the runner")
        if reply is None:
            raise LaunchError("runner template did not answer the spawn request")
        pid = int(reply["pid"])
        # here rather than in the template: a spare warms up at the daemon's priority (first output); the runner
        # is reniced as soon as the daemon knows its pid, i.e. within its first milliseconds
        if self._runner_nice:  # 0: as started (the daemon's nice value, inherited), and ~40 us off the start path
            lower_priority(pid, self._runner_nice, self._base_priority)  # relative to the daemon's own values
        if isinstance(reply.get("create_time"), float):  # a spare's: read by the template before the request
            return pid, reply["create_time"]
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            create_time = time.time()  # it already exited; its exit is in the queue
        return pid, create_time

    def renew_spares(self) -> None:
        """Have the template replace its unused spare runner and pre-forked checker now: their Landlock rules hold
        the files beside labd's home open, so space freed by deleting one comes back only once they are renewed
        (the daemon asks while the disk is full)."""
        try:
            self._send({"op": "renew"})
        except Exception as exc:  # noqa: BLE001 - the template is gone and would not start (OSError, LaunchError):
            # the next launch restarts it (with nothing held); never raised into the queue's retry
            structlog.get_logger("labd.daemon").warning("could not ask the runner template to renew its spares",
                                                        error=str(exc))

    def inspect_start(self, workflow: str, params: dict[str, Any], path: list[str] | None = None,
                      confine: dict[str, Any] | None = None) -> int:
        """Ask the template to resolve a workflow and check its params in a throwaway child, with ``path``
        first on ``sys.path``, confined by ``confine`` (a runner's Landlock policy: the user's module is imported
        there, so it gets no more than the runner that will run it); returns a request id at once (the daemon's
        request handlers wait for it without blocking: :mod:`labd.daemon.checks`)."""
        self._req += 1
        req = self._req
        self._inspecting.add(req)
        try:
            self._send({"op": "inspect", "req": req, "workflow": workflow, "params": params, "path": path or [],
                        "confine": confine})
        except (OSError, LaunchError):  # no template (it could not be restarted): answered as a failure
            self._lost_inspections()
        return req

    def drain_inspected(self) -> list[tuple[int, dict[str, Any]]]:
        """Answers ``(request id, {"ok": bool, ...})`` that arrived since the last call (the main loop polls
        :meth:`fileno`); every request gets one, also when the template died meanwhile."""
        if self._proc is not None:
            self._read_available()
        answers = [(m["req"], m) for m in self._replies
                   if m.get("op") == "inspected" and m.get("req") in self._inspecting]
        if answers:
            self._replies = [m for m in self._replies if m.get("op") != "inspected"]
            self._inspecting.difference_update(req for req, _ in answers)
        return answers

    def _lost_inspections(self) -> None:
        """The template went away with checks out: each gets a failure answer (never silence)."""
        answered = {m.get("req") for m in self._replies if m.get("op") == "inspected"}
        for req in self._inspecting - answered:
            self._replies.append({"op": "inspected", "req": req, "ok": False, "code": "launch_failed",
                                  "message": "the runner template stopped while checking the workflow; try again"})

    def drain_exits(self) -> list[ExitInfo]:
        if self._proc is not None:
            self._read_available()
        exits, self._exits = self._exits, []
        return exits

    def signal(self, pid: int, sig: int) -> bool:
        return signal_group(pid, sig)

    def shutdown(self) -> None:
        if self._proc is None:
            return
        if self._proc.stdin:
            self._proc.stdin.close()  # end of input: the template exits, runners carry on
        # The template answers end of input by ending its output, then exits at once if it has no runners, or stays
        # until they end (runner/template.py, _outlive_runners: their process groups must not become orphaned).
        # So wait for that answer, not for its exit: a daemon stopped with sessions running waited 5 s here and
        # then killed the template it means to leave behind.
        if self._proc.stdout is not None and _output_ends_within(self._proc.stdout.fileno(), 5.0):
            try:
                self._proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass  # it outlives its runners; when they have ended it exits (and init reaps it)
        else:  # hung, or an old template: as before
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()
        self._proc = None


def _output_ends_within(fd: int, timeout: float) -> bool:
    """Read (and drop) what is left on the template's output until its end; False if it has not ended in time."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not readable(fd, left):
            return False
        try:
            if not os.read(fd, 65536):
                return True
        except BlockingIOError:
            continue
        except OSError:
            return True


KEY_FILE = "runner.key"


def hand_over_key(spec: dict[str, Any]) -> dict[str, Any]:
    """Move the runner's key out of its spec into ``<session dir>/runner.key`` (0600), which the runner
    reads and deletes before it runs any workflow code.

    The spec travels through the template, whose memory every later runner inherits by fork: a key in a
    spec would leave copies in that memory for the next sessions to find. The file is in the session's
    own directory, which no other session's runner or executed code may read (docs/security.md)."""
    key = spec.get("key")
    if not key:
        return spec
    # the work directory's parent as named, not where a symlink leads: the session's code may have replaced its work
    # directory by a link to anywhere (a realpath made that place and wrote the key there)
    session_dir = os.path.dirname(os.path.abspath(spec["workdir"]))
    os.makedirs(session_dir, mode=0o700, exist_ok=True)
    if room(session_dir) < SEGMENT:
        # no room for the runner's event spool (its first segment): ENOSPC here keeps the session queued until there
        # is (daemon/admission.py); launched, it failed at once in the runner
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), session_dir)
    path = os.path.join(session_dir, KEY_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return {**{k: v for k, v in spec.items() if k != "key"}, "key_file": path}
