"""Workflow checks in the runner template: a user's workflow resolved and its params bound in a throwaway
child, so importing user code never touches the template (docs/design.md, "Workflow checks never hold up the
daemon").

The template keeps one :class:`Checker` forked ahead of need (like its spare runner): a check then costs a
pipe hand-over, the import and the bind, not a fork of the template on the request's path. A check that
finds no ready checker forks one for itself. Each check's answer is read by the template's loop as it comes
(:class:`Check`), with a deadline.

Nothing a user module starts while it is imported outlives its check: the checker is its process group's leader,
and ``setsid`` / ``setpgid`` do nothing in it (:func:`labd.runner.sandbox.seccomp.keep_process_group`), so the
whole group is killed when the check ends (:func:`end_group`): when its answer is read, it timed out, or the
checker is reaped, whichever comes first, and always before its pid is reaped (a reaped pid, and so the group's
id, can be another process's soon: pid_max is often 32768).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from labd.runner.pipes import write_all
from labd.runner.workflows.registry import record_default

__all__ = ["CHECK_TIMEOUT_S", "CHECKER_DELAY_S", "Check", "Checker", "check_workflow", "end_group", "fork_check",
           "fork_checker", "unreaped"]

CHECK_TIMEOUT_S = 20.0
#: what a check's answer may carry (anything else the child wrote is dropped) and how long it may be
ANSWER_KEYS = ("ok", "code", "message", "details", "params", "describe", "function")
MAX_ANSWER_BYTES = 64 << 20
#: fork a new checker this long after one was used: not while the check (and the start it serves) runs
CHECKER_DELAY_S = 0.05


#: checker children not yet reaped by the template (single-threaded): their pid is still their group's id
_unreaped: set[int] = set()


def end_group(pid: int, reaping: bool = False) -> None:
    """Kill what is left of checker ``pid``'s process group (the processes its user module started) if ``pid`` is
    a checker not yet reaped; ``reaping``: the template is about to reap it (its last chance). Not a checker, or
    already reaped: nothing (its group was killed before it was reaped)."""
    if pid not in _unreaped:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if reaping:
        _unreaped.discard(pid)


def unreaped() -> frozenset[int]:
    """The checker children the template has not reaped yet."""
    return frozenset(_unreaped)


def _keep_group() -> None:
    """In a checker child, before the user's module runs: it cannot leave the check's process group."""
    from labd.runner.sandbox import seccomp

    if seccomp.supported():
        try:
            seccomp.keep_process_group()
        except OSError:  # no seccomp here: the group is still killed; a process that left it is not
            pass


def check_workflow(workflow: str, params: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """Resolve ``workflow`` with ``path`` first on ``sys.path`` and bind ``params``: ``{"ok": bool, ...}``
    (run in a child that exits afterwards)."""
    from labd.runner.workflows.registry import WorkflowError, bind_params, describe, resolve

    # The same sys.path the runner will have: the client's directory and PYTHONPATH first.
    sys.path[:0] = path
    importlib.invalidate_caches()
    try:
        fn = resolve(workflow, search=path)
        return {"ok": True, "params": bind_params(fn, params), "describe": describe(fn), "function": fn.__name__}
    except WorkflowError as exc:
        return {"ok": False, "code": exc.code, "message": exc.message, "details": exc.details}


def _answer_one(requests: int, answers: int, hide: list[str] | None = None) -> None:
    """In a checker child: read one request (to end of file), confine itself as the request says, check it,
    write the answer, exit. ``hide``: the runners' Landlock hide list as last seen, prepared while waiting."""
    from labd.runner.credentials import confine_runner, prepare_confinement
    from labd.runner.spare import single_threaded

    # Warm up while waiting: the first run of this code copies the template's pages it touches (reference
    # counts are writes); done now, not on the request's path.
    json.loads(json.dumps(check_workflow("demo.count", {"n": "1"}, []), default=record_default))
    if hide:
        try:
            prepare_confinement(hide)  # the filesystem walk, off the request's path (confine_runner checks it)
        except OSError:
            pass
    data = b""
    while chunk := os.read(requests, 65536):
        data += chunk
    if not data:  # the template went away without using us
        os._exit(0)
    req = json.loads(data)
    # The user's module runs at import: no more than the runner that will run it may (it could read the daemon's
    # key otherwise), and what it prints goes nowhere (fds 1 and 2 are the daemon's log, shared and unbounded).
    # Landlock confines the calling thread and what it starts: nothing else may run yet.
    if req.get("confine"):
        confined = "a thread was running" if not single_threaded() else confine_runner(req["confine"])
        if confined != "landlock":
            write_all(answers, json.dumps({"ok": False, "code": "workflow_import_failed", "message":
                                           f"the workflow check could not confine itself ({confined})"}).encode())
            os._exit(0)
    _keep_group()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    result = check_workflow(req["workflow"], req.get("params") or {}, req.get("path") or [])
    write_all(answers, json.dumps(result, default=record_default).encode())  # a set param as a list
    # End of file now: exit closes files only after it has torn down the address space (a forked template:
    # several ms), and the template reads the answer at end of file.
    os.close(answers)
    os._exit(0)


class Checker:
    """A child forked ahead of need, waiting for one check: its pid, the template's write end of its request
    pipe and read end of its answer pipe."""

    def __init__(self, pid: int, requests: int, answers: int) -> None:
        self.pid, self.requests, self.answers = pid, requests, answers

    @property
    def fds(self) -> tuple[int, int]:
        return self.requests, self.answers

    def close(self) -> None:
        """Unused: it sees end of file and exits (reaped by the template)."""
        os.close(self.requests)
        os.close(self.answers)

    def hand_over(self, req: dict[str, Any]) -> Check | None:
        """Give it the check (then end of file); the :class:`Check` to read its answer from, or None if it is
        gone (its pipes are closed either way)."""
        try:
            write_all(self.requests, json.dumps(req).encode())
        except OSError:  # EPIPE: it died unused
            os.close(self.requests)
            os.close(self.answers)
            return None
        os.close(self.requests)
        os.set_blocking(self.answers, False)
        return Check(req["req"], self.pid, self.answers)


def fork_checker(fork: Callable[[Callable[[], None], tuple[int, ...]], int],
                 hide: list[str] | None = None) -> Checker:
    """Fork a checker with ``fork(job, close)`` (the template's fork: the child sheds the template's fds and
    those in ``close``, the template's ends of the checker's own pipes); ``hide``: what it prepares to confine."""
    req_r, req_w = os.pipe()
    ans_r, ans_w = os.pipe()
    pid = fork(lambda: _answer_one(req_r, ans_w, hide), (req_w, ans_r))
    _unreaped.add(pid)
    os.close(req_r)
    os.close(ans_w)
    return Checker(pid, req_w, ans_r)


def fork_check(fork: Callable[[Callable[[], None], tuple[int, ...]], int], req: dict[str, Any]) -> Check:
    """No ready checker: fork one for this check alone."""
    checker = fork_checker(fork)
    check = checker.hand_over(req)
    if check is None:  # it died before reading: answered as a crash
        return Check(req["req"], checker.pid, -1)
    return check


class Check:
    """A check at work in a child: the template's loop reads its answer as it comes (``fd`` is in its
    ``select``), so a slow import (a module that pulls in a large library) never holds up spawns or other
    checks; past :data:`CHECK_TIMEOUT_S` the child is killed."""

    def __init__(self, req: int, pid: int, fd: int) -> None:
        self.req, self.pid, self.fd = req, pid, fd
        self.deadline = time.monotonic() + CHECK_TIMEOUT_S
        self.data = b""

    def read(self) -> bool:
        """Take what the child wrote; True at its end (EOF), or once it wrote more than an answer can be (the
        user's module runs in the child and holds the pipe: it must not grow the template's memory)."""
        try:
            part = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        self.data += part
        if len(self.data) > MAX_ANSWER_BYTES:
            self.data = b""  # answered as a crash
            end_group(self.pid)
            return True
        return not part

    def answer(self, timed_out: bool = False) -> dict[str, Any]:
        """The ``inspected`` reply for the daemon; closes the pipe and kills what is left of the check (the child,
        if it timed out; whatever the user's module started, in any case)."""
        if self.fd >= 0:
            os.close(self.fd)
        end_group(self.pid)
        if timed_out:
            return {"op": "inspected", "req": self.req, "ok": False, "code": "workflow_import_failed",
                    "message": f"importing the workflow took longer than {CHECK_TIMEOUT_S:g}s; it was stopped"}
        try:
            result = json.loads(self.data)
        except ValueError:
            result = None
        if not isinstance(result, dict) or not isinstance(result.get("ok"), bool):
            result = {"ok": False, "code": "workflow_import_failed",
                      "message": "inspecting the workflow crashed its process"}
        # Only the answer's own fields, and op/req last: the user's module ran in the child and could write
        # anything to this pipe, e.g. a forged {"op": "exited", "pid": <another session's runner>}.
        return {**{k: result[k] for k in ANSWER_KEYS if k in result}, "op": "inspected", "req": self.req}
