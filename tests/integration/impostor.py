"""A test client that speaks for a session on the daemon's runner socket, as that session's runner would."""

from __future__ import annotations

from typing import Any

import zmq

from labd.ipc.signing import derive_key
from labd.ipc.wire import DEFAULT_MAX_MESSAGE, Codec
from tests.conftest import wait_until


def impostor_runner(c: Any, *, routing_suffix: str = "",
                    max_message: int = DEFAULT_MAX_MESSAGE) -> tuple[str, Codec, zmq.Socket]:
    """A finished session, and a DEALER that speaks for it on the runner socket with the session's own key:
    its routing id is the session id (plus ``routing_suffix``), its codec signs with the per-session key."""
    sid = c.start("demo.sleep", params={"seconds": 30})
    wait_until(lambda: c.session(sid)["status"] == "running")
    c.kill(sid)
    c.wait(sid, timeout=30)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, f"{sid}{routing_suffix}".encode())
    s.connect(c.info.runners)
    return sid, Codec(derive_key(c.info.key_bytes, sid), max_message=max_message), s
