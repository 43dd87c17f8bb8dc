"""Runners a previous daemon started but never recorded, found by their process title (runner/title.py) when
a daemon starts:

- the daemon died after ``session.created`` was committed but before ``session.launched`` was: the session
  is stored with no pid. Its runner is adopted (not marked ``lost`` while it runs, and a ``queued`` one is
  not started a second time): :meth:`labd.daemon.supervisor.Supervisor.adopt` -- once it has proven it is that
  runner (:class:`Claims`). A title is no proof: any process of the user can take one (a session's own code can
  list ``<home>/sessions`` and title itself after a queued session, which then never ran and held a
  ``max_sessions`` slot until that process exited). The proof is what only the real runner can give: a frame
  signed with its session's key (ingest verifies it and notes ``last_seen``), which a runner sends as soon as
  it reconnects to the new daemon (its ``hello``). Until then, or until :data:`PROOF_WAIT_S` has passed, the
  session is neither adopted nor queued nor lost, and holds one slot of the run queue's capacity; without proof it
  goes on as if no runner had been found (a queued session is queued again, a live one is lost), and the process
  is left alone: never signalled.
- the daemon died after handing the spec to the template but before ``session.created`` was committed (the
  two overlap: the start does not wait for the commit). No client was told the session exists (the reply
  waits for the commit) and the store has no trace of it: such a runner is killed (:func:`stop_stray`), else
  it would run its workflow to the end unrecorded and unsupervised. Only runners of *this* home: their
  working directory or an open file is in the session's directory here (another home's daemon may run
  runners for the same user).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import structlog

from labd.daemon.limits import Limits
from labd.runner.title import session_of_title

__all__ = ["find_runners", "belongs_here", "stop_stray", "titled", "Claims", "PROOF_WAIT_S", "create_time_of",
           "is_same_process"]

#: how long a runner found by title has to prove itself. A live runner redials every second at most
#: (``RECONNECT_IVL_MAX``) and says hello at once; the rest is for a loaded machine.
PROOF_WAIT_S = 10.0


def titled(pid: int) -> str | None:
    """The session whose runner title process ``pid`` carries (runner/title.py); None for any other process, a
    zombie, or one gone."""
    try:
        return session_of_title(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return None


def find_runners() -> dict[str, list[tuple[int, float]]]:
    """``{session id: [(pid, create time), ...]}`` of this user's live processes titled as a session's runner, in
    pid order. A workflow's forked children carry their runner's title too: a runner is one whose parent does not.
    More than one for a session means some are impostors (any process of the user can take a title): the one the
    session's ``hello`` names is the runner (:class:`Claims`)."""
    uid = os.getuid()
    tagged: dict[int, tuple[str, int, float]] = {}  # pid -> (session id, parent pid, create time)
    for p in psutil.process_iter(["uids", "status", "ppid", "create_time"]):
        info = p.info
        if info["uids"] is None or info["uids"].real != uid or info["status"] == psutil.STATUS_ZOMBIE:
            continue  # another user's, gone, or unreadable (psutil leaves None)
        sid = titled(p.pid)
        if sid is not None:
            tagged[p.pid] = (sid, info["ppid"], info["create_time"])
    found: dict[str, list[tuple[int, float]]] = {}
    for pid, (sid, ppid, ctime) in sorted(tagged.items()):
        if tagged.get(ppid, ("",))[0] != sid:  # not a child of the runner
            found.setdefault(sid, []).append((pid, ctime))
    return found


def belongs_here(pid: int, session_dir: Path) -> bool:
    """Is this runner one of this home's: its working directory or an open file inside ``session_dir``?"""
    root = str(session_dir) + os.sep
    try:
        proc = psutil.Process(pid)
        if (proc.cwd() + os.sep).startswith(root):
            return True
        return any(f.path.startswith(root) for f in proc.open_files())
    except psutil.Error:
        return False


def stop_stray(pid: int, create_time: float) -> bool:
    """SIGKILL a stray runner's process group (it leads one), if it is still that process."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) >= 0.05:
            return False
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            proc.kill()
        return True
    except (psutil.Error, OSError):
        return False


@dataclass
class _Claim:
    row: dict[str, Any]  # the session's stored row (no pid)
    found: list[tuple[int, float]]  # (pid, create time) of each process titled as its runner
    queued: bool  # stored as ``queued`` (else live)
    limits: Limits
    deadline: float  # time.monotonic()
    stop: tuple[str, float | None] | None = None  # a stop (by, grace) or kill (by, None) asked meanwhile


class Claims:
    """Sessions stored with no pid whose runner was found by title (:func:`find_runners`) and has not proven yet
    that it is theirs (see the module docstring). ``proven(sid)``: a frame signed with the session's key reached
    this daemon; ``hello(sid)``: the (pid, create time) its runner's ``hello`` said, if it said one; ``requeue(row)``:
    put a queued session back in the run queue."""

    def __init__(self, proven: Callable[[str], bool] = lambda _sid: False,
                 requeue: Callable[[dict[str, Any]], Any] = lambda _row: None, wait: float = PROOF_WAIT_S,
                 hello: Callable[[str], tuple[int, float] | None] = lambda _sid: None) -> None:
        self.proven = proven
        self.hello = hello
        self.requeue = requeue
        self.wait = wait
        self._pending: dict[str, _Claim] = {}
        self.log = structlog.get_logger("labd.orphans")

    def add(self, row: dict[str, Any], found: list[tuple[int, float]], queued: bool) -> None:
        self._pending[row["id"]] = _Claim(row, found, queued, Limits.from_dict(row["limits"]),
                                          time.monotonic() + self.wait)

    def __contains__(self, sid: object) -> bool:
        return sid in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def _runner(self, sid: str, found: list[tuple[int, float]]) -> tuple[int, float]:
        """Which of the processes titled as ``sid``'s runner is it: the one its signed ``hello`` names (an impostor
        cannot sign), else (a runner from before hellos carried a pid) the first found."""
        said = self.hello(sid)
        pid = said[0] if said else None
        chosen = next((f for f in found if f[0] == pid), found[0])
        if len(found) > 1:
            self.log.warning("several processes are titled as this session's runner: adopting the one its hello "
                             "names", session_id=sid, pids=[f[0] for f in found], adopted=chosen[0])
        return chosen

    def stop_when_settled(self, sid: str, by: str, grace: float | None) -> bool:
        """A stop (``grace`` seconds) or kill (``grace`` None) asked of a claimed session: carried out when it
        settles (see :meth:`settle`). False if ``sid`` is not claimed."""
        claim = self._pending.get(sid)
        if claim is None:
            return False
        claim.stop = (by, grace)
        return True

    def limits(self) -> list[Limits]:
        """What the claimed sessions hold of the run queue's capacity (a real runner runs already)."""
        return [c.limits for c in self._pending.values()]

    def settle(self, adopt: Callable[[dict[str, Any], tuple[int, float] | None], Any],
               stop: Callable[[str, tuple[str, float | None]], Any] = lambda _sid, _how: None,
               cancel: Callable[[str, str], Any] = lambda _sid, _by: None) -> None:
        """Adopt the claimed runners that proved themselves (and ``stop`` them at once if a stop or kill was asked
        meanwhile); past the deadline, go on without the others: a queued session is queued again (or, if a stop
        was asked, ended through ``cancel(sid, by)``), a live one goes through ``adopt(row, None)`` (lost, or
        adopted from a remote launcher). The unproven process is never signalled. On the main thread, every tick."""
        if not self._pending:
            return
        now = time.monotonic()
        for sid, claim in list(self._pending.items()):
            if self.proven(sid) and len(claim.found) > 1 and self.hello(sid) is None and now < claim.deadline:
                continue  # signed frames came, but not yet the hello that says which of them is the runner
            if self.proven(sid):
                del self._pending[sid]
                adopt(claim.row, self._runner(sid, claim.found))
                if claim.stop is not None:
                    stop(sid, claim.stop)
            elif now >= claim.deadline:
                del self._pending[sid]
                self.log.warning("a process titled as this session's runner never proved it is one (no frame signed "
                                 "with the session's key): not adopted, left alone", session_id=sid,
                                 pid=claim.found[0], queued=claim.queued)
                if claim.queued and claim.stop is not None:
                    cancel(sid, claim.stop[0])
                elif claim.queued:
                    self.requeue(claim.row)
                else:
                    adopt(claim.row, None)


def create_time_of(pid: int) -> float | None:
    """The create time psutil gives process ``pid`` now (None if it is gone or unreadable)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_same_process(pid: int, create_time: float | None) -> bool:
    """True if ``pid`` is alive, not a zombie, and is the process started at ``create_time``."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(p.create_time() - create_time) < 0.05
    except psutil.NoSuchProcess:
        return False
