"""Shared helpers for the labd benchmark scripts (scripts/bench_*.py).

- :class:`BenchDaemon`: a real ``labd serve`` subprocess on a throwaway home (temp dir with a short
  runtime dir for the sockets), started in its own process group, stopped with SIGTERM, and cleaned up
  afterwards: leftover runner process groups and the template are killed, the temp dir is removed.
- :class:`EventTail`: a background thread subscribed to the daemon's live event socket (all sessions),
  recording when each (session, kind) was first seen, with ``time.perf_counter()`` receive stamps.
- :class:`CpuMeter`: CPU seconds used by the daemon (per thread) and by its runners over an interval.
- statistics and table helpers, machine info, and SIGTERM -> KeyboardInterrupt so cleanup always runs.

Nothing here asserts on timing: the machine is a noisy shared box, so the scripts print figures and
ratios measured side by side in the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # labd is installed editable, but let the scripts run from a bare checkout too
    sys.path.insert(0, str(REPO))

__all__ = ["REPO", "BenchDaemon", "EventTail", "CpuMeter", "pct", "summary", "print_table", "machine_info",
           "interrupt_on_sigterm", "fmt_rate", "fmt_ms", "ratio"]


# ---- statistics and formatting ----------------------------------------------------------------------
def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99),
            "min": min(values) if values else float("nan"), "max": max(values) if values else float("nan")}


def fmt_ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.2f}"  # noqa: PLR0124 - NaN check


def fmt_rate(per_s: float) -> str:
    if per_s != per_s:  # NaN
        return "-"
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f} k/s"
    return f"{per_s:.1f} /s"


def ratio(a: float, b: float) -> str:
    """``a / b`` as text (``x`` suffix)."""
    if not b or a != a or b != b:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def print_table(header: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    rows = [[str(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    if title:
        print(f"\n{title}")
    line = "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))))
    sys.stdout.flush()


def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def print_machine(extra: str = "") -> None:
    m = machine_info()
    print(f"machine: {m['nproc']} cpus, {m['cpu']}, Python {m['python']}, load average {m['loadavg']}"
          + (f"; {extra}" if extra else ""))
    sys.stdout.flush()


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks (cleanup) run on either.

    SIGINT gets Python's default handler explicitly: a shell starts background jobs with SIGINT ignored,
    and Python keeps an inherited "ignore".
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# ---- the daemon under test ----------------------------------------------------------------------------
class BenchDaemon:
    """A real ``labd serve`` on a temp home; use as a context manager.

    ``XDG_RUNTIME_DIR`` is pointed at a short directory inside the temp dir (in this process too, so the
    ``ipc.Client`` finds the sockets), keeping ``ipc://`` paths short and the user's real runtime dir untouched.
    """

    def __init__(self, extra_env: dict[str, str] | None = None, keep: bool = False, quiet: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="labdb-", dir="/tmp"))
        self.home = self.tmp / "home"
        self.runtime = self.tmp / "run"
        self.log_path = self.tmp / "daemon.log"
        self.keep = keep
        self.quiet = quiet
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.template_pid: int | None = None
        self._old_runtime = os.environ.get("XDG_RUNTIME_DIR")
        self._runner_pids: set[int] = set()

    # lifecycle
    def __enter__(self) -> BenchDaemon:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> None:
        self.home.mkdir(parents=True)
        self.runtime.mkdir(mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(self.runtime)
        env = {**os.environ, **self.extra_env, "XDG_RUNTIME_DIR": str(self.runtime)}
        env.pop("LABD_HOME", None)
        pp = [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(pp)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labd", "--home", str(self.home), "serve", "--log-format", "json"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(self.tmp),
            start_new_session=True,  # Ctrl-C reaches us, not the daemon: we stop it in order
        )
        from labd.ipc import Client, LabdError

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"labd daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with Client(self.home, timeout=1.0) as c:
                    c.ping()
                break
            except LabdError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"labd daemon not ready after {timeout}s:\n{self.log_tail()}") from None
                time.sleep(0.05)
        self.template_pid = self._template_pid_from_log()

    def _template_pid_from_log(self) -> int | None:
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("event") == "labd serving":
                    return rec.get("template_pid")
        return None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, timeout: float = 30.0) -> Any:
        from labd.ipc import Client

        return Client(self.home, timeout=timeout)

    @property
    def db_path(self) -> Path:
        return self.home / "labd.db"

    def db(self) -> sqlite3.Connection:
        """A read-only connection to the daemon's store."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill_leftovers(self) -> int:
        """Kill the process group of every runner the store knows, and the template; return how many."""
        pids: set[int] = set(self._runner_pids)
        if self.db_path.exists():
            with contextlib.suppress(sqlite3.Error):
                conn = sqlite3.connect(self.db_path, timeout=5)
                try:
                    pids |= {r[0] for r in conn.execute("SELECT pid FROM sessions WHERE pid IS NOT NULL")}
                finally:
                    conn.close()
        if self.template_pid:
            pids.add(self.template_pid)
        killed = 0
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)  # runners and the template lead their own process groups
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        return killed

    def close(self) -> None:
        try:
            self.stop()
        finally:
            killed = self.kill_leftovers()
            if killed and not self.quiet:
                print(f"(cleanup: killed {killed} leftover process group(s))", file=sys.stderr)
            if hasattr(self, "_log"):
                self._log.close()
            if self._old_runtime is None:
                os.environ.pop("XDG_RUNTIME_DIR", None)
            else:
                os.environ["XDG_RUNTIME_DIR"] = self._old_runtime
            if self.keep:
                print(f"(kept {self.tmp})", file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def remember_runner(self, pid: int | None) -> None:
        if pid:
            self._runner_pids.add(pid)

    # store helpers
    def wait_ended(self, sids: Iterable[str], timeout: float = 120.0, interval: float = 0.1) -> dict[str, str]:
        """Poll the store until every session in ``sids`` is terminal; return {sid: status}."""
        want = set(sids)
        deadline = time.monotonic() + timeout
        conn = self.db()
        try:
            while True:
                q = f"SELECT id, status FROM sessions WHERE id IN ({','.join('?' * len(want))})"
                rows = dict(conn.execute(q, sorted(want)).fetchall())
                done = {s: st for s, st in rows.items() if st in ("completed", "failed", "cancelled", "lost")}
                if len(done) == len(want):
                    return done
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sessions not ended after {timeout}s: {sorted(want - set(done))}")
                time.sleep(interval)
        finally:
            conn.close()


# ---- live tail -------------------------------------------------------------------------------------------
class EventTail(threading.Thread):
    """Subscribes to every session's live events; records the first receive time of each (session, kind).

    The session id is only known once ``session.start`` returns, so we subscribe to the prefix
    ``session.`` and match on the body's ``session`` afterwards.
    """

    #: what the follower does with each message (``decode``): ``sdk`` as the SDK's follow (every event a dict),
    #: ``parse`` verify and parse its JSON, without a dict per event (orjson's lists as they come, the collector
    #: paused as the SDK does: a client that reads a field or two of a few events), ``verify`` only check its
    #: signature (what following costs labd and the transport; the events are counted from the bytes, and only a
    #: message naming an awaited kind is parsed)
    DECODES = ("sdk", "parse", "verify")

    def __init__(self, home: Path, kinds: Iterable[str] | None = None, pause_gc: bool = True,
                 decode: str = "sdk") -> None:
        """``pause_gc``: decode as the SDK does (``labd.ipc.live.decode_live``: events as dicts, the cyclic garbage
        collector paused meanwhile); False: the same dicts with the collector on (the SDK before, for an A/B).
        ``decode``: one of :attr:`DECODES`."""
        super().__init__(name="bench-tail", daemon=True)
        if decode not in self.DECODES:
            raise ValueError(f"decode must be one of {self.DECODES}, not {decode!r}")
        self.pause_gc = pause_gc
        self.decode = decode
        from labd.ipc.connection import read_connection_file
        from labd.ipc.paths import layout_for

        self.info = read_connection_file(layout_for(home))
        self.kinds = set(kinds) if kinds else None
        self.first: dict[tuple[str, str], float] = {}
        self.messages = 0
        self.events = 0
        self.bad = 0
        self._cond = threading.Condition()
        self._halt = threading.Event()
        self._ready = threading.Event()

    def run(self) -> None:
        import zmq

        from labd.ipc.gcpause import gc_paused
        from labd.ipc.live import decode_live, live_events
        from labd.ipc.signing import SignatureError, Signer
        from labd.ipc.wire import Codec, WireError

        ctx = zmq.Context()
        from labd.ipc.connection import events_socket  # credentials derived from the key
        sub = events_socket(ctx, self.info)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"session.")
        sub.connect(self.info.events)
        codec = Codec(self.info.key_bytes)
        signer = Signer(self.info.key_bytes)
        self._ready.set()
        clock = time.perf_counter
        try:
            while not self._halt.is_set():
                if not sub.poll(100):
                    continue
                frames = sub.recv_multipart()
                t = clock()
                self.messages += 1
                try:
                    if self.decode == "verify":
                        signer.verify(frames[1], frames[2])
                        self.events += frames[2].count(b'"tick"')  # bench workflows' bulk events, from the bytes
                        if not any(b'"%s"' % k.encode() in frames[2] for k in self.kinds or ()):
                            continue
                        evs = live_events(codec.unpack(frames[1:]).body)
                    elif self.decode == "parse":  # the JSON parsed (orjson: a list per event), nothing more
                        with gc_paused():
                            body = codec.unpack(frames[1:]).body
                        run = body.get("run")
                        self.events += len(run[1] if isinstance(run, list) else body.get("events") or ())
                        if not any(b'"%s"' % k.encode() in frames[2] for k in self.kinds or ()):
                            continue
                        evs = live_events(body)
                    elif self.pause_gc:  # as a client of the SDK gets them: every event a dict
                        evs = decode_live(codec, frames[1:])
                        self.events += len(evs)
                    else:
                        evs = live_events(codec.unpack(frames[1:]).body)
                        self.events += len(evs)
                except (WireError, SignatureError):
                    self.bad += 1
                    continue
                sid = frames[0][len(b"session."):].decode()  # the topic names the session
                new = False
                with self._cond:
                    for ev in evs:
                        kind = ev["kind"]
                        if self.kinds is not None and kind not in self.kinds:
                            continue
                        if (sid, kind) not in self.first:
                            self.first[(sid, kind)] = t
                            new = True
                    if new:
                        self._cond.notify_all()
        finally:
            sub.close(0)
            ctx.term()

    def start(self) -> None:
        super().start()
        self._ready.wait(10)
        time.sleep(0.3)  # PUB/SUB "slow joiner": let the subscription reach the daemon

    def wait_for(self, sid: str, kind: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (sid, kind) not in self.first:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.first[(sid, kind)]

    def get(self, sid: str, kind: str) -> float | None:
        with self._cond:
            return self.first.get((sid, kind))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# ---- CPU accounting ----------------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds of the daemon (per thread) and of the runners (the template's reaped children)."""

    def __init__(self, daemon_pid: int, template_pid: int | None) -> None:
        import psutil

        self.daemon = psutil.Process(daemon_pid)
        self.template = psutil.Process(template_pid) if template_pid else None
        self._t0 = 0.0
        self._threads0: dict[int, float] = {}
        self._daemon0 = 0.0
        self._children0 = 0.0

    def _snap(self) -> tuple[float, dict[int, float], float, float]:
        ct = self.daemon.cpu_times()
        threads = {t.id: t.user_time + t.system_time for t in self.daemon.threads()}
        children = 0.0
        if self.template is not None:
            tt = self.template.cpu_times()
            children = tt.children_user + tt.children_system
        return time.monotonic(), threads, ct.user + ct.system, children

    def start(self) -> None:
        self._t0, self._threads0, self._daemon0, self._children0 = self._snap()

    def stop(self) -> dict[str, Any]:
        """Figures since :meth:`start` (runners count only once they have exited and been reaped)."""
        t1, threads1, daemon1, children1 = self._snap()
        wall = max(1e-9, t1 - self._t0)
        per_thread = sorted(((tid, cpu - self._threads0.get(tid, 0.0)) for tid, cpu in threads1.items()),
                            key=lambda x: -x[1])
        return {"wall": wall, "daemon_cpu": daemon1 - self._daemon0,
                "busiest_thread_cpu": per_thread[0][1] if per_thread else 0.0,
                "busiest_thread_id": per_thread[0][0] if per_thread else None,
                "threads": per_thread, "runners_cpu": children1 - self._children0}


def thread_names(pid: int) -> dict[int, str]:
    """Kernel names of a process's threads (Python 3.11 does not name OS threads, so mostly 'python')."""
    out = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out[int(tid)] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    return out


def bare_channel(spool: Path, secrets: dict[str, str] | None = None) -> tuple[Callable[..., int], Callable[[], None]]:
    """(emit of a never-started runner channel spooling to ``spool``, withholding ``secrets``; what the channel
    thread does with the daemon's ack, to call between measured blocks: the backlog leaves memory and the spool).
    Nothing is sent: emit encodes and spools, as on a runner's workflow thread."""
    from labd.ipc.wire import Codec
    from labd.runner.channel import Channel

    key = b"k" * 32
    channel = Channel("tcp://127.0.0.1:9", key, "bench", max_unacked=10**9, spool=spool)
    if secrets is not None:
        channel.withhold(secrets)
    codec = Codec(key)

    def between() -> None:
        with channel._lock:  # noqa: SLF001 - a benchmark standing in for the channel thread
            channel._take()  # noqa: SLF001
        channel._on_message(codec.pack("ack", {"next": channel.last_seq + 1}))  # noqa: SLF001
        channel._trim_spool()  # noqa: SLF001

    return channel.emit, between


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Shared helpers of the labd benchmarks; run directly to print the "
                                 "machine line, or with --smoke to start and stop a throwaway daemon.")
    ap.add_argument("--smoke", action="store_true", help="start a daemon on a temp home, ping it, stop it, clean up")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine()
    if args.smoke:
        t0 = time.perf_counter()
        with BenchDaemon() as d, d.client() as c:
            print(f"daemon pid {d.pid} (template {d.template_pid}) ready in {time.perf_counter() - t0:.2f} s; "
                  f"ping: {c.ping()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
