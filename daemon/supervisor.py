"""The supervisor: which runners are alive, how each one is started, stopped, adopted and ended.

Runs on the daemon's main thread. Every stop goes down one ladder, each rung with a deadline:
ask the runner over IPC (cooperative, at a step boundary) -> SIGTERM to its process group -> SIGKILL.
The rung that ended the session is recorded in ``session.ended`` as ``ended_by``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from labd.daemon.admission import Admission
from labd.daemon.crash_report import crash_text, crash_text_of
from labd.daemon.launcher import ExitInfo, Launcher
from labd.daemon.limits import Limits
from labd.daemon.monitor import Monitor
from labd.daemon.notes import Notes
from labd.daemon.orphans import Claims, create_time_of, is_same_process, titled
from labd.daemon.queue import Queued, RunQueue
from labd.runner.crash_tail import CRASH_FILE
from labd.runner.withhold import looked_for

__all__ = ["Supervisor", "Running"]

PostEvent = Callable[..., None]
VANISH_CONFIRM_S = 1.0
ENDING_S = 30.0  # a posted session.ended is committed well within this (ingest's batches are milliseconds)
LEFTOVER_GRACE_S = 2.0


@dataclass
class Running:
    """A runner the supervisor is responsible for."""

    sid: str
    pid: int
    create_time: float
    limits: Limits
    started: float
    adopted: bool = False
    step: str | None = None  # last ladder rung taken: cooperative | sigterm | sigkill
    deadline: float = 0.0  # when to take the next rung
    grace: float = 0.0
    stop_asked: tuple[str, str] = ("daemon", "stop requested")  # (by, reason) of its stop, recorded again at SIGTERM
    vanished_at: float = 0.0
    unrecorded: bool = False  # the store refused its session.created: killed, and nothing is posted for it
    crash_file: Path | None = None  # its crash channel (runner/session.py, own_crash_channel), if a local runner
    secrets: list[tuple[str, str]] = field(default_factory=list, repr=False)  # withheld from the crash text
    #: a session that never ran, being adopted from a remote launcher: started instead if it has no runner there
    never_ran: Callable[[], Any] | None = field(default=None, repr=False)
    #: (by, reason) of a pause asked and not reached yet (the runner pauses at its next step boundary): shown as
    #: ``pausing`` in session views until the session is seen paused, or a resume cancels it
    pausing: tuple[str, str] | None = None


class Supervisor(Notes, Admission):
    """Owns the table of running sessions; all methods run on the main thread. What starts when (the run queue)
    is :class:`labd.daemon.admission.Admission`; what the monitor and ingest report of a session (a limit crossed,
    a process vanished, an approval's timeout) :class:`labd.daemon.notes.Notes`."""

    def __init__(self, launcher: Launcher, monitor: Monitor, post_event: PostEvent,
                 send_runner: Callable[[str, str, dict[str, Any]], None], term_grace: float) -> None:
        self.launcher = launcher
        self.monitor = monitor
        self.post = post_event
        self.send_runner = send_runner
        self.term_grace = term_grace
        self.running: dict[str, Running] = {}
        #: sessions whose end was just posted (not committed yet: the store still says running), by when
        self._ending: dict[str, float] = {}
        #: approval id -> (session, wall-clock deadline, policy) for requests with a timeout
        self.approval_deadlines: dict[str, tuple[str, float, str]] = {}
        self._leftovers: dict[int, float] = {}  # process group -> when to SIGKILL what is left of it
        self.log = structlog.get_logger("labd.supervisor")
        #: the run queue and how to build a queued session's runner spec (both set by the daemon)
        self.queue = RunQueue()
        self.spec_for: Callable[[Queued], dict[str, Any]] | None = None
        #: sessions whose runner was found by title but has not proven itself yet (daemon/orphans.py; set by the
        #: daemon at start): each holds a slot of the queue's capacity until it is adopted, queued or ended
        self.claims = Claims()
        #: session -> the request id of its resume (api/durable.py) whose session.continued is not committed yet;
        #: its runner is submitted once it is (an entry whose request was refused meanwhile is stale)
        self.continuing: dict[str, str] = {}
        #: request ids of resumes reading their session's record on a worker (not deferred yet, still in force)
        self.preparing: set[str] = set()
        self._held_until = 0.0  # the queue waits until then (time.monotonic) after a launch found the disk full

    def stop_claimed(self, sid: str, by: str, grace: float | None) -> bool:
        """Stop (``grace`` seconds) or kill (``grace`` None) a session whose runner, found by title at start, has
        not proven itself yet (daemon/orphans.py): done once it does, or the session is cancelled (queued) or
        found lost (live) if it does not. False if ``sid`` is not such a session."""
        return self.claims.stop_when_settled(sid, by, grace)

    def _settled_stop(self, sid: str, how: tuple[str, float | None]) -> None:
        by, grace = how
        if grace is None:
            self.kill(sid, by)
        else:
            self.stop(sid, by, grace)

    def launch(self, sid: str, spec: dict[str, Any], limits: Limits) -> Running:
        pid, create_time = self.launcher.launch(spec)
        run = Running(sid, pid, create_time, limits, time.time())
        self.running[sid] = run
        self._ending.pop(sid, None)
        # A remote launcher's handle is no local process: recorded as pid 0, watched by its node's monitor
        remote = bool(getattr(self.launcher, "is_remote", lambda _pid: False)(pid))
        kind = getattr(self.launcher, "kind_of", lambda _pid: "template")(pid)
        # run_key: its runner signs with the key of its run (ipc.signing.derive_key), which a runner launched by a
        # daemon before 2026-12-06 does not (a later daemon adopting it verifies with the key it has)
        self.post(sid, "session.launched", {"pid": 0 if remote else pid, "create_time": create_time, "launcher": kind,
                                            "run_key": True})
        if not remote:
            self.monitor.watch(sid, pid, limits, run.started)
            if spec.get("workdir"):
                run.crash_file = Path(spec["workdir"]).parent / CRASH_FILE
                run.secrets = looked_for({str(k): str(v) for k, v in (spec.get("secrets") or {}).items()})
        self.log.info("session launched", session_id=sid, pid=pid)
        return run

    def adopt(self, row: dict[str, Any], unrecorded: tuple[int, float] | None = None, *,
              never_ran: Callable[[dict[str, Any]], Any] | None = None, remote: bool = True) -> bool:
        """Take over a runner that outlived a previous daemon; False (and the session is lost) if it is gone.
        ``unrecorded``: the (pid, create time) of its runner found by title (daemon/orphans.py) when the
        previous daemon died before it recorded ``session.launched``, once it proved itself (orphans.Claims).
        ``never_ran``: for a session that no runner ever ran (daemon/recovery.py): called with it, to start it,
        instead of recording it lost, when no remote launcher has an actor of it either (a remote launcher answers
        later: then it is called from :meth:`on_exit`). ``remote``: whether to ask the remote launcher at all (a
        session placed on this machine is not asked for)."""
        sid, pid, ctime = row["id"], row["pid"], row["pid_create_time"]
        if not pid and unrecorded is not None:  # recorded now; if it ended meanwhile, it ends as below
            pid, ctime = unrecorded
            self.post(sid, "session.launched", {"pid": pid, "create_time": ctime, "launcher": "template",
                                                "recovered": True, "run_key": True})
        if pid and not is_same_process(pid, ctime) and titled(pid) == sid:
            # Its create time moved, not the process: psutil derives it from the boot time, which the kernel
            # computes from the wall clock, so a clock step (NTP) between launch and now shifts it by the step.
            # The runner's title names this session: no other process has it unless this user's own code put it
            # on a process that also took this very pid.
            now = create_time_of(pid)
            self.log.warning("runner's start time moved since it was recorded (the clock was set?): adopted by "
                             "its title", session_id=sid, pid=pid, recorded=ctime, now=now)
            ctime = now if now is not None else ctime
        if pid and is_same_process(pid, ctime):
            limits = Limits.from_dict(row["limits"])
            started = row["started_at"] or row["created_at"]
            self.running[sid] = Running(sid, pid, ctime, limits, started, adopted=True)
            self.monitor.watch(sid, pid, limits, started)
            self.post(sid, "session.adopted", {"pid": pid})
            self.log.info("runner adopted", session_id=sid, pid=pid)
            return True
        if not pid:  # pid 0: started by a remote launcher (Ray), or None: never recorded as started
            if remote and self._adopt_remote(row, never_ran):
                return True
            if never_ran is not None:
                never_ran(row)
                return False
            why = "no local runner to adopt (never started, or it ran on a Ray node)"
            # lost unless its record says how it ended: ingest reads the spool of a runner that ran unrecorded (the
            # last daemon died before storing its launch) before it stores the end, and its outcome then decides
            self.post(sid, "session.ended", {"lost_reason": why, "ended_by": "vanished"})
            self.log.warning("no runner to adopt", session_id=sid, reason=why)
            return False
        # The runner ended while no daemon watched it (or just before this one adopted it). Ingest reads
        # its spool before recording the end, so a session that reported its own outcome ends with it;
        # only one that never did is lost.
        self.post(sid, "session.ended", {"ended_by": "vanished"})
        self.log.warning("runner gone at adoption", session_id=sid, pid=pid)
        return False

    def _adopt_remote(self, row: dict[str, Any], never_ran: Callable[[dict[str, Any]], Any] | None) -> bool:
        """Adopt a session without a local runner through a remote launcher (its Ray actor outlived the previous
        daemon); False if there is no remote launcher. The launcher answers later: ``session.adopted`` (and
        ``session.launched`` if the last daemon never recorded it), or an exit (:meth:`on_exit`: lost, or started if
        it never ran)."""
        adopt = getattr(self.launcher, "adopt_remote", None)
        if adopt is None:
            return False
        sid = row["id"]
        handle = adopt(sid, row["pid"] is None)
        if handle is None:
            return False
        started = row["started_at"] or row["created_at"]
        self.running[sid] = Running(sid, handle, 0.0, Limits.from_dict(row["limits"]), started, adopted=True,
                                    never_ran=(lambda: never_ran(row)) if never_ran is not None else None)
        self.log.info("adopting a remote session", session_id=sid, handle=handle)
        return True

    def stop(self, sid: str, by: str, grace: float, reason: str = "stop requested") -> bool:
        """Begin the shutdown ladder: ask politely, SIGTERM after ``grace``, SIGKILL after term_grace."""
        run = self.running.get(sid)
        if run is None:
            return False
        if run.step is None:
            run.step, run.grace, run.stop_asked = "cooperative", grace, (by, reason)
            run.deadline = time.monotonic() + grace
            self.post(sid, "session.stopping", {"by": by, "reason": reason, "step": "cooperative", "grace": grace})
            self.send_runner(sid, "cancel", {"reason": reason})
        return True

    def carry_on_stop(self, sid: str, stopping: dict[str, Any], asked_at: float, default_grace: float) -> None:
        """An adopted session whose stop the last daemon began (``stopping``, its last ``session.stopping`` payload,
        recorded at ``asked_at``): the ladder goes on where it was, each rung's wait counted from when the last daemon
        took it (a daemon killed mid-stop forgot it, and a session that ignored the cooperative cancel ran to its
        end; one already sent SIGTERM was sent it again and waited a whole ``term_grace`` more)."""
        run = self.running.get(sid)
        if run is None or run.step is not None:
            return
        step = stopping.get("step")
        run.stop_asked = (str(stopping.get("by") or "daemon"), str(stopping.get("reason") or "stop requested"))
        if step == "sigkill":
            self._rung(run, "sigkill")
            return
        if step == "sigterm":  # already sent: SIGKILL once term_grace has passed since then
            run.step = "sigterm"
            run.deadline = time.monotonic() + max(0.0, asked_at + self.term_grace - time.time())
        else:
            grace = stopping.get("grace")
            grace = float(grace) if isinstance(grace, int | float) and not isinstance(grace, bool) else default_grace
            run.step, run.grace = "cooperative", grace
            run.deadline = time.monotonic() + max(0.0, asked_at + grace - time.time())
            self.send_runner(sid, "cancel", {"reason": run.stop_asked[1]})
        self.log.info("stop carried on after a restart", session_id=sid, by=run.stop_asked[0], step=run.step)

    def stopping(self, sid: str) -> bool:
        """Is ``sid`` ending: its runner being stopped (a stop or kill in progress), found gone by the monitor (its end
        is posted within ``VANISH_CONFIRM_S``), or gone and its end posted but not committed yet (for a moment the
        store still says it runs)? A resume then waits for the end (a live resume would go to no runner)."""
        run = self.running.get(sid)
        if run is not None:
            return run.step is not None or bool(run.vanished_at)
        posted = self._ending.get(sid)
        return posted is not None and time.monotonic() - posted < ENDING_S and sid not in self.queue

    def _ended(self, sid: str) -> None:
        now = time.monotonic()
        self._ending[sid] = now
        if len(self._ending) > 1000:  # committed within moments: older entries say nothing any more
            self._ending = {s: t for s, t in self._ending.items() if now - t < ENDING_S}

    def kill(self, sid: str, by: str) -> bool:
        run = self.running.get(sid)
        if run is None:
            return False
        self.post(sid, "session.stopping", {"by": by, "reason": "kill requested", "step": "sigkill"})
        self._rung(run, "sigkill")
        return True

    def _rung(self, run: Running, step: str) -> None:
        run.step = step
        sig = signal.SIGTERM if step == "sigterm" else signal.SIGKILL
        self.launcher.signal(run.pid, signal.SIGCONT)  # a throttled (stopped) group must see the signal
        self.launcher.signal(run.pid, sig)
        self.monitor.signal_tree(run.sid, signal.SIGCONT)  # and so must its members outside the group (setsid)
        self.monitor.signal_tree(run.sid, sig)
        run.deadline = time.monotonic() + self.term_grace
        self.log.info("stop ladder", session_id=run.sid, step=step)

    def pause(self, sid: str, by: str, reason: str) -> bool:
        """Ask the runner to pause at its next step boundary."""
        if sid not in self.running:
            return False
        self.post(sid, "session.pause_requested", {"by": by, "reason": reason})
        self.send_runner(sid, "pause", {"by": by, "reason": reason})
        self.running[sid].pausing = (by, reason)
        return True

    def pausing(self, sid: str, status: str) -> dict[str, str] | None:
        """``{by, reason}`` of a pause asked of running session ``sid`` and not reached yet (its stored ``status``:
        one seen ``paused`` has reached it), else None."""
        run = self.running.get(sid)
        if run is None or run.pausing is None:
            return None
        if status not in ("running", "waiting_approval"):
            if status != "starting":
                run.pausing = None  # paused (or ending): reached
            return None
        return {"by": run.pausing[0], "reason": run.pausing[1]}

    def resume(self, sid: str, by: str, budget: float | None = None) -> bool:
        """Continue a paused session (``budget``: its new one, USD), or cancel a pause it has not reached yet."""
        if sid not in self.running:
            return False
        self.send_runner(sid, "resume", {"by": by} if budget is None else {"by": by, "budget": float(budget)})
        self.running[sid].pausing = None  # also cancels a pause not reached yet
        return True

    def watch_approval(self, sid: str, approval_id: str, deadline: float, policy: str) -> None:
        self.approval_deadlines[approval_id] = (sid, deadline, policy or "reject")

    def on_exit(self, info: ExitInfo) -> None:
        sid = next((s for s, r in self.running.items() if r.pid == info.pid), None)
        if sid is None:
            return
        run = self.running.pop(sid)
        if run.unrecorded:  # its tree is buried (killed) like any session's, and nothing is posted
            self.monitor.unwatch(sid)
            return
        if info.absent and run.never_ran is not None and run.step is None:  # no actor of it: it never ran
            try:
                run.never_ran()
                return
            except Exception as exc:  # noqa: BLE001 - the store unreachable: recorded lost, not left `created`
                self.log.error("could not start a session that never ran", session_id=sid, error=str(exc)[:300])
        if info.failed is not None:  # a remote launch the cluster refused: as when launch() raises
            self.post(sid, "session.ended", {"status": "failed", "reason": f"launch failed: {info.failed}",
                                             "ended_by": "launch"})
            self._ended(sid)
            self.log.warning("launch failed", session_id=sid, error=info.failed)
            return
        killed = self.monitor.take_kill(sid, run.pid)
        if run.step is None and killed is not None:  # killed for a limit, its note still on its way: posted here,
            self.post(sid, "limit.exceeded", killed)  # before the end (the note, when it comes, finds no session)
            run.step = "sigkill"
        if run.step is None and run.limits.memory is not None:  # killed by the kernel at its cgroup's memory limit?
            def breached(note: dict[str, Any]) -> None:
                self.post(sid, "limit.exceeded", note)
                run.step = "sigkill"

            self.monitor.kernel_breach(sid, run.limits.memory, breached)
        self._final_sample(sid)
        # Processes the workflow left behind in the session's group go with it (SIGTERM, then SIGKILL).
        if self.launcher.signal(run.pid, signal.SIGTERM):
            self._leftovers[run.pid] = time.monotonic() + LEFTOVER_GRACE_S
        payload: dict[str, Any] = {"ended_by": run.step or ("lost" if info.reason else "exit")}
        if info.exit_code is not None:
            payload["exit_code"] = info.exit_code
        if info.signal is not None:
            payload["signal"] = info.signal
        if info.cpu is not None:
            payload["cpu_seconds"] = info.cpu
        if info.reason:  # lost, not ended (a remote runner's actor or node died): the launcher says why
            payload["lost_reason"] = info.reason
        if info.signal is not None or info.exit_code:  # a crash of the runner itself leaves its text there
            crash = crash_text(run.crash_file, run.secrets) if info.crash is None else crash_text_of(
                *info.crash, run.secrets)  # a Ray runner's: read on its node
            if crash:
                payload["runner_stderr"] = crash
        self.post(sid, "session.ended", payload)
        self._ended(sid)
        # the crash text is the session's (its code can write it): recorded in the session, not in the daemon's log
        self.log.info("session ended", session_id=sid, **{k: v for k, v in payload.items() if k != "runner_stderr"},
                      runner_stderr=len(payload.get("runner_stderr") or ""))

    def _final_sample(self, sid: str) -> None:
        """Record the peaks once more at the end (short sessions may never reach a periodic sample)."""
        snap = self.monitor.snapshot_of(sid)
        self.monitor.unwatch(sid)
        if snap is not None and snap["peak_rss"]:
            self.post(sid, "resource.sample", {k: snap[k] for k in
                                               ("rss", "cpu_percent", "num_procs", "peak_rss", "peak_cpu_percent")})

    def tick(self) -> None:
        self.claims.settle(self.adopt, self._settled_stop,
                           lambda sid, by: self._end_queued(sid, "cancelled", f"stopped while queued (by {by})"))
        self.pump()
        for pgid, deadline in list(self._leftovers.items()):
            if time.monotonic() >= deadline:
                del self._leftovers[pgid]
                self.launcher.signal(pgid, signal.SIGKILL)
        wall = time.time()
        for aid, (sid, deadline, policy) in list(self.approval_deadlines.items()):
            if wall >= deadline:
                # Ingest drops this if a client resolved it first: each approval resolves exactly once.
                del self.approval_deadlines[aid]
                decision = policy if policy in ("approve", "reject") else "fail"
                self.post(sid, "approval.resolved", {"approval_id": aid, "decision": decision, "by": "timeout",
                                                     "via": "timeout"})
        now = time.monotonic()
        for run in list(self.running.values()):
            if run.vanished_at and (run.adopted or now - run.vanished_at > VANISH_CONFIRM_S):
                # no exit status can be had for a process that is not our child (or whose reaper died)
                self.running.pop(run.sid)
                self._final_sample(run.sid)
                self.post(run.sid, "session.ended", {"ended_by": run.step or "vanished"})
                self._ended(run.sid)
                continue
            if run.step and now >= run.deadline:
                if run.step == "cooperative":
                    self._rung(run, "sigterm")
                    # recorded once sent, so that a daemon adopting the session after a restart waits out the rest
                    # of this rung instead of starting it again (a kill before this is posted: it starts again)
                    by, reason = run.stop_asked
                    self.post(run.sid, "session.stopping", {"by": by, "reason": reason, "step": "sigterm"})
                elif run.step == "sigterm":
                    self._rung(run, "sigkill")
