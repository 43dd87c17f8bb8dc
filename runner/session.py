"""The body of a runner process: set up isolation, run one workflow, report everything as events.

Called in a freshly forked child of the template (or by ``python -m labd.runner.cold`` for the cold-start
comparison). By the time a workflow runs, the process is its own session and process group, its cwd
is the session's work directory, its environment holds no secrets, fds 1 and 2 are captured, and
logging is routed to events.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from labd.ipc.errors import describe_exception
from labd.ipc.wire import encode_json
from labd.runner import exiting, forksafe, spawned
from labd.runner.approvals import Approvals, ApprovalTimeout
from labd.runner.capture import OutputCapture, report_crash
from labd.runner.cgroup_join import join_cgroup
from labd.runner.channel import Channel, PayloadError
from labd.runner.channel_wire import too_large
from labd.runner.context import Cancelled, Context, current_node
from labd.runner.crash_tail import CRASH_FILE
from labd.runner.credentials import confine_runner, note_refusal, take_key
from labd.runner.durable import Durable, read_seed
from labd.runner.files import FileTracker
from labd.runner.forked import Relay
from labd.runner.logsetup import configure_logging, logging_after_fork
from labd.runner.reaper import become_subreaper
from labd.runner.sandbox import Sandbox, install
from labd.runner.secret_env import SECRET_PATTERN, split_secrets
from labd.runner.spare import take_spool
from labd.runner.spool import Spool
from labd.runner.workflows.registry import WorkflowError, bind_params, resolve

__all__ = ["run_session", "SECRET_PATTERN", "split_secrets"]

EXIT_COMPLETED, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3


class _Inbox:
    """Daemon messages (cancel, pause, ...) that may arrive before the context exists: held, then delivered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] | None = None

    def handler(self, type_: str) -> Callable[[dict[str, Any]], None]:
        return lambda body: self._deliver(type_, body)

    def _deliver(self, type_: str, body: dict[str, Any]) -> None:
        with self._lock:
            if self._handlers is None:
                self._held.append((type_, body))
                return
            handler = self._handlers[type_]
        handler(body)

    def open(self, handlers: dict[str, Callable[[dict[str, Any]], None]]) -> None:
        with self._lock:
            self._handlers = handlers
            held, self._held = self._held, []
        for type_, body in held:
            handlers[type_](body)


def run_session(spec: dict[str, Any]) -> int:
    """Run the session described by ``spec``; return the process exit code."""
    session_id: str = spec["session_id"]
    cgroup = join_cgroup(spec.get("cgroup"))  # first: all the session starts is born in its group
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    # The template was started without secrets (so /proc/<pid>/environ of a runner holds none); they
    # arrive in the spec, over the template's pipe. Splitting our own environment again is a second guard.
    # How long to wait for the daemon's last acknowledgements before exiting (what is not acknowledged by
    # then stays in the spool for the daemon to ingest); the variable is an operations/test knob.
    flush_timeout = float(spec.get("flush_timeout") or os.environ.pop("LABD_RUNNER_FLUSH_TIMEOUT", "") or 30.0)
    clean_env, secrets = split_secrets(dict(os.environ), spec.get("secret_names"))
    secrets.update(spec.get("secrets") or {})
    clean_env.update(spec.get("env") or {})
    clean_env.update({"LABD_SESSION_ID": session_id, "LABD_WORKDIR": str(workdir)})
    for name in [n for n in os.environ if n not in clean_env]:  # only what changes: each is a libc call
        del os.environ[name]
    for name, value in clean_env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    become_subreaper()  # a double-forked orphan of the workflow stays in our tree (see runner/reaper.py)

    me = psutil.Process()
    create_time = me.create_time()
    # Our own key (deleted from disk once read), then Landlock on ourselves: both before any thread starts.
    key = take_key(spec)
    replay_seed = spec.get("replay_seed")  # labd replay: read now, before the runner confines itself
    seed_text = Path(replay_seed).read_text() if replay_seed else None
    # The event spool: a spare runner prepared an unnamed file (runner/spare.py); named now, before the
    # runner confines itself (Landlock would refuse a link from outside the session's directory)
    spool_at = Path(spec.get("spool") or workdir.parent / "events.spool")
    prepared = take_spool()
    spool: Spool | Path = spool_at
    if prepared is not None:
        spool = Spool.link_prepared(prepared, spool_at) or spool_at
    install(Sandbox.from_spec(spec.get("sandbox"), session_dir=str(workdir.parent)))  # for run_code
    confined = confine_runner(spec.get("confine"))
    if confined == "landlock":  # the parent of the default tmp dir may be out of reach now: use our own
        (workdir.parent / "tmp").mkdir(mode=0o700, exist_ok=True)
        os.environ["TMPDIR"] = str(workdir.parent / "tmp")
        tempfile.tempdir = None
    approvals_box: list[Approvals] = []
    seed = read_seed(workdir.parent) if spec.get("durable") else None  # a resume or branch (runner/durable.py)
    channel = Channel(spec["endpoint"], key, session_id,
                      hello=lambda: {"pid": os.getpid(), "create_time": create_time,
                                     "waiting_approvals": approvals_box[0].waiting_ids() if approvals_box else []},
                      max_message=spec.get("max_message"),
                      # beside the work directory, not in it: the work directory is the agent's to write
                      spool=spool,
                      # a resumed session's new runner continues its predecessor's sequence (exactly-once ingest)
                      first_seq=int((seed or {}).get("first_seq") or 1), curve=spec.get("curve"))
    channel.withhold(secrets)
    emit = channel.emit
    if seed_text is not None:  # labd replay: answers from the record, and steps checked against it
        from labd.runner import replay

        emit = replay.activate(seed_text, emit, workdir=str(workdir), session_id=session_id).watch(emit)
    # Say we are up before the rest of the set-up (which the workflow needs, the client does not): this is
    # what makes a session's start quick to see. Daemon messages arriving meanwhile are held, not lost.
    # The channel thread connects while this thread goes on with the set-up (it is confined: started after
    # confine_runner above); session.started leaves as soon as the connection is there.
    inbox = _Inbox()
    channel.handlers.update({t: inbox.handler(t) for t in ("cancel", "pause", "resume", "approval.resolved")})
    # The output pipes and their reader thread first, while no other thread of ours runs: a thread start waits
    # for the new thread to take the GIL, and with the channel thread connecting beside it that took ~1 ms
    # (docs/design.md, "First output"). session.started is queued before, so it stays the first event.
    emit("session.started", {"pid": os.getpid(), "workdir": str(workdir), "runner_confinement": confined,
                             "cgroup": cgroup})
    ctx_box: list[Context] = []  # the context exists only below; output before it belongs to no step

    def emit_output(stream: str, text: str) -> None:
        emit("output", {"stream": stream, "text": text}, ctx_box[0].active_node if ctx_box else None)

    def truncated(report: dict[str, Any]) -> None:  # once at the first drop, once with the total at the end
        emit("output.truncated", {**report, "by": "runner"})

    capture = OutputCapture(emit_output, (spec.get("limits") or {}).get("output"), truncated)
    capture.withhold(secrets)  # replaced in the streams themselves: a chunk of output may end inside one
    capture.install()
    channel.start()
    # one output cap for what the workflow writes: output, log records, custom events (runner/outputcap.py)
    emit_capped = functools.partial(emit, cap=capture.budget)
    log = configure_logging(emit_capped, session_id)
    ctx = Context(session_id, workdir, spec.get("params") or {}, emit, log, secrets)
    ctx.emit_capped = emit_capped
    ctx_box.append(ctx)
    # events of children the workflow forks (runner/forked.py): a step boundary first takes in what they sent
    relay = Relay(channel.emit, workdir.parent)
    # ... and of processes it starts with multiprocessing's spawn or forkserver methods (runner/spawned.py)
    spawned.install(relay.child_fd, relay.max_message, workdir.parent,
                    spawned.setup_of(session_id, workdir, spec, secrets), current_node.get,
                    lambda: forksafe.child_prefix(ctx))

    def before_boundary() -> None:
        capture.sync()
        relay.sync()

    ctx.before_boundary = before_boundary
    files = FileTracker(workdir, emit)
    files.concurrent = ctx.concurrent_with  # concurrent steps: "ambiguous", never a wrong step
    def scan_after_step(node_id: str) -> None:
        files.scan(node_id)

    ctx.after_step = scan_after_step
    # a remote runner (Ray) ships its checkpoints' objects home: a resume or branch of it is made there
    durable = Durable(emit, workdir.parent, workdir, files, seed, list_objects=bool(spec.get("ship_files")))
    ctx.durable, ctx.hypothesis, ctx.instructions = durable, durable.hypothesis, durable.instructions
    shipper = None
    if spec.get("ship_files"):  # a remote runner (Ray): its files reach the daemon after each step and at the end
        from labd.runner.ship import Shipper, chunk_for

        shipper = Shipper(workdir, emit, int(spec["ship_files"]), chunk_for(spec.get("max_message")),
                          ranges=bool(spec.get("ship_ranges")))
        channel.handlers["objects.missing"] = shipper.objects_missing  # the daemon could not keep some at home
        shipper.assume_at_home(spec.get("at_home"))  # a resume's objects, carried from home (runner/ray_actor.py)
        durable.after_checkpoint = shipper.ship
        shipper.assume_shipped((seed or {}).get("shipped"))  # a resume: the home's copy, as the last runner left it
        durable.before_checkpoint = lambda: shipper.ship_objects(durable.objects)
    if durable.node_base:  # node ids go on after the record's (a resume's DAG, a branch's parent)
        ctx._node_ids = itertools.count(durable.node_base + 1)  # noqa: SLF001
        forksafe.number_forks_from(durable.node_base + 1)  # ... and its forked children's ("f<j>.<i>")

    def agent_emit(kind: str, payload: Any, node_id: str | None = None, parent: int | None = None) -> int:
        seq = emit(kind, payload, node_id, parent)
        if kind == "llm.request" and isinstance(payload, dict):  # holds the agent's whole history
            durable.note_request(str(payload.get("agent")), seq)
        return seq
    ctx.approvals = Approvals(emit, ctx._cancel, room=channel.event_room)  # noqa: SLF001 - the runner owns ctx
    approvals_box.append(ctx.approvals)

    def agents() -> Any:
        from labd.runner.agents import AgentFactory

        factory = AgentFactory(emit=agent_emit, new_node_id=ctx.new_node_id, workdir=workdir,
                            models=spec.get("models") or {}, prices=spec.get("prices") or {}, secrets=secrets,
                            approvals=ctx.approvals, files=files, limits=spec.get("limits"),  # type: ignore[arg-type]
                            pause=lambda reason: ctx.wait_paused("budget", reason), check_stop=ctx.check_cancelled,
                            mcp_servers=spec.get("mcp_servers") or {}, roles=spec.get("roles") or None,
                            role_overrides=spec.get("agent_overrides") or {}, policy=spec.get("policy"))
        factory.tracker.spent = durable.spent
        plain = factory.agent

        def agent(name: str, system_prompt: Any = (), **kw: Any) -> Any:
            extra = durable.extra_prompt()  # a branch's hypothesis reaches the agents of its live steps
            if extra:
                system_prompt = [*([system_prompt] if isinstance(system_prompt, str) else system_prompt), extra]
            return plain(name, system_prompt, **kw)
        factory.agent = agent  # type: ignore[method-assign]
        return factory

    ctx._agents = agents  # noqa: SLF001
    from labd.runner.agents.hooks import track_all_agents

    track_all_agents(ctx.agent_factory)  # every ag2 agent of this session, however built

    def on_sigterm(_signum: int, _frame: Any) -> None:
        ctx.request_cancel("terminated (SIGTERM)")
        raise Cancelled("terminated (SIGTERM)")

    # A child forked by the workflow (multiprocessing, os.fork) gets default SIGTERM (Pool.terminate() must
    # kill it), fresh std streams, and no access to our spool or queue: see runner/forksafe.py.
    # Its events reach the runner over the relay, whose thread starts at the first fork (runner/forked.py); each
    # child's node ids start from a fork number reserved here.
    def before_fork() -> None:
        forksafe.reserve_fork()
        relay.start()

    # before forksafe's (registered next, so run first: SIGTERM blocked)
    os.register_at_fork(before=before_fork, after_in_parent=forksafe.forget_reserved)
    forksafe.install(lambda: channel.forget_after_fork(relay.child_emit()), capture.forget_after_fork,
                     logging_after_fork, lambda: forksafe.detach_context(ctx, files, durable))
    approvals = ctx.approvals
    inbox.open({
        "cancel": lambda body: ctx.request_cancel(str(body.get("reason") or "stop requested")),
        "pause": lambda body: ctx.request_pause(str(body.get("by") or "client"), str(body.get("reason") or "paused")),
        "resume": lambda body: ctx.resume(str(body.get("by") or "client"), body.get("budget")),
        "approval.resolved": approvals.on_resolved,
    })
    signal.signal(signal.SIGTERM, on_sigterm)

    outcome, code, extra = "completed", EXIT_COMPLETED, {}
    try:
        # The client's working directory and PYTHONPATH come first, so `labd run mymod:fn` finds what
        # `python -c "import mymod"` would find where the user typed it.
        exiting.forget_inherited()  # the template's exit handlers (the session's, from its imports on, run at its end)
        search = list(spec.get("sys_path") or [])
        sys.path[:0] = search
        importlib.invalidate_caches()
        fn = resolve(spec["workflow"], search=search)
        kwargs = bind_params(fn, dict(ctx.params))
        durable.restore_workdir()  # a resume or branch: the work directory as the record's last checkpoint
        result = forksafe.call(fn, ctx, **kwargs)  # a child the workflow forked ends in there
        extra = {"result": result}
    except Cancelled as exc:
        outcome, code, extra = "cancelled", EXIT_CANCELLED, {"error": str(exc) or "cancelled"}
    except WorkflowError as exc:
        outcome, code, extra = "failed", EXIT_FAILED, {"error": f"{exc.code}: {exc.message}"}
    except ApprovalTimeout as exc:
        outcome, code, extra = "failed", EXIT_FAILED, {"error": str(exc)}
    except SystemExit as exc:  # sys.exit() in workflow code: success or failure as for a Python program
        if exc.code is None or exc.code == 0:
            extra = {"result": None}
        else:
            outcome, code = "failed", EXIT_FAILED
            extra = {"error": f"SystemExit: {exc.code}", "traceback": traceback.format_exc()}
    except BaseException as exc:  # noqa: BLE001 - everything the workflow raises is its outcome
        note_refusal(exc, workdir)  # a write the runner's confinement refused says why
        outcome, code = "failed", EXIT_FAILED
        extra = {"error": describe_exception(exc), "traceback": traceback.format_exc()}  # even if its str() raises
    if outcome != "cancelled":  # as `python script.py` ends: its threads waited for, its atexit handlers run
        try:
            exiting.finish_like_python(ctx.check_cancelled, lambda text: emit(
                "log", {"level": "info", "logger": "labd.runner", "event": text}))
        except Cancelled as exc:  # stopped meanwhile: a thread that never ends cannot hold the session
            if outcome == "completed":
                outcome, code, extra = "cancelled", EXIT_CANCELLED, {"error": str(exc) or "cancelled"}
        except BaseException as exc:  # noqa: BLE001 - a threading exit callback raised: the outcome is recorded
            emit("log", {"level": "error", "logger": "labd.runner", "event": f"at exit: {describe_exception(exc)}"})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        relay.close()  # what forked children sent comes before session.finished
    except Exception as exc:  # noqa: BLE001 - the session's outcome is recorded whatever happened here
        emit("log", {"level": "error", "logger": "labd.runner.forked", "event": f"relay: {type(exc).__name__}: {exc}"})
    try:
        capture.close()
    except Exception as exc:  # noqa: BLE001 - as above: the outcome is recorded whatever happened here
        emit("log", {"level": "error", "logger": "labd.runner.capture",
                     "event": f"capture: {type(exc).__name__}: {exc}"})
    files.scan(None, final=True)  # whatever the workflow left outside any step (even beside a leaked execution)
    if shipper is not None:  # what changed since the last checkpoint
        shipper.ship(durable.snapshot())
    try:
        emit("session.finished", finished_payload(outcome, extra, channel.event_room()))
    except PayloadError as exc:  # a result nested too deeply to record: the outcome still is
        emit("session.finished", {"outcome": outcome, "error": extra.get("error") or f"result not recorded: {exc}"})
    channel.close(timeout=flush_timeout)
    return code


#: characters of a failed session's error or traceback kept when its ``session.finished`` would not fit one event
#: (at most: a 16th of what an event may take each, so that both fit even if JSON escapes every character)
KEEP_TEXT = 64 * 1024


def finished_payload(outcome: str, extra: dict[str, Any], room: int) -> dict[str, Any]:
    """The ``session.finished`` payload: ``{"outcome", **extra}``, unless its event would be larger than ``room``
    bytes (:meth:`~labd.runner.channel_wire.ChannelWire.event_room`: what one message to the daemon can carry).
    Then the outcome is recorded all the same: without the result, its absence stated with the size and the limit
    (a completed session stays completed), or with the error and traceback cut short. Otherwise the channel would
    replace the whole event by an ``event.truncated`` marker and the session would end ``failed`` without an
    outcome. Raises :class:`PayloadError` for a value nested too deeply to encode at all."""
    payload = {"outcome": outcome, **extra}
    keep = max(256, min(KEEP_TEXT, room // 16))
    if "result" not in extra and all(not isinstance(v, str) or len(v) <= keep for v in extra.values()):
        return payload  # short texts only: fits whatever the limit (at least 4 KiB, daemon/config.py)
    # Encoded as the channel encodes it, with the longest seq and timestamp it could carry: only the encoding tells
    # the size. An ordinary result costs microseconds more; a large one the time (and memory) to encode it again.
    size = len(encode_json([2**53, 1e10, "session.finished", None, None, payload]))
    if size <= room:
        return payload
    out: dict[str, Any] = {"outcome": outcome}
    for key in ("error", "traceback"):
        text = extra.get(key)
        if isinstance(text, str):
            out[key] = text if len(text) <= keep else f"{text[:keep]}... [{len(text) - keep:,} more characters]"
    if "error" not in out:
        out["error"] = (f"result not recorded: {too_large(size, room)}; write large results to files in the session's "
                        "work directory and return their names")
    return out




def own_crash_channel(spec: dict[str, Any]) -> None:
    """Make fd 2 the session's own crash file instead of the daemon's stderr (its log), inherited through the
    template: Landlock checks only at open, so an inherited descriptor would let session code write into the
    daemon's log. Called first thing after the fork (or a spare's hand-over), before any session code runs;
    the daemon's descriptor is gone from this process afterwards (fd 2 was its only copy here). A fatal error
    of the runner (a segfault) is written there too, with its Python traceback."""
    import faulthandler

    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        session_dir = Path(spec["workdir"]).parent
        session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(session_dir / CRASH_FILE, flags, 0o600)
    except (OSError, KeyError, TypeError):  # no crash file: crash text is lost, never sent to the daemon's log
        fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(fd, 2)  # fd 2 stays inheritable (a program the workflow runs before capture starts writes here)
    faulthandler.enable(file=fd)  # kept open (close-on-exec) for as long as the process lives


def child_main(spec: dict[str, Any]) -> None:
    """Entry point in a forked child: never returns."""
    code = EXIT_FAILED
    try:
        own_crash_channel(spec)
        code = run_session(spec)
    except BaseException:  # noqa: BLE001 - last resort: report on the real stderr, then exit
        try:
            report_crash()
        finally:
            os._exit(EXIT_FAILED)
    os._exit(code)
