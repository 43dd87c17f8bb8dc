"""The daemon: wires store, ingest, monitor, launcher and supervisor together and runs the main loop.

Threads: the main thread serves control requests (:mod:`labd.daemon.control`) and supervises runners;
``labd-ingest`` is the only store writer; ``labd-monitor`` samples and enforces limits. Signal handlers only
record; the main loop acts on them. Stopping the daemon never stops sessions: runners carry on and a restarted daemon
adopts them -- unless it runs with ``drain`` (``labd serve --drain``): then SIGTERM first stops every
running session gracefully (the ordinary stop ladder), waits for them to end, and only then exits.
Under systemd it reports readiness, status and watchdog pings (:mod:`labd.daemon.systemd`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Generator
from typing import Any

import structlog
import zmq

from labd.daemon.api.branch_keys import InFlight
from labd.daemon.api.start import PendingStart, session_spec, store_down
from labd.daemon.cgroups import session_cgroups
from labd.daemon.checks import Check, Checks
from labd.daemon.config import Config
from labd.daemon.control import ControlPlane
from labd.daemon.events_auth import LocalEventsAuth
from labd.daemon.inbound import Ceiling, bind_control, rebind
from labd.daemon.indexer import Indexer
from labd.daemon.ingest import INGEST_IN, INGEST_NOTIFY, Ingest
from labd.daemon.memory import limit_arenas, trim
from labd.daemon.monitor import Monitor
from labd.daemon.queue import RunQueue
from labd.daemon.reads import Reads
from labd.daemon.recovery import recover
from labd.daemon.reply_budget import ReplyBudget
from labd.daemon.retention import Retention
from labd.daemon.runtime_watch import RuntimeWatch
from labd.daemon.sandboxing import SandboxSetup
from labd.daemon.services import GatewayError, launchers, start_gateway, start_telemetry
from labd.daemon.startup import AlreadyRunning, Startup, begin, signing_key
from labd.daemon.store_identity import check_home, record_store, session_ids_of
from labd.daemon.store_lock import ServerStoreLock
from labd.daemon.supervisor import Supervisor
from labd.daemon.systemd import Heartbeat, Notifier
from labd.daemon.teardown import Built, tear_down
from labd.daemon.warnlimit import WarnLimiter
from labd.ipc.connection import ConnectionInfo, write_connection_file
from labd.ipc.wire import Codec
from labd.runner.workflows.registry import WorkflowError, bind_params, describe, is_builtin, parse_target, resolve
from labd.store.db import Checkpointer, is_sqlite, migrate, open_engine
from labd.store.known_keys import KnownKeys
from labd.store.queries import Store
from labd.store.writer import BatchWriter

__all__ = ["Daemon", "AlreadyRunning", "GatewayError"]

from labd import __version__ as VERSION

#: message ids the control socket remembers for its replay window (~250 bytes each: ~25 MB at most). A client
#: flooding it past that makes the guard refuse older requests, never take a replay (ReplayGuard's strict mode)
CONTROL_REPLAY_IDS = 100_000


class Daemon(SandboxSetup, ControlPlane):
    """One labd daemon bound to one home."""

    version = VERSION

    notifier: Notifier

    def __init__(self, cfg: Config, *, drain: bool = False, startup: Startup | None = None) -> None:
        """``startup``: the first steps already taken (daemon/startup.py: ``labd serve`` takes them before it
        imports this module); :meth:`serve` takes them otherwise."""
        limit_arenas()  # before any thread starts: bounded RSS after bursts (daemon/memory.py)
        self.cfg = cfg
        self.drain = drain  # stop the sessions on SIGTERM/SIGINT and wait for them before exiting
        self.draining = False  # set once that has begun: new sessions are refused
        self._startup = startup
        self.layout = cfg.layout
        self.log = structlog.get_logger("labd.daemon")
        self._warn = WarnLimiter(self.log)  # dropped control frames: a line a second per reason, not per frame
        self.counters: dict[str, int] = {}
        self.last_seen: dict[str, float] = {}
        self.started = time.time()
        self._signals: list[int] = []
        self.checkpointer: Checkpointer | None = None  # SQLite's log checkpoints (set in serve)
        #: request id -> how to build the reply once ingest has committed what the request caused
        self._deferred: dict[str, Any] = {}
        self._parts_ok: dict[str, None] = {}
        #: large replies ZeroMQ holds for clients that have not read them, and their budget (daemon/reply_budget.py)
        self.replies_held = ReplyBudget(int(cfg.max_unread_replies))
        #: the daemon's own memory, past which its inbound connections are dropped (daemon/inbound.py)
        self.ceiling = Ceiling(cfg.memory_ceiling)  # type: ignore[arg-type]  # a size once loaded
        self.trim_at = 0.0  # when to hand memory freed by a reset back to the kernel
        self.checks = Checks(lambda c: self.launcher.inspect_start(c.workflow, c.params, c.path,
                                                                   self.runner_confine_spec(None)))
        self.reads = Reads()  # long store reads (replay seeds, comparisons) on worker threads: daemon/reads.py
        #: session.start idempotency keys not yet committed (key -> PendingStart), and the request that carries
        #: each (api/start.py); dropped once ingest committed or refused the start
        self.idempotent_starts: dict[str, PendingStart] = {}
        self.idempotent_requests: dict[str, str] = {}
        #: retries of a start that is not committed yet, by the first start's request id: they are answered
        #: with it, once the session is in the store (so the session a retry names can always be read)
        self.idempotent_waiters: dict[str, list[tuple[bytes, str]]] = {}
        self.branches_in_flight = InFlight()  # session.branch keys not yet committed (daemon/api/branch_keys.py)
        self.runtime_watch = RuntimeWatch(self.layout)  # its connection file and sockets, removed under it
        self.failed = False  # set when the daemon stops because a part of it broke (exit code 1)

    # ---- helpers used by request handlers ---------------------------------------------------------
    def post_event(self, sid: str, kind: str, payload: dict[str, Any], node_id: str | None = None,
                   reply_to: tuple[bytes, str] | None = None) -> None:
        """Hand a daemon-side event to ingest (persisted, then published, like every event), stamped now: when it
        happened, not when ingest stages it (a session's runner can have started by then)."""
        self._to_ingest.send_pyobj(("event", sid, kind, payload, node_id, reply_to, time.time()))

    def post_events(self, events: list[tuple[str, str, dict[str, Any], tuple[bytes, str] | None]]) -> None:
        """Several daemon events ``(session, kind, payload, reply_to)``, stored in one transaction: all or none."""
        now = time.time()
        self._to_ingest.send_pyobj(("events", [("event", sid, kind, payload, None, reply_to, now)
                                               for sid, kind, payload, reply_to in events]))

    def delete_sessions(self, sids: list[str], reply_to: tuple[bytes, str] | None = None,
                        result: Any = None) -> None:
        """Ask ingest to delete whole terminal sessions; their directories go once the rows are gone."""
        # who deleted what, in the daemon's log (only the automatic policy said so): a client's rm or prune too
        self.log.info("deleting sessions", count=len(sids), sessions=sids[:20], by="client" if reply_to else "policy")
        if reply_to is not None and result is not None:
            self.defer(reply_to, result)
        self._to_ingest.send_pyobj(("delete", sids, reply_to))

    def write(self, op: str, arg: Any, reply_to: tuple[bytes, str]) -> None:
        """Ask ingest (the store's only writer) for a write that is not an event; the reply follows it."""
        self._to_ingest.send_pyobj((op, arg, reply_to))

    def send_runner(self, sid: str, type_: str, body: dict[str, Any]) -> None:
        self._to_ingest.send_pyobj(("send", sid, type_, body))

    def check_workflow(self, workflow: str, params: dict[str, Any],
                       path: list[str] | None = None) -> Generator[Check, dict[str, Any], dict[str, Any]]:
        """Resolve a workflow and bind its params without starting anything: ``{"ok": bool, ...}``.

        Built-ins are our own side-effect-free code and are checked here; user workflows are imported
        only in a throwaway child of the template (with the client's ``path`` first on ``sys.path``),
        never in the daemon, and without holding it up: handlers ``check = yield from
        daemon.check_workflow(...)`` and are resumed with the answer (:mod:`labd.daemon.checks`).
        """
        try:
            if is_builtin(workflow):
                fn = resolve(workflow)
                return {"ok": True, "params": bind_params(fn, params), "describe": describe(fn),
                        "function": fn.__name__}
            parse_target(workflow)  # a malformed name is refused without forking anything
        except WorkflowError as exc:
            return {"ok": False, "code": exc.code, "message": exc.message, "details": exc.details}
        return (yield Check(workflow, params, path))

    # ---- lifecycle --------------------------------------------------------------------------------
    def serve(self) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`). Raises :class:`AlreadyRunning` if another daemon
        serves the home."""
        start, self._startup = self._startup or begin(self.cfg), None
        self.notifier = start.notifier
        try:
            self._serve(start)
        except BaseException:
            start.template.abandon()  # failed before it waited for the template: not left importing
            raise
        finally:
            os.close(start.lock_fd)

    def _serve(self, start: Startup) -> None:
        cfg, layout = self.cfg, self.layout
        self.nofile = start.nofile
        engine = open_engine(cfg.db_url)
        self.store_lock: ServerStoreLock | None = None
        if engine.dialect.name == "postgresql":  # one daemon writes a PostgreSQL store (SQLite: lock_store's file)
            self.store_lock = ServerStoreLock(engine, cfg.db_url)
            self.store_lock.acquire()
        # before the migrations: a store of another home, or one older than this home saw it, is not touched at all
        # (migrated, it would refuse the older labd its own home may run)
        claim = check_home(layout, engine, cfg.db_url, lambda: session_ids_of(engine))
        # a migration over a big store takes a while (0012 sums every LLM call: ~5 s a million): systemd's start
        # timeout (TimeoutStartSec=120) must not kill it midway, to roll back and start over at every restart
        migrate(engine, on_pending=lambda: self.notifier.send(extend_timeout_usec=3_600_000_000,
                                                              status="migrating the store"))
        known_keys = KnownKeys()  # the store's idempotency keys in memory: a new key costs no store read
        known_keys.load(engine, time.time())
        self.store = Store(engine, known_keys)
        record_store(layout, cfg.db_url, lambda: bool(self.store.session_ids()))  # daemon/store_identity.py
        mark = claim.commit()
        # Before the runner socket is bound: a runner that outlived the previous daemon delivers its last
        # events and may exit as soon as it can connect, and adoption (below) must come right after that.
        self.cgroups = session_cgroups(layout.home, cfg.cgroups, cfg.session_tasks, self.log)  # before the probe
        self._probe_sandbox()
        key = signing_key(layout.home)
        self.info = ConnectionInfo(control=layout.endpoint("control"), events=layout.endpoint("events"),
                                   runners=layout.endpoint("runners"), key=key, pid=os.getpid(),
                                   home=str(layout.home), events_auth="plain",
                                   max_message=cfg.max_message)
        self.gateway = start_gateway(cfg, self.info)  # first: a bad --listen stops us before anything runs
        z = self.zctx = zmq.Context()
        events_auth = LocalEventsAuth(z, bytes.fromhex(key))  # before ingest binds
        notes = z.socket(zmq.PULL)
        notes.bind(INGEST_NOTIFY)
        checkpointer = self.checkpointer = Checkpointer(engine) if is_sqlite(cfg.db_url) else None
        if checkpointer is not None:
            checkpointer.start()
        writer = BatchWriter(engine, known_keys)
        writer.on_created = mark.add
        ingest = Ingest(z, writer, bytes.fromhex(key), self.info.runners, self.info.events,
                        self.counters, self.last_seen, cfg.max_message, sessions_dir=layout.sessions_dir,
                        secure_events=events_auth.secure,
                        max_session_record=None if cfg.max_session_record is None else int(cfg.max_session_record))
        ingest.start()
        # ready once it has read which run each resumed session's runner key is for: sessions are re-queued and
        # adopted only after that (a launch before it would give a resumed run the first run's key)
        while not ingest.ready.wait(1) and ingest.is_alive():
            pass
        self.ingest = ingest
        self._to_ingest = z.socket(zmq.PUSH)
        self._to_ingest.setsockopt(zmq.SNDTIMEO, 30_000)  # a stalled ingest must not hang the main loop forever
        self._to_ingest.connect(INGEST_IN)
        self.monitor = Monitor(z, cfg.sample_interval, cfg.record_interval, cfg.limit_interval, self.cgroups)
        self.monitor.start()
        # spawned by startup.begin (without secrets in its environment): ready by now, or waited for here
        clean_env, self.secrets = start.clean_env, start.secrets
        start.template.cgroups = self.cgroups  # local runners join theirs (daemon/cgroups.py)
        start.template.hints = self.template_hints  # the template's first spare prepares for them
        self.launcher = launchers(cfg, start.template, clean_env, self.info.runners)
        self.launcher.start()
        self.monitor.escapees.template = self.launcher.template_children  # the backstop (daemon/escapees.py)
        self.supervisor = Supervisor(self.launcher, self.monitor, self.post_event, self.send_runner,
                                     cfg.term_grace)
        total = cfg.memory_total
        self.supervisor.queue = RunQueue(cfg.max_sessions, int(total) if total is not None else None)
        self.supervisor.spec_for = lambda q: session_spec(self, q)
        known = recover(self)
        self.telemetry = start_telemetry(cfg, engine, layout.home)
        self.indexer = Indexer(layout.home, engine, ingest.index_hints)
        self.indexer.start()
        self.retention = Retention(layout.sessions_dir, engine, self.delete_sessions,
                                   older_than=cfg.retention_seconds, statuses=cfg.retention_statuses)
        self.retention.sweep(known)
        for ap in self.store.approvals(status="pending", limit=100_000, bound=(1, 1)):  # no prompt is needed here
            if ap["expires_at"]:
                self.supervisor.watch_approval(ap["session_id"], ap["id"], ap["expires_at"], ap["policy"] or "reject")
        control = self.control = bind_control(z, self.info.control, cfg.max_message)
        # strict: a request signed before this daemon started (captured, or queued for the one before it) is not
        # run again, and a full guard refuses rather than forgets (ipc/signing.py ReplayGuard)
        self.codec = Codec(bytes.fromhex(key), max_message=cfg.max_message, replay_ids=CONTROL_REPLAY_IDS,
                           strict_replay=True, not_before=time.time())
        write_connection_file(layout, os.getpid(), key=key, events_auth=self.info.events_auth,
                              max_message=cfg.max_message)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        # SIGHUP (the terminal of a `labd serve &` closed, a log rotation's signal): stopped as by SIGTERM, said so
        # in the log, never draining (it killed the daemon with no word, its connection file left behind)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        self.log.info("labd serving", home=str(layout.home), pid=os.getpid(), control=self.info.control,
                      template_pid=self.launcher.template_pid, adopted=sorted(self.supervisor.running))
        if self.launcher.clone_filter != "on":  # runner/process_setup.py, keep_in_tree
            self.log.warning("the runner template has no clone filter: a session's code can start processes outside "
                             "its runner's tree (the monitor kills them within a second or two)",
                             clone_filter=self.launcher.clone_filter)
        # Ready only now: migrated, sockets bound, template up, connection file written, signal handlers set.
        if self.store_lock is not None:
            self.store_lock.start()  # keeps the lock through the server's outages
        heartbeat = Heartbeat(self.notifier)
        self.notifier.ready(f"serving {layout.home}; {len(self.supervisor.running)} sessions adopted")
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(notes, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        poller.register(self.reads.fileno(), zmq.POLLIN)
        try:
            self._loop(poller, notes, wake_r, ingest, heartbeat)
        finally:
            tear_down(self, Built(engine=engine, z=z, notes=notes, ingest=ingest, events_auth=events_auth,
                                  checkpointer=checkpointer, wake=(wake_r, wake_w), old_wakeup=old_wakeup,
                                  old_handlers=old))

    def _loop(self, poller: zmq.Poller, notes: zmq.Socket, wake_r: int, ingest: Ingest,
              heartbeat: Heartbeat) -> None:
        """The main loop: requests, ingest's notes, the launcher's exits and notes, the supervisor's tick, until a
        signal (with ``--drain``: until the last session ended, or a second signal) or ingest failing."""
        tfd = self.launcher.fileno()
        if tfd is not None:
            poller.register(tfd, zmq.POLLIN)
        drain_deadline: float | None = None
        while True:
            if self._signals and drain_deadline is None:
                if not self.drain or len(self._signals) > 1 or not self.supervisor.running \
                        or self._signals[0] == signal.SIGHUP:
                    break
                drain_deadline = self._start_drain()
            if drain_deadline is not None and (not self.supervisor.running or len(self._signals) > 1
                                               or time.monotonic() > drain_deadline):
                break
            ready = dict(poller.poll(100))
            if self.ceiling.due():
                self._reset_inbound(poller)
            elif self.trim_at and time.monotonic() >= self.trim_at:
                self.trim_at = 0.0
                trim()
            if self.control in ready:
                self._drain_control(self.control)
            if notes in ready:
                self._drain_notes(notes, self.control)
            if wake_r in ready:
                try:
                    os.read(wake_r, 1024)
                except BlockingIOError:
                    pass
            if self.launcher.fileno() != tfd:  # the template was restarted: poll its new pipe
                if tfd is not None:
                    poller.unregister(tfd)
                tfd = self.launcher.fileno()
                if tfd is not None:
                    poller.register(tfd, zmq.POLLIN)
            for note in self.launcher.drain_notes():  # a remote launcher's node monitors (limits, samples)
                if note[0] == "event":
                    self.post_event(note[1], note[2], note[3])
                else:
                    self.supervisor.on_note(note)
            for info in self.launcher.drain_exits():
                self.supervisor.on_exit(info)
            if self.checks:  # requests suspended on a workflow check: resume those the template answered
                self.checks.answered(self.launcher.drain_inspected(),
                                     lambda flow, answer, ctx: self._resume_checked(self.control, flow, answer, ctx))
            # requests suspended on a long read: resume those whose read is done
            self.reads.serve(ready, lambda flow, result, error, ctx: self._resume_read(self.control, flow, result,
                                                                                       error, ctx))
            self.supervisor.tick()
            self.replies_held.tick()  # in_flight falls as clients read, also while no large reply is sent
            stale = time.monotonic() - ingest.beat
            problem = ("ingest thread died" if ingest.failed is not None or not ingest.is_alive()
                       else f"ingest stuck for {stale:.0f}s" if stale > 10 else "")
            # the store down is waited out, not a reason for systemd to restart us; but `systemctl status` says it
            down = store_down(self)
            note = f"store NOT WRITABLE for {time.monotonic() - down[0]:.0f}s: {down[1]}" if down else ""
            heartbeat.tick(not problem, len(self.supervisor.running), self.counters.get("events_persisted", 0),
                           problem, note)
            self.retention.tick()
            if self.runtime_watch.gone():
                self.log.error("the daemon's runtime directory was removed under it, its sockets and connection file "
                               "with it: no client can reach this daemon; stopping (sessions keep running: the next "
                               "`labd serve`, or the service's restart, adopts them)", runtime_dir=str(
                                   self.layout.runtime_dir), sessions_running=len(self.supervisor.running))
                self.failed = True
                break
            if ingest.failed is not None:
                self.log.error("ingest thread failed; stopping the daemon", error=repr(ingest.failed))
                self.failed = True
                break
            if self.store_lock is not None and self.store_lock.taken:  # logged by the lock's thread
                self.failed = True
                break
        if self._signals:
            self.log.info("signal received; stopping daemon" + (
                f" ({len(self.supervisor.running)} sessions keep running)" if self.supervisor.running else ""),
                          signal=signal.Signals(self._signals[0]).name)

    def _reset_inbound(self, poller: zmq.Poller) -> None:
        """The daemon passed its memory ceiling: drop every connection of the control, runners' and events sockets,
        and what libzmq held for them (daemon/inbound.py); ``self.control`` is the new control socket."""
        c = self.ceiling
        if c.futile:  # the last reset did not bring the memory under the ceiling: something else holds it
            self.log.error("the daemon's memory stayed above its ceiling after dropping every connection: resetting "
                           "again less often (see [daemon] memory_ceiling)", rss=c.last_rss, ceiling=c.limit,
                           next_after_s=c.cooldown)
        self.log.warning("the daemon's memory passed its ceiling: dropping every client, runner and follower "
                         "connection (they reconnect; runners re-send what was not acknowledged)", rss=c.last_rss,
                         ceiling=c.limit, resets=c.resets)
        self.counters["inbound_resets"] = c.resets
        self._to_ingest.send_pyobj(("reset_inbound",))
        for gateway in (self.gateway, getattr(self.launcher, "gateway", None)):  # the TCP gateways, on their threads
            if gateway is not None:
                gateway.rebind.request()
        control = rebind(self.control, poller, lambda: bind_control(self.zctx, self.info.control,
                                                                     self.cfg.max_message))
        if control is None:  # no descriptor for a new socket: the old one serves on (inbound.rebind)
            self.log.error("could not bind a new control socket to drop the connections of the old one; it goes on")
        self.control = control or self.control
        self.trim_at = time.monotonic() + 1.0  # once libzmq's threads have let the connections go

    def _start_drain(self) -> float:
        """Ask every running session to stop (the ordinary ladder); return the deadline for them to end."""
        self.draining = True
        running = sorted(self.supervisor.running)
        self.log.info("draining: stopping running sessions before exit", sessions=running)
        # the ladder: stop_grace, then SIGTERM and term_grace, then SIGKILL; a few seconds more to record the ends
        wait = self.cfg.stop_grace + self.cfg.term_grace + 10
        # systemd's stop timeout (the unit's TimeoutStopSec=60) would SIGKILL a longer drain midway (admin review):
        # asked for the drain's whole wait, and a minute more to record the ends and exit (the threads' joins after
        # a drain may take up to ~45 s between them)
        self.notifier.send(stopping=1, extend_timeout_usec=int((wait + 60) * 1_000_000),
                           status=f"draining: stopping {len(running)} sessions")
        for sid in running:
            self.supervisor.stop(sid, "daemon", self.cfg.stop_grace, reason="daemon stopping (drain)")
        return time.monotonic() + wait

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Record only; the main loop acts. A second Ctrl-C while stopping forces exit (a second signal while
        # draining stops waiting for the sessions).
        if self._signals and signum == signal.SIGINT:
            os._exit(130)
        self._signals.append(signum)
