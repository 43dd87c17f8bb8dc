"""The limits monitor: one pass over the process table per tick for all sessions, limit enforcement, throttling.

One thread for all sessions. Each pass reads every ``/proc/<pid>/stat`` once (:mod:`labd.daemon.proctable`)
and walks the parent -> children map from each runner, so the cost grows with the number of processes on
the box, not with sessions x processes. A session's tree is its runner's descendants plus processes that
escaped it (:mod:`labd.daemon.membership`).

Periods: a pass every ``sample_interval`` (2 s) while no watched session has a memory limit or is past half its
process-count limit, every ``limit_interval`` (0.1 s) while one is, and at once after a fork storm
(:mod:`labd.daemon.forkrate`); a session whose memory is past half its limit is re-read between passes every
``NEAR_TICK_S`` (its known members only). Memory (PSS, plus memfd and tmpfs files held) is measured and checked
by :mod:`labd.daemon.memory_check`. Children of the runner template that the template did not fork are killed
(:mod:`labd.daemon.escapees`). A breach kills the tree at once;
wall-time and process-count breaches go to the supervisor (notes). ``record_interval`` sets how often a
``resource.sample`` event may be recorded: only when a figure moved, or every ``IDLE_RECORD_S`` otherwise
(:mod:`labd.ipc.samples`, the rule the node monitor of a remote session uses too).

CPU limits are enforced by throttling (:func:`labd.daemon.watched.throttle`): a token bucket per session
refilled at the quota (a fraction of one core); when the tree has used more CPU than it earned, the process group
and every tree member are stopped (SIGSTOP) until the debt is paid, then continued. CPU includes reaped children
(``cutime + cstime``).

When a session ends, :meth:`Monitor.unwatch` *buries* it (:mod:`labd.daemon.burial`): whatever is left of its tree
is sent SIGTERM, then SIGKILL after a grace, and hunted a while more (double-forked escapees); each pass finds the
members of the burials going on as it finds those of the watched sessions.

The thread never dies of one failed step: a pass, a quick re-read, the wall-time check or throttling that raises
(listing /proc with no file descriptor left: ``EMFILE``) is logged (:class:`labd.daemon.warnlimit.FailureLog`: the
first failure, then a line a minute, then "works again") and tried again on the next tick; the wall-time check
needs no /proc read, so timeouts are enforced while passes fail. :meth:`Monitor.health` (in ``labd status``) says
when the last good pass is older than :data:`STALE_AFTER_S` or passes are failing: limits are not enforced then.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from labd.daemon.breaches import Breaches
from labd.daemon.burial import Burials
from labd.daemon.cgroups import SessionCgroups
from labd.daemon.escapees import Escapees
from labd.daemon.forkrate import ForkRate
from labd.daemon.ingest import INGEST_IN, INGEST_NOTIFY
from labd.daemon.launcher import signal_group
from labd.daemon.limits import Limits
from labd.daemon.membership import attribute, extend
from labd.daemon.memory_check import NEAR_FRACTION, MemoryCheck
from labd.daemon.oom_guard import OomGuard
from labd.daemon.proctable import MarkerCache, ProcTable, PssCache, read_proc
from labd.daemon.shmem import ShmemCache
from labd.daemon.warnlimit import FailureLog
from labd.daemon.watched import Watched, figures, kill_proc, sample_payload, signal_members, throttle
from labd.ipc.samples import worth_recording

__all__ = ["Monitor"]

THROTTLE_TICK_S = 0.02
NEAR_TICK_S = 0.025  # re-read of a session past NEAR_FRACTION of its memory limit (daemon/memory_check.py)
#: a new session's first pass comes this long after its launch: not while its runner starts up (the pass
#: would compete with it for the CPU), soon enough to catch the peaks of a short session
FRESH_DELAY_S = 0.05
#: the last good pass older than this (or sample_interval x 3, if more) is reported as stale in ``labd status``
STALE_AFTER_S = 10.0
#: the loop's steps, as logged when they fail (:meth:`Monitor._step`), and as named in :meth:`Monitor.health`
PASS = "limits monitor: a pass over the process table failed; limits are not enforced until one works"
QUICK = "limits monitor: re-reading a session close to its memory limit failed"
TIMEOUTS = "limits monitor: checking wall-time limits failed"
THROTTLE = "limits monitor: CPU throttling failed"
OOM = "limits monitor: checking the daemon's OOM score failed"
STEPS = {PASS: "pass", QUICK: "quick", TIMEOUTS: "timeouts", THROTTLE: "throttle", OOM: "oom_score"}


class Monitor(Breaches, threading.Thread):
    """Samples and enforces limits; talks to ingest (events) and the supervisor (notes) over inproc."""

    def __init__(self, zctx: zmq.Context, sample_interval: float, record_interval: float,
                 limit_interval: float = 0.1, cgroups: SessionCgroups | None = None) -> None:
        super().__init__(name="labd-monitor", daemon=True)
        self.zctx = zctx
        self.sample_interval = sample_interval
        self.limit_interval = min(limit_interval, sample_interval)
        self.record_interval = record_interval
        self._lock = threading.Lock()
        self._watched: dict[str, Watched] = {}
        #: session -> (runner pid, note) of a kill for a limit, until the supervisor takes it at the exit (take_kill)
        self._kills: dict[str, tuple[int, dict[str, Any]]] = {}
        self.burials = Burials(cgroups)  # ended sessions' leftovers being terminated (daemon/burial.py)
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._changes = 0  # changes to what is watched (_changed_watch)
        self.table = ProcTable()
        self.pss = PssCache()
        self.markers = MarkerCache()
        self.shmem = ShmemCache()
        self.memory = MemoryCheck(self.pss, self.shmem, self._memory_breached)
        self.forks = ForkRate()  # a fork storm brings the next pass forward (daemon/forkrate.py)
        self.escapees = Escapees()  # its template view is set once the launcher is up (daemon/server.py)
        self.cgroups = cgroups  # the sessions' kernel limits, where the daemon makes them (daemon/cgroups.py)
        self.passes = 0
        self.log = structlog.get_logger("labd.monitor")
        self.failures = FailureLog(self.log, "limits monitor works again")
        self.oom = OomGuard(self.log)  # session code may raise the daemon's OOM score: put back after each pass
        self.passed_at = time.monotonic()  # the last good pass (or the start)
        self._deadline = time.time()  # wall-clock time of the next wall-time limit (set by _timeouts)

    # ---- called from the supervisor (main thread) -------------------------------------------------
    def watch(self, sid: str, pid: int, limits: Limits, started: float) -> None:
        try:
            p = read_proc(pid, strict=True)
            if p is None:  # gone already (it ended before its watch): what it left is buried as any run's (its group
                self.burials.resumed(sid, pid)  # released at the end: no unwatch will bury it)
                self.burials.bury(Watched(sid, pid, limits, started))
                self._changed_watch()
                return
        except OSError as exc:  # no fd left to read it: watch it anyway (the first good pass reads its start)
            self.log.warning("limits monitor: cannot read a runner's process; watching it anyway",
                             session_id=sid, pid=pid, error=str(exc))
            p = None
        # A runner adopted after a daemon crash may have been left stopped by the old daemon's throttle.
        signal_group(pid, signal.SIGCONT)
        if self.cgroups is not None:
            self.cgroups.adopt(sid, pid)  # its group, if the last daemon made one
        with self._lock:
            now = time.monotonic()
            self._watched[sid] = Watched(sid, pid, limits, started, start_key=p.start if p else None,
                                          watched_at=now, keys={p.key} if p else set())
            self._changes += 1  # with the change itself: the loop's copy has it, or its next tick is a full one
        try:
            self.burials.resumed(sid, pid)  # a resume before its last run's burial was over: that burial ends now
        finally:
            self._changed_watch()

    def unwatch(self, sid: str, bury: bool = True, only: Watched | None = None) -> bool:
        """Stop watching ``sid`` (with ``only``: if it is still watched as ``only``, not as a run watched since);
        with ``bury``, terminate whatever of its tree outlived the runner. False: it was not watched (so)."""
        with self._lock:
            w = self._watched.get(sid)
            if w is None or (only is not None and w is not only):
                return False
            del self._watched[sid]
            self._changes += 1
        try:
            if bury:
                self.burials.bury(w)
            if w.stopped_until:
                signal_members(w, signal.SIGCONT)  # never leave a group stopped behind
        finally:
            self._changed_watch()  # again: the burial is a change too
        return True

    def signal_tree(self, sid: str, sig: int) -> None:
        """Send ``sig`` to every process of the session's tree outside the runner's group (setsid children);
        the supervisor signals the group itself."""
        with self._lock:
            w = self._watched.get(sid)
            members = list(w.members) if w is not None else []
        for p in members:
            if p.pgid != (w.pid if w else 0):
                kill_proc(p, sig)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Live figures of every watched session."""
        with self._lock:
            return {sid: figures(w) for sid, w in self._watched.items()}

    def snapshot_of(self, sid: str) -> dict[str, Any] | None:
        """Live figures of one session (None if not watched)."""
        with self._lock:
            w = self._watched.get(sid)
            return figures(w) if w is not None else None

    def health(self) -> dict[str, Any]:
        """For ``labd status``: is the monitor enforcing limits? ``ok`` is false when the thread is gone, the last
        good pass is stale or passes are failing (then ``error``, ``failures`` in a row, ``failing_for_s``)."""
        ago = time.monotonic() - self.passed_at
        stale = ago > max(STALE_AFTER_S, 3 * self.sample_interval)
        out: dict[str, Any] = {"alive": self.is_alive(), "passes": self.passes, "last_pass_s_ago": round(ago, 1),
                               "stale": stale, "oom_score_restored": self.oom.restored}
        failing = [(name, f) for what, name in STEPS.items() if (f := self.failures.failing(what)) is not None]
        if failing:
            f = failing[0][1]
            out.update(failing=[name for name, _ in failing], error=f.error, failures=f.count,
                       failing_for_s=round(time.monotonic() - f.since, 1))
        out["ok"] = out["alive"] and not stale and not failing
        return out

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def _changed_watch(self) -> None:
        """Wake the thread for a change to what it watches; its quiet ticks are only for nothing changed since its
        last full one (a count, not the event alone: a set between its wait's timeout and its clear is not lost)."""
        with self._lock:
            self._changes += 1
        self._wake.set()

    # ---- thread -----------------------------------------------------------------------------------
    def run(self) -> None:
        self.out = self.zctx.socket(zmq.PUSH)
        self.out.connect(INGEST_IN)
        self.notes = self.zctx.socket(zmq.PUSH)
        self.notes.connect(INGEST_NOTIFY)
        next_pass = last_pass = time.monotonic()
        next_record = next_pass + self.record_interval
        seen, quiet, counted = -1, False, False
        try:
            while not self._halt.is_set():
                if self.cgroups is not None:
                    self.cgroups.make_ahead()  # the next runner's group, named by a launch (which woke us)
                now = time.monotonic()
                storm = counted and self.forks.burst()
                if quiet and seen == self._changes and not storm and now < next_pass and time.time() < self._deadline:
                    # A tick that only looks for a fork storm: nothing else can be due. Every change to what is
                    # watched (a watch, an unwatch, a burial) is counted, and the last full tick found no session near
                    # a limit, throttled, new or buried. 100 idle sessions: ~0.15 % of a core less than a full tick's
                    # look at each of them ten times a second (docs/benchmarks.md §64).
                    wait = min(next_pass - now, self._deadline - time.time())
                    self._wake.wait(max(0.002, min(wait, self.limit_interval) if counted else wait))
                    self._wake.clear()
                    continue
                with self._lock:
                    watched = list(self._watched.values())
                    seen = self._changes
                buried = bool(self.burials)
                strict = buried or any(w.limits.strict or w.procs_near for w in watched)
                fresh = [w.watched_at for w in watched if w.fresh]
                if fresh:  # a new session is sampled soon, but not while its runner starts (a pass is a few ms
                    # of CPU on a 2-core box, competing with the runner's first output), and a burst of starts
                    # costs one pass per period
                    next_pass = min(next_pass, max(last_pass + self.limit_interval, min(fresh) + FRESH_DELAY_S))
                counted = any(w.limits.procs is not None for w in watched)
                if storm:
                    next_pass = min(next_pass, last_pass + self.limit_interval)  # a storm: pass now, not in 2 s
                if now >= next_pass:
                    record = now >= next_record
                    if record:
                        next_record = now + self.record_interval
                    if self._step(PASS, self._pass, watched, now, record):
                        self.passed_at = now
                    self._step(OOM, self.oom.check)
                    last_pass = now  # a failed pass is tried again next period, like any
                    # strict as the pass left it: a session it found past half its procs gets the fast period now
                    strict = strict or any(w.procs_near for w in watched)
                    next_pass = now + (self.limit_interval if strict else self.sample_interval)
                else:
                    self._step(QUICK, self.memory.quick_all, watched)
                self._deadline = time.time() + self.limit_interval  # should the check fail: again soon
                self._step(TIMEOUTS, self._timeouts, watched)  # reads no /proc: works while passes fail
                throttled = any(w.limits.cpu is not None for w in watched)
                if throttled:
                    self._step(THROTTLE, self._throttle_all, watched, now)
                wait = next_pass - time.monotonic()
                if throttled:
                    wait = min(wait, THROTTLE_TICK_S)
                near = any(w.near for w in watched)
                if near:
                    wait = min(wait, NEAR_TICK_S)
                if counted:  # look for a fork storm every tick (one small read: daemon/forkrate.py)
                    wait = min(wait, self.limit_interval)
                wait = min(wait, self._deadline - time.time())
                quiet = not (strict or throttled or near or buried or any(w.fresh for w in watched))
                self._wake.wait(max(0.002, wait))
                self._wake.clear()
        finally:
            with self._lock:
                for w in self._watched.values():
                    if w.stopped_until:
                        signal_members(w, signal.SIGCONT)
            self.out.close(0)
            self.notes.close(0)

    def _step(self, what: str, fn: Callable[..., None], *args: Any) -> bool:
        """One step of the loop; an exception is logged (the first, then a line a minute, then "works again") and
        the step is tried again on a later tick: the thread must outlive any failure (no fd left: EMFILE)."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a dead monitor enforces no limit ever again
            self.failures.failed(what, exc)
            return False
        self.failures.worked(what)
        return True

    @staticmethod
    def _throttle_all(watched: list[Watched], now: float) -> None:
        for w in watched:
            if w.limits.cpu is not None:
                throttle(w, now)

    def _timeouts(self, watched: list[Watched]) -> None:
        """Report sessions over their wall-time limit (no process-table read needed); sets ``_deadline``, the
        wall-clock time of the next timeout, so the loop wakes for it whatever the pass period."""
        wall = time.time()
        nearest = wall + 3600.0
        for w in watched:
            lim = w.limits.timeout
            if lim is None or w.timeout_reported:
                continue
            due = w.started + lim
            if wall > due:
                w.timeout_reported = True
                self.notes.send_pyobj(("limit", w.sid, {"limit": "wall time", "measured": round(wall - w.started, 3),
                                                        "max": lim, "unit": "seconds", "action": "stop"}, None, w.pid))
            else:
                nearest = min(nearest, due + 0.001)
        self._deadline = nearest

    def _event(self, sid: str, kind: str, payload: dict[str, Any]) -> None:
        self.out.send_pyobj(("event", sid, kind, payload, None, None, time.time()))

    def _pass(self, watched: list[Watched], now: float, record: bool) -> None:
        """One read of the process table; every session sampled from it."""
        procs = self.table.scan()
        self.shmem.begin()
        self.passes += 1
        buried = self.burials.pending()
        found = attribute(self.table, procs, watched, buried, self.markers, time.time())
        for w in found.gone:
            self._vanished(w)
        self.escapees.handle(self.table, {w.pid for w in found.alive}, found.owner_of, now, self.log,
                             lambda sid, text: self._event(sid, "log", {"level": "warning", "logger": "labd.monitor",
                                                                      "event": text}))
        if self.passes % 10 == 0:  # dropping dead processes' cache entries need not happen every pass
            if self.cgroups is not None:
                self.cgroups.sweep()  # groups of ended sessions whose last processes were still dying
            self.pss.prune(procs)
            self.markers.prune(procs)
            self.shmem.prune(procs)
        for w in found.alive:
            extend(w, found, self.table, procs)
            self._sample(w, now, record)
        for b in buried:
            self.burials.hunt(b, self.table.tree(found.extra.get(b.sid, [])), now)

    def _vanished(self, w: Watched) -> None:
        # The pass works on a copy of the watched sessions: by now ``w``'s session may have ended and been resumed,
        # its new runner watched under the same id (an exploratory test: this unwatched and buried the resumed
        # runner, ~1 resume in 10 right after a kill). Only ``w`` itself is unwatched; the note names its pid.
        if w.limits.memory is not None and self.cgroups is not None:
            # The kernel may have killed the runner itself at its group's memory limit. Once unwatched, the
            # supervisor's own check at the exit finds nothing to ask (the session ended "runner killed by SIGKILL",
            # not "killed: memory ... (held by the kernel)": seen once in the full suite); the limit note goes first.
            self.kernel_breach(w.sid, w.limits.memory, lambda note: self._limit_note(w, note, sample_payload(w)), w)
        if not self.unwatch(w.sid, only=w):
            return
        # The last sample rides on the note (the supervisor's final sample will find the session unwatched): posted
        # by the supervisor, it is ordered before the session.ended it posts, as the breach's sample below.
        self.notes.send_pyobj(("vanished", w.sid, None, sample_payload(w) if w.peak_memory else None, w.pid))

    def _sample(self, w: Watched, now: float, record: bool) -> None:
        sid, lim, members = w.sid, w.limits, w.members
        w.fresh = False
        w.rss = sum(p.rss for p in members)
        w.num_procs = len(members)
        self.memory.check(w, self.memory.estimate(members, exact=record))
        if lim.memory is not None and self.cgroups is not None and not w.breached:
            self.kernel_breach(sid, lim.memory, lambda note: self._limit_note(w, note, sample_payload(w)), w)
        total = sum(p.cpu for p in members)
        if w.cpu_at:
            w.cpu_percent = max(0.0, (total - w.cpu_total) / max(1e-6, now - w.cpu_at) * 100.0)
        w.cpu_total, w.cpu_at = total, now
        w.peak_cpu = max(w.peak_cpu, w.cpu_percent)
        w.procs_near = lim.procs is not None and w.num_procs > lim.procs * NEAR_FRACTION
        if lim.procs is not None and w.num_procs > lim.procs and not w.procs_reported and not w.breached:
            w.procs_reported = w.breached = True
            self._limit_note(w, {"limit": "processes", "measured": w.num_procs, "max": lim.procs,
                                 "unit": "processes", "action": "kill"}, None)
            self.log.warning("process limit exceeded: killing", session_id=sid, procs=w.num_procs, limit=lim.procs)
            self._kill_tree(w)
            self._record(w)
        elif record and self._changed(w, now):
            self._record(w)
        if record and self.cgroups is not None:
            self._tasks_refused(w)

    def _tasks_refused(self, w: Watched) -> None:
        """Say in the session's record when the kernel refused it threads or processes at its task bound (its code
        sees EAGAIN from fork or thread start, and may not say why). Read only when the session used CPU since the
        last look (a refused fork is CPU spent): idle sessions cost no read (500 idle sessions: 250 reads a second)."""
        if w.cpu_total == w.tasks_checked_cpu or self.cgroups is None:
            return
        w.tasks_checked_cpu = w.cpu_total
        refused = self.cgroups.task_refusals(w.sid)
        if refused > w.tasks_refused:
            w.tasks_refused = refused
            self._event(w.sid, "log", {"level": "warning", "logger": "labd.monitor",
                                       "event": f"the session reached its task limit ([daemon] session_tasks: threads "
                                                f"and processes together): the kernel refused {refused} new ones "
                                                "so far"})

    @staticmethod
    def _changed(w: Watched, now: float) -> bool:
        """Is a periodic sample worth an event? (:func:`labd.ipc.samples.worth_recording`)"""
        return worth_recording(w.recorded, (w.memory, w.cpu_percent, w.num_procs, w.peak_memory, w.peak_cpu),
                               now - w.recorded_at)

    def _record(self, w: Watched) -> None:
        self._event(w.sid, "resource.sample", sample_payload(w))
