#!/usr/bin/env python
"""CPU per event of each side of the event path, in process (no daemon, no other sessions: robust to a busy box).

- ``runner``: a real :class:`~labd.runner.channel.Channel` with its spool emits ``n`` ``custom`` events to a
  stand-in daemon in a child process (a ROUTER that verifies, decodes and acknowledges every message). CPU time of
  the emitting thread and of the whole runner process, per event.
- ``runner-capped``: the same through a workflow's ``ctx.emit``, charged to the default 1 GiB output cap as the
  tree's runner wires it (custom events and log records count against the session's output cap).
- ``ingest``: the real ingest code (:class:`~labd.daemon.ingest.Ingest`'s frame handling and write path) on a
  migrated temp SQLite database (with the daemon's checkpoint thread), fed pre-signed runner messages of 2,000
  events (4 sessions interleaved), without and with a live follower. CPU time of the thread per event, split
  into frame handling (verify, decode, validate, stage) and the write (commit, publish, acknowledge); and raw
  sqlite3 ``executemany`` of the same rows for comparison.

``--baseline DIR`` runs the same measurements, alternated, with labd imported from DIR (a directory holding a
``labd`` package whose subpackages are another tree's folders; see scripts/bench_events.py). Medians of
``--rounds``; nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import REPO, print_machine, print_table, ratio  # noqa: E402

# The measuring code runs in a fresh interpreter per measurement (so that a baseline tree can be imported).
CHILD = r'''
import json, multiprocessing as mp, os, sqlite3, sys, tempfile, time
from pathlib import Path
import zmq

def runner(n, capped=False):
    from labd.ipc.signing import derive_key
    from labd.ipc.wire import Codec
    from labd.runner.channel import Channel
    key = os.urandom(32)
    tmp = tempfile.mkdtemp(prefix="labd-cost-")
    ep = f"ipc://{tmp}/r.sock"
    ready = mp.Event()

    def daemon():
        z = zmq.Context(); r = z.socket(zmq.ROUTER); r.bind(ep); ready.set()
        codec = Codec(derive_key(key, "s1")); got = 0
        while got < n:
            fr = r.recv_multipart()
            msg = codec.unpack(fr[1:])
            if msg.type == "events":
                got = msg.body["events"][-1][0]
                r.send_multipart([fr[0], *codec.pack("ack", {"next": got + 1})])

    p = mp.get_context("fork").Process(target=daemon); p.start(); ready.wait()
    ch = Channel(ep, derive_key(key, "s1"), "s1", spool=os.path.join(tmp, "events.spool"))
    ch.start()
    emit = ch.emit
    if capped:  # a workflow's ctx.emit, charged to the default 1 GiB output cap as this tree's runner wires it
        from labd.runner.context import Context
        from labd.runner.outputcap import OutputCap
        ctx, cap = Context("s1", Path(tmp), {}, ch.emit, None, {}), OutputCap(1 << 30)
        if hasattr(Context, "emit_capped"):  # the channel charges the bytes it encodes
            import functools
            ctx.emit_capped = functools.partial(ch.emit, cap=cap)
        else:  # before: the payload encoded once more to size it
            ctx.admit = cap.admit
        emit = lambda kind, payload, node: ctx.emit(payload["name"], payload["data"])
    c0, t0 = time.process_time(), time.thread_time()
    for i in range(n):
        emit("custom", {"name": "tick", "data": i}, None)
    t1 = time.thread_time()
    assert ch.close(120), "not all acknowledged"
    c1 = time.process_time()
    p.join(30)
    return {"emit_us": (t1 - t0) / n * 1e6, "process_us": (c1 - c0) / n * 1e6}

def ingest(n, live):
    from labd.daemon import ingest as ing_mod
    from labd.ipc.signing import derive_key
    from labd.ipc.wire import Codec, encode_json
    from labd.store.db import Checkpointer, migrate, open_engine
    from labd.store.projections import RowChanges, SessionCursor, apply
    from labd.store.writer import BatchWriter
    key = os.urandom(32)
    tmp = tempfile.mkdtemp(prefix="labd-cost-")
    engine = open_engine(f"sqlite:///{tmp}/s.db"); migrate(engine)
    w = BatchWriter(engine); z = zmq.Context()
    Checkpointer(engine).start()  # as in the daemon: the writer's connection never checkpoints
    ing = ing_mod.Ingest(z, w, key, "inproc://r", "inproc://p", {}, {}, 16 << 20, Path(tmp))
    ing.router = z.socket(zmq.ROUTER); ing.router.setsockopt(zmq.ROUTER_MANDATORY, 1); ing.router.bind("inproc://r")
    ing.pub = z.socket(zmq.XPUB); ing.pub.bind("inproc://p")
    sub = z.socket(zmq.SUB); sub.setsockopt(zmq.RCVHWM, 0); sub.connect("inproc://p")
    sub.setsockopt(zmq.SUBSCRIBE, b"session.")
    ing.notify = z.socket(zmq.PUSH); ing.notify.bind("inproc://n")
    sids = [f"{i:012x}" for i in range(4)]
    changes = RowChanges()
    for sid in sids:
        cur = SessionCursor(id=sid); ing.cursors[sid] = cur
        apply(cur, 1, time.time(), "session.created", "d", None, {"workflow": "demo.events", "name": sid, "params": {},
              "limits": {}, "workdir": tmp}, changes)
    w.commit([], changes, ing.cursors)
    if live:
        ing.live_subs.topics.add(b"session.")
    frames = []
    per = n // 4
    for start in range(0, per, 2000):
        for sid in sids:
            codec = Codec(derive_key(key, sid))
            evs = [encode_json([i + 1, time.time(), "custom", None, None, {"name": "tick", "data": i}])
                   for i in range(start, min(per, start + 2000))]
            frames.append([f"{sid}:x".encode(), *codec.pack_events(sid, evs)])
    ing_mod.tune_gc()
    received = []
    t_frames = t_write = 0.0
    i = 0
    while i < len(frames):
        b = ing_mod.Batch(); nbytes = 0; flist = []
        t = time.thread_time()
        while (i < len(frames) and (b.size() if hasattr(b, "size") else len(b.rows)) < ing_mod.MAX_BATCH
               and nbytes < ing_mod.MAX_BATCH_BYTES):
            f = frames[i]; i += 1; nbytes += sum(map(len, f)); flist.append(f)
            ing._process_frames(f, b, seen=False)
        t2 = time.thread_time()
        ing._write(b, [], flist)
        t_frames += t2 - t; t_write += time.thread_time() - t2
        while True:  # the follower, not timed here (its decoding is timed below)
            try:
                got = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if live:
                received.append(got)
    done = sum(c.runner_seq for c in ing.cursors.values())
    assert done == 4 * per, (done, 4 * per)
    follower_us = float("nan")
    if live:  # what the SDK's follower does per live message: verify, parse, one dict per event
        try:
            from labd.ipc.live import live_events
        except ImportError:  # a tree from before the run form (labd.ipc.live)
            from labd.ipc.client import event_from_wire
            def live_events(body):
                return [event_from_wire(item) for item in body.get("events", [])]
        fcodec = Codec(key)
        t = time.thread_time(); seen = 0
        for got in received:
            seen += len(live_events(fcodec.unpack(got[1:]).body))
        follower_us = (time.thread_time() - t) / max(seen, 1) * 1e6
        assert seen == 4 * per, (seen, 4 * per)
    rows = sorted(sqlite3.connect(f"{tmp}/s.db").execute(  # in the order ingest wrote them: runs of 2000
        "SELECT session_id, seq, ts, kind, src, src_seq, node_id, parent, payload FROM events WHERE kind='custom'"),
        key=lambda r: (r[5] // 2000, r[0], r[1]))
    ddl = sqlite3.connect(f"{tmp}/s.db").execute("SELECT sql FROM sqlite_master WHERE name='events'").fetchone()[0]
    def raw_insert(name, sql, rs, per=1):  # the daemon's pragmas; its checkpoints are on another thread, so none here
        raw = sqlite3.connect(f"{tmp}/{name}.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL"); raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("PRAGMA wal_autocheckpoint=0"); raw.execute(ddl)
        t = time.thread_time()
        for k in range(0, len(rs), 5000):
            chunk = rs[k:k + 5000]
            raw.execute("BEGIN")
            if per == 1:
                raw.executemany(sql, chunk)
            else:  # `per` rows to a statement (store.writer's multi-row VALUES), the rest one by one
                full = len(chunk) // per * per
                flat, width = tuple(v for r in chunk[:full] for v in r), per * len(chunk[0])
                one = sql[sql.index("VALUES") + 7:]
                raw.executemany(sql + ", " + ", ".join([one] * (per - 1)),
                                [flat[i:i + width] for i in range(0, len(flat), width)])
                raw.executemany(sql, chunk[full:])
            raw.execute("COMMIT")
        return (time.thread_time() - t) / len(rs) * 1e6

    raw_us = raw_insert("raw", "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", rows)
    # the same rows without binding their NULL node_id/parent (what ingest's hot path does: store.writer.PlainRow)
    plain_sql = "INSERT INTO events (session_id, seq, ts, kind, src, src_seq, payload) VALUES (?,?,?,?,?,?,?)"
    plain_rows = [r[:6] + (r[8],) for r in rows]
    raw_plain_us = raw_insert("raw-plain", plain_sql, plain_rows)
    # ... and 100 of them to a statement, as store.writer writes them (docs/benchmarks.md §39)
    raw_multi_us = raw_insert("raw-multi", plain_sql, plain_rows, per=100)
    return {"frames_us": t_frames / done * 1e6, "write_us": t_write / done * 1e6,
            "total_us": (t_frames + t_write) / done * 1e6, "raw_us": raw_us, "raw_plain_us": raw_plain_us,
            "raw_multi_us": raw_multi_us,
            "follower_us": follower_us}

what, n = sys.argv[1], int(sys.argv[2])
out = runner(n, what == "runner-capped") if what.startswith("runner") else ingest(n, what == "ingest-live")
print(json.dumps(out))
'''


def measure(what: str, n: int, pythonpath: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", CHILD, what, str(n)], env=env, cwd=cwd,
                             capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"{what} ({pythonpath}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200_000, help="events per measurement (default 200000)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each kind (medians; default 3)")
    ap.add_argument("--baseline", metavar="DIR", help="also measure labd imported from DIR, alternated")
    args = ap.parse_args()
    print_machine(f"n={args.n:,}, {args.rounds} rounds")
    trees = {"this": str(REPO)}
    if args.baseline:
        trees["baseline"] = args.baseline
    res: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
        for what in ("runner", "runner-capped", "ingest", "ingest-live"):
            for name, path in order:
                res.setdefault((name, what), []).append(measure(what, args.n, path))

    def med(name: str, what: str, key: str) -> float:
        vals = sorted(m.get(key, float("nan")) for m in res[(name, what)])
        return vals[len(vals) // 2]

    rows = []
    for label, what, key in [("runner: emitting thread", "runner", "emit_us"),
                             ("runner: whole process", "runner", "process_us"),
                             ("runner: ctx.emit under the default output cap, emitting thread", "runner-capped",
                              "emit_us"),
                             ("runner: ctx.emit under the default output cap, whole process", "runner-capped",
                              "process_us"),
                             ("ingest thread, no follower", "ingest", "total_us"),
                             ("  of which frames (verify, decode, validate, stage)", "ingest", "frames_us"),
                             ("  of which write (commit, publish, ack)", "ingest", "write_us"),
                             ("ingest thread, a follower on every session", "ingest-live", "total_us"),
                             ("  of which write (commit, publish, ack)", "ingest-live", "write_us"),
                             ("the follower (SDK: verify, parse, a dict per event)", "ingest-live", "follower_us"),
                             ("raw sqlite3 executemany, same rows", "ingest", "raw_us"),
                             ("raw sqlite3 executemany, NULLs not bound", "ingest", "raw_plain_us"),
                             ("raw sqlite3, NULLs not bound, 100 rows to a statement", "ingest", "raw_multi_us")]:
        row = [label, f"{med('this', what, key):.2f}"]
        if args.baseline:
            row += [f"{med('baseline', what, key):.2f}", ratio(med("this", what, key), med("baseline", what, key))]
        rows.append(row)
    head = ["CPU per event (us)", "this tree"] + (["baseline", "this / baseline"] if args.baseline else [])
    print_table(head, rows, title="Event path cost, in process (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
