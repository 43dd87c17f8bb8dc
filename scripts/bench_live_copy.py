"""The live copy's cost on the ingest thread, A/B/C alternated in one process (robust to a busy box).

The real ingest code (:class:`~labd.daemon.ingest.Ingest`'s frame handling, ``_process_frames``, and its publish
step, ``_send_batch``) handles the same pre-signed runner frames (4 sessions, frames of ``--frame`` events) three
ways, alternated ``--rounds`` times:

- ``none``: nobody follows (no live copy at all);
- ``run``: a follower on every session, the run form (a frame published as the runner sent it: this tree);
- ``per-event``: a follower on every session, the per-event form forced (``run_span`` disabled: what every frame
  cost before the run form; the code path is the one kept for partial frames).

The store's commit is left out (it is the same in all three; see bench_event_cost.py for it). Printed: CPU time of
the thread per event (median over rounds) and the live copy's cost = follower minus none, per form; and the
follower's side (SDK decoding: verify, parse, a dict per event) for each form. Payloads: ``custom`` events with
``--data`` bytes of text each. Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import print_machine, print_table  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=40_000, help="events per session per pass (default 40000)")
    ap.add_argument("--frame", type=int, default=500, help="events per runner frame (default 500)")
    ap.add_argument("--data", type=int, default=200, help="bytes of text per event payload (default 200)")
    ap.add_argument("--rounds", type=int, default=7, help="alternations of the three ways (default 7)")
    args = ap.parse_args()
    print_machine(f"4 sessions x {args.n:,} events, frames of {args.frame}, {args.data} B text, "
                  f"{args.rounds} rounds")

    import zmq

    from labd.daemon import ingest as ing_mod
    from labd.daemon import runner_frames  # it calls run_span by its module global
    from labd.ipc.live import live_events
    from labd.ipc.signing import derive_key
    from labd.ipc.wire import Codec, encode_json
    from labd.store.db import migrate, open_engine
    from labd.store.projections import SessionCursor
    from labd.store.writer import BatchWriter

    key = os.urandom(32)
    tmp = tempfile.mkdtemp(prefix="labd-live-copy-")
    engine = open_engine(f"sqlite:///{tmp}/s.db")
    migrate(engine)
    z = zmq.Context()
    ing = ing_mod.Ingest(z, BatchWriter(engine), key, "inproc://r", "inproc://p", {}, {}, 16 << 20, Path(tmp))
    ing.router = z.socket(zmq.ROUTER)
    ing.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    ing.router.bind("inproc://r")
    ing.pub = z.socket(zmq.XPUB)
    ing.pub.setsockopt(zmq.SNDHWM, 0)
    ing.pub.bind("inproc://p")
    sub = z.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect("inproc://p")
    sub.setsockopt(zmq.SUBSCRIBE, b"session.")
    ing.notify = z.socket(zmq.PUSH)
    ing.notify.bind("inproc://n")
    sids = [f"{i:012x}" for i in range(4)]
    text = "é" + "x" * (args.data - 1)
    frames = []
    for start in range(0, args.n, args.frame):
        for sid in sids:
            codec = Codec(derive_key(key, sid))
            evs = [encode_json([i + 1, time.time(), "custom", None, None,
                                {"name": "tick", "data": {"i": i, "t": text}}])
                   for i in range(start, min(args.n, start + args.frame))]
            frames.append([f"{sid}:x".encode(), *codec.pack_events(sid, evs)])
    total = 4 * args.n
    ing_mod.tune_gc()
    real_span = runner_frames.run_span
    fcodec = Codec(key)

    def one(way: str) -> tuple[float, float]:
        for sid in sids:  # the same frames again: from the start of each session
            ing.cursors[sid] = SessionCursor(id=sid)
        ing.live_subs.topics = set() if way == "none" else {b"session."}
        runner_frames.run_span = real_span if way == "run" else (lambda raw, sid: None)  # type: ignore[assignment]
        t = time.thread_time()
        for k in range(0, len(frames), 40):
            b = ing_mod.Batch()
            for f in frames[k:k + 40]:
                ing._process_frames(f, b, seen=True)
            ing._send_batch(b)
        cpu = (time.thread_time() - t) / total * 1e6
        got = []
        while True:
            try:
                got.append(sub.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        follower = float("nan")
        if way != "none":
            t = time.thread_time()
            seen = sum(len(live_events(fcodec.unpack(m[1:]).body)) for m in got)
            follower = (time.thread_time() - t) / total * 1e6
            assert seen == total, (way, seen, total)
        return cpu, follower

    ways = ("none", "run", "per-event")
    res: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    one("run")  # warm-up
    for r in range(args.rounds):
        for w in (ways if r % 2 == 0 else ways[::-1]):
            res[w].append(one(w))
    runner_frames.run_span = real_span

    def med(w: str, i: int) -> float:
        return statistics.median(x[i] for x in res[w])

    base = med("none", 0)
    diffs = {w: statistics.median(a[0] - b[0] for a, b in zip(res[w], res["none"], strict=True)) for w in ways[1:]}
    rows = [["ingest thread, nobody following", f"{base:.2f}", "", ""]]
    for w, label in (("run", "following all, run form (this tree)"),
                     ("per-event", "following all, per-event form (before)")):
        rows.append([f"ingest thread, {label}", f"{med(w, 0):.2f}", f"+{diffs[w]:.2f}", f"{med(w, 1):.2f}"])
    print_table(["CPU per event (us), medians", "ingest thread", "live copy (paired)", "SDK follower"], rows,
                title="The live copy, A/B/C in one process (commit left out)")
    print(f"live copy: run form {diffs['run']:.2f} us vs per-event form {diffs['per-event']:.2f} us per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
