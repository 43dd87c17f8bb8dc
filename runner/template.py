"""The warm template (zygote): a process that has imported the runner stack and forks runners on request.

Started once by the daemon as ``python -m labd.runner.template``. It imports everything a runner needs,
freezes the GC generations (so children do not unshare ~28 MiB on their first collection), and then
holds **no sockets, no threads and no session state**: ZeroMQ contexts cannot survive a fork.

Protocol (JSON lines; the daemon writes requests on our stdin, we answer on our stdout):

- ``{"op": "spawn", "req": R, "spec": {...}}`` -> ``{"op": "spawned", "req": R, "pid": P}``
- ``{"op": "inspect", "req": R, "workflow": W, "params": {...}, "path": [dirs]}`` -> ``{"op": "inspected", "req": R,
  "ok": bool, "code"?, "message"?, "details"?}`` (resolved in a throwaway child, so importing user
  code never touches the template)
- unsolicited: ``{"op": "exited", "pid": P, "exit_code": C | null, "signal": S | null}``

End of stdin (the daemon went away) makes the template exit; runners live on.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import sys
from typing import Any

from setproctitle import setproctitle

#: imported before any fork so every runner starts warm
PRELOAD = ["zmq", "orjson", "structlog", "psutil", "labd.runner.session", "labd.runner.workflows.demo",
           "labd.runner.agents", "labd.runner.workflows.planning", "labd.runner.workflows.one_shot",
           "labd.runner.workflows.deep_research"]


def _set_title(title: str) -> None:
    """Name this process in ps/htop (``labd: study-1 (mypkg.flows:study)``) instead of ``python -m ...``."""
    setproctitle(title[:200])


def _write(out_fd: int, obj: dict[str, Any]) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        n = os.write(out_fd, data)
        data = data[n:]


def _reap(out_fd: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSIGNALED(status):
            _write(out_fd, {"op": "exited", "pid": pid, "exit_code": None, "signal": os.WTERMSIG(status)})
        else:
            _write(out_fd, {"op": "exited", "pid": pid, "exit_code": os.waitstatus_to_exitcode(status),
                            "signal": None})


def _inspect_in_child(workflow: str, params: dict[str, Any], path: list[str]) -> dict[str, Any]:
    from labd.runner.workflows.registry import WorkflowError, bind_params, describe, resolve

    # The same sys.path the runner will have: the client's directory and PYTHONPATH first.
    sys.path[:0] = path
    importlib.invalidate_caches()
    try:
        fn = resolve(workflow, search=path)
        return {"ok": True, "params": bind_params(fn, params), "describe": describe(fn), "function": fn.__name__}
    except WorkflowError as exc:
        return {"ok": False, "code": exc.code, "message": exc.message, "details": exc.details}


INSPECT_TIMEOUT_S = 20.0


def _read_all(fd: int, pid: int, timeout: float) -> bytes:
    """Read an inspect child's answer; a child that hangs (an import that never returns) is killed."""
    import time

    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
        if not ready:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        part = os.read(fd, 65536)
        if not part:
            break
        data += part
    os.close(fd)
    return data


def _fork_child(in_fd: int, out_fd: int, wake_fds: tuple[int, int], job: Any) -> int:
    """Fork; in the child, shed the template's fds and signal setup, run ``job`` and exit."""
    pid = os.fork()
    if pid:
        return pid
    # --- child ---
    try:
        os.setsid()  # own session and process group: signals to the group reach the whole runner tree
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        for fd in (*wake_fds, in_fd):
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, out_fd)  # drop the template's reply pipe without freeing fd 1 for reuse
        os.close(devnull)
        # The GC stays frozen in the child: objects inherited from the template are never scanned, so
        # the first full collection neither takes ~65 ms nor unshares ~27 MiB (docs/benchmarks.md).
        job()
    finally:
        os._exit(1)
    return 0  # pragma: no cover


def main() -> None:
    for name in PRELOAD + [m for m in os.environ.get("LABD_PRELOAD", "").split(",") if m]:
        importlib.import_module(name)
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
    _write(out_fd, {"op": "ready", "pid": os.getpid()})
    buf = b""
    while True:
        try:
            ready, _, _ = select.select([in_fd, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            _reap(out_fd)
        if in_fd not in ready:
            continue
        chunk = os.read(in_fd, 65536)
        if not chunk:
            return  # the daemon is gone; our children (runners) carry on
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            if req["op"] == "spawn":
                spec = req["spec"]

                def run(spec: dict[str, Any] = spec) -> None:
                    from labd.runner.session import child_main

                    _set_title(f"labd: {spec.get('name') or spec['session_id']} ({spec['workflow']})")
                    child_main(spec)

                pid = _fork_child(in_fd, out_fd, (wake_r, wake_w), run)
                _write(out_fd, {"op": "spawned", "req": req["req"], "pid": pid})
            elif req["op"] == "inspect":
                r, w = os.pipe()

                def inspect_job(req: dict[str, Any] = req, r: int = r, w: int = w) -> None:
                    os.close(r)
                    result = _inspect_in_child(req["workflow"], req.get("params") or {}, req.get("path") or [])
                    os.write(w, json.dumps(result, default=repr).encode())
                    os._exit(0)

                pid = _fork_child(in_fd, out_fd, (wake_r, wake_w), inspect_job)
                os.close(w)
                data = _read_all(r, pid, timeout=INSPECT_TIMEOUT_S)
                try:
                    result = json.loads(data)
                except ValueError:
                    result = {"ok": False, "code": "workflow_import_failed",
                              "message": "inspecting the workflow crashed its process"}
                _write(out_fd, {"op": "inspected", "req": req["req"], **result})


if __name__ == "__main__":
    main()
