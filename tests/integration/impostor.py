"""A test client that speaks for a session on the daemon's runner socket, as that session's runner would."""

from __future__ import annotations

import os
import signal
from typing import Any

import zmq

from labd.ipc.signing import derive_key
from labd.ipc.wire import DEFAULT_MAX_MESSAGE, Codec
from tests.conftest import runner_pid, wait_until


def impostor_runner(c: Any, *, routing_suffix: str = ":impostor",
                    max_message: int = DEFAULT_MAX_MESSAGE) -> tuple[str, Codec, zmq.Socket]:
    """A running session whose runner is frozen (SIGSTOP, after what it sent is stored: it sends nothing more), and
    a DEALER that speaks for it on the runner socket with the session's own key: its routing id is the session id
    plus ``routing_suffix``, its codec signs with the per-session key. (A finished session's events are refused:
    its record is closed.) The frozen runner is killed with the test daemon's runners (``kill_runners``), or by
    :func:`end_impostor`."""
    sid = c.start("demo.sleep", params={"seconds": 600})
    freeze_runner(c, sid)
    return sid, Codec(derive_key(c.info.key_bytes, sid), max_message=max_message), dealer(c, sid, routing_suffix)


def freeze_runner(c: Any, sid: str) -> None:
    """Wait until ``sid`` runs, SIGSTOP its runner, and wait until what the runner sent is stored."""
    os.kill(runner_pid(c, sid), signal.SIGSTOP)
    seen: list[int] = []

    def settled() -> bool:  # the runner's last sequence number read three times over: what it sent is stored
        seen.append(max((e["src_seq"] for e in c.history(sid) if e["src"] == "runner"), default=0))
        return len(seen) >= 3 and seen[-1] == seen[-3]
    wait_until(settled, timeout=20, interval=0.1, what="the frozen runner's events to be stored")


def dealer(c: Any, sid: str, routing_suffix: str = ":impostor") -> zmq.Socket:
    """A DEALER on the daemon's runner socket whose routing id names ``sid`` (as its runner's would)."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, f"{sid}{routing_suffix}".encode())
    s.connect(c.info.runners)
    return s


def end_impostor(c: Any, sid: str, s: zmq.Socket) -> None:
    """Close the impostor's socket and kill its session (the frozen runner with it)."""
    s.close(0)
    c.kill(sid)
    c.wait(sid, timeout=30)
