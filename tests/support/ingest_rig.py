"""An in-process ingest thread on real ZeroMQ sockets and a real SQLite file, driven as the daemon drives it: a
stand-in runner sends signed frames and reads acks, a stand-in daemon hands over its own items. For tests of what
ingest stores (the record bound, the output caps' backstop, a runner's leftover spool)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy.exc as sa_exc
import zmq

from labd.daemon.ingest import INGEST_IN, INGEST_NOTIFY, Ingest
from labd.ipc.signing import derive_key
from labd.ipc.wire import Codec, encode_json
from labd.store.db import migrate, open_engine
from labd.store.writer import BatchWriter
from tests.conftest import wait_until

KEY = b"k" * 32
SID = "a1b2c3d4e5f6"


class Rig:
    """One ingest thread with a session ``SID``; ``bound``: its ``max_session_record``."""

    def __init__(self, bound: int | None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="labd-ingest-"))
        engine = open_engine(f"sqlite:///{self.tmp}/s.db")
        migrate(engine)
        self.z = zmq.Context()
        self.notify = self.z.socket(zmq.PULL)
        self.notify.bind(INGEST_NOTIFY)
        self.bound = bound
        self._start(engine)
        self.codec = Codec(derive_key(KEY, SID))
        self.seq = 0
        #: what ingest sent the stand-in runner besides acks (type, body), in order
        self.control: list[tuple[str, dict[str, Any]]] = []

    def _start(self, engine: Any) -> None:
        self.ing = Ingest(self.z, BatchWriter(engine), KEY, "inproc://runners", "inproc://events", {}, {},
                          16 << 20, self.tmp, max_session_record=self.bound)
        self.ing.start()
        assert self.ing.ready.wait(10)
        self.daemon_side = self.z.socket(zmq.PUSH)
        self.daemon_side.connect(INGEST_IN)
        self.runner = self.z.socket(zmq.DEALER)
        self.runner.setsockopt(zmq.LINGER, 0)
        self.runner.setsockopt(zmq.ROUTING_ID, f"{SID}:test".encode())
        self.runner.connect("inproc://runners")

    def restart(self) -> None:
        """Stop the ingest thread and start a new one on the same database, as a daemon restart does: what the
        old one kept in memory is gone, the store is all the new one has."""
        engine = self.ing.writer.engine
        self.daemon_side.send_pyobj(("stop",))
        self.ing.join(30)
        assert not self.ing.is_alive()
        for s in (self.daemon_side, self.runner, self.notify):
            s.close(0)
        # A new ZeroMQ context, as a new daemon process has: an inproc endpoint of the old one is released by its
        # I/O thread some time after the close, so binding it again at once could fail
        self.z.term()
        self.z = zmq.Context()
        self.notify = self.z.socket(zmq.PULL)
        self.notify.bind(INGEST_NOTIFY)
        self._start(engine)

    def create(self, limits: dict[str, Any]) -> None:
        self.daemon_side.send_pyobj(("event", SID, "session.created",
                                     {"workflow": "demo.events", "name": SID, "params": {}, "limits": limits,
                                      "workdir": str(self.tmp)}, None, None))
        wait_until(lambda: self.stored(), timeout=10, what="session.created stored")

    def send(self, evs: list[tuple[str, str | None, dict[str, Any]]]) -> int:
        """Send runner events ``(kind, node_id, payload)``; wait for the ack covering them."""
        raw = []
        for kind, node, payload in evs:
            self.seq += 1
            raw.append(encode_json([self.seq, time.time(), kind, node, None, payload]))
        self.runner.send_multipart(self.codec.pack_events(SID, raw))
        want = self.seq + 1

        def acked() -> bool:
            while self.runner.poll(50):
                msg = self.codec.unpack(self.runner.recv_multipart())
                if msg.type == "ack" and msg.body["next"] >= want:
                    return True
                if msg.type != "ack":
                    self.control.append((msg.type, msg.body))
            return False
        wait_until(acked, timeout=20, what="ack")
        return self.seq

    def read_control(self, wait: float) -> list[tuple[str, dict[str, Any]]]:
        """:attr:`control`, after reading what the stand-in runner receives for up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while self.runner.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            msg = self.codec.unpack(self.runner.recv_multipart())
            if msg.type != "ack":
                self.control.append((msg.type, msg.body))
                return self.control
        return self.control

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        """The stored payloads of ``kind``, in order."""
        import orjson

        with self.ing.writer.engine.connect() as conn:
            return [orjson.loads(r[0]) for r in conn.exec_driver_sql(
                "SELECT payload FROM events WHERE session_id = ? AND kind = ? ORDER BY seq", (SID, kind))]

    def stored(self) -> list[tuple[Any, ...]]:
        with self.ing.writer.engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(
                "SELECT seq, kind, length(payload) FROM events WHERE session_id = ? ORDER BY seq", (SID,))]

    def blob_bytes(self) -> int:
        with self.ing.writer.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT coalesce(sum(length(data)), 0) FROM blobs").scalar() or 0

    def notes(self, wait: float = 0.0) -> list[Any]:
        out = []
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            if not self.notify.poll(int(left * 1000)):
                return out
            out.append(self.notify.recv_pyobj())

    def fail_next_commits(self, n: int) -> list[int]:
        """The next ``n`` commits of runner rows fail as if the store were unreachable (a full disk, a lock)."""
        writer = self.ing.writer
        real = writer.commit
        failed: list[int] = []

        def commit(rows: Any, changes: Any, cursors: Any, plain: Any = (), noded: Any = ()) -> Any:
            if len(failed) < n and (rows or plain or noded):
                failed.append(1)
                raise sa_exc.OperationalError("INSERT", {}, Exception("database is locked"))
            return real(rows, changes, cursors, plain, noded)
        writer.commit = commit  # type: ignore[method-assign]
        return failed

    def continue_run(self) -> None:
        """Hand over a ``session.continued`` (``labd resume``) of the ended session and wait until it is stored: a new
        run begins, whose runner signs with the run's own key (as the daemon's launcher gives it)."""
        self.daemon_side.send_pyobj(("event", SID, "session.continued",
                                     {"by": "test", "reason": "resumed", "from_status": "failed"}, None, None))
        wait_until(lambda: any(r[1] == "session.continued" for r in self.stored()), timeout=10, what="continued")
        run = next(r[0] for r in self.stored() if r[1] == "session.continued")
        self.codec = Codec(derive_key(KEY, SID, run))

    def end(self, payload: dict[str, Any] | None = None) -> None:
        """Hand over the session's ``session.ended`` as the supervisor does when its runner has exited."""
        self.daemon_side.send_pyobj(("event", SID, "session.ended",
                                     payload or {"ended_by": "runner", "exit_code": 0}, None, None))

    def close(self) -> None:
        if self.ing.is_alive():
            self.daemon_side.send_pyobj(("stop",))
            self.ing.join(30)
        for s in (self.daemon_side, self.runner, self.notify):
            s.close(0)
        self.z.term()
        shutil.rmtree(self.tmp, ignore_errors=True)
