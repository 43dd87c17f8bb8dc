#!/usr/bin/env python
"""Session start latency: labd's warm template vs. a cold interpreter vs. multiprocess's forkserver.

Measured side by side, interleaved round by round, in one run:

(a) warm  - the real daemon path: ``ipc.Client.start("demo.count", n=2, delay=0.2)`` — a workflow that
            prints its first line and then *keeps working* (so no end-of-session flush can carry the line) ->
            the session's events as seen by a client subscribed to the live tail (the daemon's event PUB
            socket, prefix ``session.``). The headline figure is request -> first ``output`` event (what a
            user waits for). Reported separately: ``session.created`` (the daemon committed the request; written
            before the runner exists, so it says nothing about the runner), ``session.started`` (the forked
            runner is up, connected back, and its first event went through ingest), the request's reply, and
            when the runner *emitted* the output (event ts, wall clock), to split runner vs. transport time.
(b) cold  - a fresh interpreter, ``python -c "import <the template's PRELOAD modules>; write(pipe)"``, Popen ->
            first byte on the pipe; and ``python -m labd.runner.template`` Popen -> its ``ready`` line (the same
            imports plus gc.collect/freeze, i.e. what the daemon pays once per template start).
(c) forkserver - ``multiprocess.get_context("forkserver")`` with ``set_forkserver_preload`` of the same
            modules: ``Process.start()`` -> first message over a ``Pipe``.
(d) os.fork - a bare fork of this (warm) process, child writes one byte to a pipe: the floor.
(e) Jupyter - issue 7's anchor (scripts/jupyter_anchor.py; ``pip install 'labd[bench]'``): a fresh IPython kernel,
            ``start_kernel`` -> the first stdout of ``print`` at the client; and an idle kernel's PSS next to an
            idle labd runner's.

Prints p50/p90/p99 per variant and the p50 ratios. The machine is shared and noisy: read the ratios.

A/B: by default the second daemon runs with ``spare_runners = 0``. With ``--base REF`` it runs the code of git
revision ``REF`` instead (spare runner on in both; exported with ``git archive`` to a temp directory and put first
on that daemon's ``PYTHONPATH``, so its template and runners are ``REF``'s too): a change to the start path,
measured against the code before it, rounds alternated in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # noqa: E402
from bench_common import (  # noqa: E402
    BenchDaemon,
    EventTail,
    fmt_ms,
    interrupt_on_sigterm,
    print_machine,
    print_table,
    ratio,
    summary,
)

from labd.ipc.connection import events_socket  # noqa: E402
from labd.runner.template import PRELOAD  # noqa: E402

WORKFLOW = "demo.count"
PARAMS = {"n": 2, "delay": 0.2}  # prints "count 1/2", then works (sleeps) on: the print must leave on its own
#: the same workflow as a user's own module (what `labd run mypkg.flows:count` starts): its start also checks
#: the workflow by importing the module in a throwaway child of the template (docs/design.md, "Workflow checks")
OWN_WORKFLOW = "benchflows:count"
OWN_MODULE = """import time


def count(ctx, n: int = 2, delay: float = 0.2):
    for i in range(n):
        print(f"count {i + 1}/{n}", flush=True)
        time.sleep(delay)
"""


# ---- (c) forkserver target: module level so the forkserver imports it once (we preload __main__) ----------
def _fs_child(conn: Any) -> None:
    conn.send_bytes(b"r")
    conn.close()


def cold_import_code(fd: int) -> str:
    imports = "; ".join(f"import {m}" for m in PRELOAD)
    return f"import os; {imports}; os.write({fd}, b'r')"


def time_cold_c(env: dict[str, str]) -> float:
    """Popen of ``python -c 'import <PRELOAD>; write'`` -> first byte on a pipe."""
    r, w = os.pipe()
    try:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", cold_import_code(w)], pass_fds=(w,), env=env,
                             stdin=subprocess.DEVNULL)
        os.close(w)
        w = -1
        try:
            data = os.read(r, 1)
            t1 = time.perf_counter()
            p.wait(30)
        except BaseException:  # Ctrl-C: do not leave the child behind
            p.kill()
            p.wait()
            raise
        if data != b"r":
            raise RuntimeError(f"cold child wrote {data!r} (exit {p.returncode})")
        return t1 - t0
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def time_cold_template(env: dict[str, str]) -> float:
    """Popen of ``python -m labd.runner.template`` -> its ``{"op": "ready"}`` line (then close its stdin: it exits)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "labd.runner.template"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=env, start_new_session=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        line = p.stdout.readline()
        t1 = time.perf_counter()
        if b'"ready"' not in line:
            raise RuntimeError(f"template did not get ready: {line!r}")
        return t1 - t0
    finally:
        if p.stdin:
            p.stdin.close()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout:
            p.stdout.close()


def time_fork() -> float:
    """os.fork() of this process (which has imported the runner stack) -> first byte on a pipe."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: nothing but the write
        try:
            os.write(w, b"r")
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 1)
    t1 = time.perf_counter()
    os.close(r)
    os.waitpid(pid, 0)
    if data != b"r":
        raise RuntimeError("fork child did not write")
    return t1 - t0


class ForkServerBench:
    def __init__(self) -> None:
        import multiprocess

        self.ctx = multiprocess.get_context("forkserver")
        # '__main__' first: the server imports this script once, so children do not re-import it
        self.ctx.set_forkserver_preload(["__main__", *PRELOAD])

    def once(self) -> float:
        r, w = self.ctx.Pipe(duplex=False)
        t0 = time.perf_counter()
        p = self.ctx.Process(target=_fs_child, args=(w,))
        p.start()
        data = r.recv_bytes()
        t1 = time.perf_counter()
        w.close()
        r.close()
        p.join(10)
        if data != b"r":
            raise RuntimeError("forkserver child did not send")
        return t1 - t0

    def close(self) -> None:
        try:
            from multiprocess import forkserver

            forkserver._forkserver._stop()
        except Exception:  # noqa: BLE001 - best effort; the server also exits when we do
            pass


class WarmBench:
    """Sessions through the real daemon, one at a time."""

    def __init__(self, daemon: BenchDaemon, tail: EventTail) -> None:
        self.d = daemon
        self.tail = tail
        self.c = daemon.client()
        self.rows: list[dict[str, float]] = []
        self.own_rows: list[dict[str, float]] = []  # starts of OWN_WORKFLOW
        self.failed = 0

    def once(self, own_dir: str | None = None) -> dict[str, float] | None:
        """One start of ``demo.count``, or with ``own_dir`` of the same workflow as a user's module there."""
        os.environ["XDG_RUNTIME_DIR"] = str(self.d.runtime)  # two daemons in one run: each has its own
        wall0 = time.time()
        t0 = time.perf_counter()
        sid = (self.c.start(OWN_WORKFLOW, params=PARAMS, cwd=own_dir, pythonpath=[]) if own_dir
               else self.c.start(WORKFLOW, params=PARAMS))
        t_reply = time.perf_counter()
        t_created = self.tail.wait_for(sid, "session.created", 10)
        t_launched = self.tail.wait_for(sid, "session.launched", 10)
        t_started = self.tail.wait_for(sid, "session.started", 10)
        t_output = self.tail.wait_for(sid, "output", 10)
        t_ended = self.tail.wait_for(sid, "session.ended", 30)
        if t_ended is None:  # the live tail may drop: make sure it really ended before the next one
            self.d.wait_ended([sid], timeout=30)
        if None in (t_created, t_started, t_output):
            self.failed += 1
            return None
        assert t_output is not None
        row = {"reply": t_reply - t0, "created": t_created - t0, "started": t_started - t0,
               "output": t_output - t0}
        out_emitted = self.tail.ts_of(sid, "output")
        if out_emitted is not None:
            row["output_emitted"] = out_emitted - wall0
        if t_launched is not None:
            row["launched"] = t_launched - t0
        emitted = self.tail.ts_of(sid, "session.started")
        if emitted is not None:
            row["started_emitted"] = emitted - wall0  # runner's wall clock vs ours: same machine
        if t_ended is not None:
            row["ended"] = t_ended - t0
        (self.own_rows if own_dir else self.rows).append(row)
        return row

    def close(self) -> None:
        self.c.close()


class TsTail(EventTail):
    """An EventTail that also keeps the event's own ``ts`` (the emitter's wall clock) for first sightings."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.ts: dict[tuple[str, str], float] = {}

    def run(self) -> None:  # same loop, plus event timestamps
        import zmq

        from labd.ipc.wire import Codec, WireError

        ctx = zmq.Context()
        sub = events_socket(ctx, self.info)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"session.")
        sub.connect(self.info.events)
        codec = Codec(self.info.key_bytes)
        self._ready.set()
        try:
            while not self._halt.is_set():
                if not sub.poll(100):
                    continue
                frames = sub.recv_multipart()
                t = time.perf_counter()
                self.messages += 1
                try:
                    msg = codec.unpack(frames[1:])
                except WireError:
                    self.bad += 1
                    continue
                sid = msg.body.get("session")
                with self._cond:
                    run = msg.body.get("run")  # the run form: [seq offset, the runner's events] (labd.ipc.live)
                    for ev in (run[1] if run is not None else msg.body.get("events") or []):  # ts [1], kind [2]
                        key = (sid, ev[2])
                        if key not in self.first:
                            self.first[key] = t
                            self.ts[key] = ev[1]
                    self._cond.notify_all()
        finally:
            sub.close(0)
            ctx.term()

    def ts_of(self, sid: str, kind: str) -> float | None:
        with self._cond:
            return self.ts.get((sid, kind))


def export_base(ref: str, dest: str) -> str:
    """``git archive`` of ``ref`` under ``dest``, plus an import root in which ``labd.*`` maps to that tree the way
    the editable install maps it to ours (pyproject's package-dir); returns the import root."""
    import tarfile
    from io import BytesIO

    src = os.path.join(dest, "src")
    os.makedirs(src)
    data = subprocess.run(["git", "-C", str(bench_common.REPO), "archive", ref], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(src, filter="data")
    root = os.path.join(dest, "pp")
    pkg = os.path.join(root, "labd")
    os.makedirs(pkg)
    for name in os.listdir(os.path.join(src, "labd")):
        os.symlink(os.path.join(src, "labd", name), os.path.join(pkg, name))
    for sub in ("daemon", "runner", "ipc", "store", "frontends"):
        os.symlink(os.path.join(src, sub), os.path.join(pkg, sub))
    return root


@contextlib.contextmanager
def code_from(root: str | None) -> Any:
    """While a BenchDaemon starts: its PYTHONPATH begins with ``root`` (None: this checkout)."""
    old = bench_common.REPO
    if root is not None:
        bench_common.REPO = type(old)(root)
    try:
        yield
    finally:
        bench_common.REPO = old


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", type=int, default=40, help="warm (daemon) session starts, per daemon (default 40)")
    ap.add_argument("--fork", type=int, default=100, help="bare os.fork samples (default 100)")
    ap.add_argument("--forkserver", type=int, default=100, help="multiprocess forkserver starts (default 100)")
    ap.add_argument("--cold", type=int, default=12, help="cold interpreter starts, per cold variant (default 12)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up rounds per variant (default 3)")
    ap.add_argument("--pause", type=float, default=0.1,
                    help="seconds between rounds (default 0.1; a spare is forked 0.05 s after each launch)")
    ap.add_argument("--no-ab", action="store_true",
                    help="only the default daemon (spare runner on); no second daemon with spare_runners = 0")
    ap.add_argument("--base", metavar="REF", default=None,
                    help="A/B against git revision REF's code (spare on in both) instead of spare_runners = 0")
    ap.add_argument("--jupyter", type=int, default=5,
                    help="fresh Jupyter kernels (start -> first output), the issue's anchor (default 5; 0: none; "
                         "needs pip install 'labd[bench]')")
    ap.add_argument("--own", type=int, default=20,
                    help="starts of the same workflow as a user's own module, on the first daemon, alternated with "
                         "its demo.count starts (default 20; 0 = skip)")
    ap.add_argument("--keep", action="store_true", help="keep the temp home (daemon log, database)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine(f"workflow {WORKFLOW} {PARAMS}")

    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join([str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for m in PRELOAD:  # this process is "warm" too, for the os.fork floor
        __import__(m)

    samples: dict[str, list[float]] = {"fork": [], "forkserver": [], "cold_c": [], "cold_template": [],
                                       "jupyter": []}
    mem: dict[str, tuple[float, float]] = {}  # idle process -> (PSS, USS) MiB
    fs = None
    benches: dict[str, WarmBench] = {}
    tails: list[TsTail] = []
    t_begin = time.monotonic()
    base_root = None
    if args.base and not args.no_ab:
        import tempfile

        base_tmp = tempfile.mkdtemp(prefix="labd-base-")
        base_root = export_base(args.base, base_tmp)
    b_label = f"base {args.base}" if base_root else "no spare"
    import tempfile

    own_dir = tempfile.mkdtemp(prefix="labd-own-")
    with open(os.path.join(own_dir, "benchflows.py"), "w") as f:
        f.write(OWN_MODULE)
    variants = [("spare", "1", None)]
    if not args.no_ab:  # B: no spare runner, or --base REF's code with one
        variants.append((b_label, "0" if base_root is None else "1", base_root))
    try:
        with contextlib.ExitStack() as stack:
            import shutil

            stack.callback(shutil.rmtree, own_dir, True)
            if base_root is not None:
                stack.callback(shutil.rmtree, os.path.dirname(base_root), True)
            for label, value, root in variants:
                # one daemon per variant, started and connected in turn (each points XDG_RUNTIME_DIR at its own)
                with code_from(root):
                    d = stack.enter_context(BenchDaemon(keep=args.keep, extra_env={"LABD_SPARE_RUNNERS": value}))
                tail = TsTail(d.home)
                tail.start()
                tails.append(tail)
                benches[label] = WarmBench(d, tail)
            fs = ForkServerBench()
            for _ in range(args.warmup):  # not timed: first requests, forkserver start, page cache
                for b in benches.values():
                    b.once()
                    time.sleep(args.pause)
                fs.once()
                time_fork()
                if args.own:
                    benches["spare"].once(own_dir)
            for b in benches.values():
                b.rows.clear()
                b.own_rows.clear()
            rounds = max(args.warm, args.fork, args.forkserver, args.cold, args.own)
            cold_every = max(1, rounds // max(1, args.cold)) if args.cold else 0
            done_cold = 0
            for i in range(rounds):
                if i < args.warm:  # A/B alternated round by round: both see the same box
                    order = list(benches.values()) if i % 2 == 0 else list(benches.values())[::-1]
                    for b in order:
                        b.once()
                        time.sleep(args.pause)
                if i < args.own:
                    benches["spare"].once(own_dir)
                    time.sleep(args.pause)
                if i < args.forkserver:
                    samples["forkserver"].append(fs.once())
                if i < args.fork:
                    samples["fork"].append(time_fork())
                if cold_every and i % cold_every == 0 and done_cold < args.cold:
                    samples["cold_c"].append(time_cold_c(env))
                    samples["cold_template"].append(time_cold_template(env))
                    done_cold += 1
                time.sleep(args.pause)
            if args.jupyter:  # the anchor, in this run (kernels one after another: ~0.5-1 s each)
                jupyter_anchor(args.jupyter, samples, mem, benches["spare"])
            for label, b in benches.items():
                print(f"\n[{label}] {len(b.rows)} warm sessions ({b.failed} without a live event), live tail: "
                      f"{b.tail.messages} messages, {b.tail.bad} undecodable")
            for label, b in benches.items():
                report(b.rows, samples, mem, title=f"daemon with {label}" + (" (spare_runners = 1, the default)"
                                                                       if label == "spare" else
                                                                       " (spare_runners = 0)" if label == "no spare"
                                                                       else " (spare_runners = 1)"),
                       goal=label == "spare")
            if len(benches) == 2:
                compare(benches["spare"].rows, benches[b_label].rows,
                        "this checkout" if base_root else "spare", b_label)
            if benches["spare"].own_rows:  # a user's module: its start also imports it once to check it
                compare(benches["spare"].own_rows, benches["spare"].rows, f"own module {OWN_WORKFLOW}",
                        f"built-in {WORKFLOW}")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        for b in benches.values():
            b.close()
        for tail in tails:
            tail.stop()
        if fs is not None:
            fs.close()
    print(f"\n(total {time.monotonic() - t_begin:.1f}s)")
    return 0


def compare(on: list[dict[str, float]], off: list[dict[str, float]], a_name: str = "spare",
            b_name: str = "no spare") -> None:
    """A vs B side by side (same run, rounds alternated): the spare runner's effect, or this checkout vs --base."""
    table = []
    for name, what in (("reply", "start() reply"), ("created", "session.created visible"),
                       ("started_emitted", "runner emits started"), ("started", "session.started visible"),
                       ("output_emitted", "runner emits first output"), ("output", "FIRST OUTPUT visible")):
        a = summary([r[name] for r in on if name in r])
        b = summary([r[name] for r in off if name in r])
        table.append([what, fmt_ms(a["p50"]), fmt_ms(b["p50"]), ratio(a["p50"], b["p50"]),
                      fmt_ms(a["p99"]), fmt_ms(b["p99"]), ratio(a["p99"], b["p99"])])
    print_table(["request ->", f"{a_name} p50", f"{b_name} p50", "ratio", f"{a_name} p99", f"{b_name} p99", "ratio"],
                table, title=f"\n{a_name} vs {b_name} (ms; same run, rounds alternated)")


def jupyter_anchor(n: int, samples: dict[str, list[float]], mem: dict[str, tuple[float, float]],
                   bench: WarmBench) -> None:
    """``n`` fresh Jupyter kernels: start -> first output at the client (s, into ``samples["jupyter"]``); and
    the PSS and USS of an idle kernel next to an idle labd runner's (``mem``, MiB)."""
    import jupyter_anchor as ja

    if not ja.available():
        print("\nJupyter anchor skipped: jupyter_client/ipykernel not installed (pip install 'labd[bench]')")
        return
    samples["jupyter"].extend(ms / 1000 for ms in ja.kernel_first_output(n))
    mem["Jupyter kernel"] = ja.kernel_idle_memory()
    import psutil

    c = bench.c
    os.environ["XDG_RUNTIME_DIR"] = str(bench.d.runtime)
    sid = c.start("demo.sleep", params={"seconds": 30})
    deadline = time.monotonic() + 30
    while not c.session(sid).get("pid") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # a benchmark: idle like the kernel above
    info = psutil.Process(c.session(sid)["pid"]).memory_full_info()  # forked: shares the template's pages
    mem["labd runner"] = (info.pss / 2**20, info.uss / 2**20)
    c.kill(sid)


def report(rows: list[dict[str, float]], samples: dict[str, list[float]], mem: dict[str, tuple[float, float]],
           title: str = "", goal: bool = True) -> None:
    """The table of one daemon's warm starts beside the references; with ``goal``, issue 7's verdict on them (this
    checkout's daemon only: with ``--base`` the base's report comes last and must not read as the verdict)."""
    def col(name: str) -> list[float]:
        return [r[name] for r in rows if name in r]

    lines: list[tuple[str, str, list[float]]] = [
        ("warm: start() reply", "request -> reply (runner forked)", col("reply")),
        ("warm: session.created", "request -> first event visible on live tail", col("created")),
        ("warm: session.launched", "request -> launched visible", col("launched")),
        ("warm: runner emits started", "request -> runner's emit (its clock)", col("started_emitted")),
        ("warm: session.started", "request -> runner's first event visible", col("started")),
        ("warm: runner emits output", "request -> first print emitted (its clock)", col("output_emitted")),
        ("warm: FIRST OUTPUT", "request -> first output event visible", col("output")),
        ("warm: session.ended", "request -> ended visible (2 x 0.2 s workflow)", col("ended")),
        ("cold: python -c import", "Popen -> PRELOAD imported, pipe write", samples["cold_c"]),
        ("cold: -m labd.runner.template", "Popen -> template 'ready' line", samples["cold_template"]),
        ("forkserver (preloaded)", "Process.start -> first Pipe message", samples["forkserver"]),
        ("os.fork (floor)", "fork -> first pipe byte", samples["fork"]),
        ("Jupyter kernel (ipykernel)", "start_kernel -> first stdout at the client", samples["jupyter"]),
    ]
    created = summary(col("created"))["p50"]
    started = summary(col("started"))["p50"]
    table = []
    for name, what, vals in lines:
        if not vals:
            continue
        s = summary(vals)
        table.append([name, what, s["n"], fmt_ms(s["p50"]), fmt_ms(s["p90"]), fmt_ms(s["p99"]),
                      ratio(s["p50"], created), ratio(s["p50"], started)])
    print_table(["variant", "measures", "n", "p50 ms", "p90 ms", "p99 ms", "p50/warm created", "p50/warm started"],
                table, title=f"\nSession start latency, {title} (ms; ratios of p50s)")

    cold = summary(samples["cold_c"])["p50"]
    fsv = summary(samples["forkserver"])["p50"]
    fk = summary(samples["fork"])["p50"]
    print("\nside by side (p50):")
    print(f"  cold python -c import / warm session.started     = {ratio(cold, started)}  (warm is that much faster)")
    print(f"  cold python -c import / warm session.created     = {ratio(cold, created)}")
    print(f"  forkserver start / warm session.started          = {ratio(fsv, started)}")
    print(f"  os.fork floor / warm session.started             = {ratio(fk, started)}")
    emitted = summary(col("started_emitted"))["p50"]
    if emitted == emitted:
        print(f"  warm session.started split: runner up and emitting {fmt_ms(emitted)} ms after the request, "
              f"visible {fmt_ms(started - emitted)} ms later (channel -> ingest -> commit -> PUB)")
    out = summary(col("output"))
    out_emitted = summary(col("output_emitted"))["p50"]
    if out_emitted == out_emitted:
        print(f"  first output split: printed and emitted {fmt_ms(out_emitted)} ms after the request, visible "
              f"{fmt_ms(out['p50'] - out_emitted)} ms later (capture -> spool -> channel -> ingest -> commit -> PUB)")
    if samples["jupyter"]:
        jup = summary(samples["jupyter"])["p50"]
        print(f"  Jupyter kernel first output / warm FIRST OUTPUT  = {ratio(jup, out['p50'])}  (issue 7: >= 30x)")
    if mem:
        print("  idle memory: " + ", ".join(f"{k} PSS {p:.1f} MiB, USS {u:.1f} MiB" for k, (p, u) in mem.items()))
    if not goal:
        return
    verdict = "MET" if out["p50"] <= 0.015 and out["p99"] <= 0.030 else "NOT MET"
    print(f"\ngoal (issue 7): request -> first output at a client p50 <= 15 ms, p99 <= 30 ms: p50 {fmt_ms(out['p50'])} "
          f"ms, p99 {fmt_ms(out['p99'])} ms -> {verdict}  (session.created p50 {fmt_ms(created)} ms, "
          f"session.started p50 {fmt_ms(started)} ms, reported for comparison only)")

if __name__ == "__main__":
    sys.exit(main())
