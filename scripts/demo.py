"""labd demo: a daemon in a temporary home, several concurrent sessions, live output, a summary.

Run through ``scripts/demo`` (which installs labd first) or directly with the venv's Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labd.ipc import Client, LabdError  # noqa: E402

_TTY = sys.stdout.isatty()
COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"] if _TTY else [""]
RESET = "\033[0m" if _TTY else ""

SESSIONS = [
    ("counter", "demo.count", {"n": 8, "delay": 0.25, "label": "tick"}, {}),
    ("hasher", "demo.compute", {"rounds": 4, "work": 150_000}, {}),
    ("printer", "demo.chatty", {"lines": 20_000, "width": 40}, {}),
    ("research", "planning_and_control", {"max_steps": 3}, {"budget": 1.0}),
    ("sleeper", "demo.sleep", {"seconds": 60}, {"timeout": 2.0}),
]


def describe(ev: dict) -> str | None:
    """One line for the agent events worth showing live (everything is in the store anyway)."""
    kind, p = ev["kind"], ev["payload"]
    if kind == "step.started" and p.get("kind") == "phase":
        return f"phase: {p['name']}"
    if kind == "agent.turn.started":
        return f"{p['agent']} is working"
    if kind == "code.execution":
        return f"{p['agent']} ran {p['language']} code -> exit {p['exit_code']}: {p['output'].strip()[:50]}"
    if kind == "file.created":
        return f"file {p['path']} ({p['size']} bytes) by {p.get('agent') or 'workflow'}"
    return None


def start_daemon(home: Path) -> subprocess.Popen[bytes]:
    log = open(home.parent / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(home), "serve",
                             "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with Client(home, timeout=1) as c:
                c.ping()
                return proc
        except LabdError:
            if proc.poll() is not None:
                raise SystemExit(f"daemon failed to start; log: {home.parent / 'daemon.log'}") from None
            time.sleep(0.1)
    raise SystemExit("daemon did not become ready in 30 s")


def follow(home: Path, sid: str, label: str, color: str, quiet_after: int, lock: threading.Lock) -> None:
    """Print a session's output live, prefixed; long outputs are elided after ``quiet_after`` lines."""
    shown = 0
    with Client(home) as c:
        for ev in c.follow(sid, timeout=120):
            line_for_agent = describe(ev)
            if line_for_agent:
                with lock:
                    print(f"{color}{label:>8} |{RESET} {line_for_agent}", flush=True)
            elif ev["kind"] == "output":
                for line in ev["payload"]["text"].splitlines():
                    shown += 1
                    if shown <= quiet_after:
                        with lock:
                            print(f"{color}{label:>8} |{RESET} {line}", flush=True)
                    elif shown == quiet_after + 1:
                        with lock:
                            print(f"{color}{label:>8} |{RESET} … (more output recorded in the store)", flush=True)
            elif ev["kind"] in ("session.ended", "limit.exceeded"):
                p = ev["payload"]
                msg = (f"ended: {p['status']} — {p['reason']}" if ev["kind"] == "session.ended"
                       else f"limit exceeded: {p['limit']}")
                with lock:
                    print(f"{color}{label:>8} |{RESET} == {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", action="store_true", help="keep the temporary home afterwards")
    ap.add_argument("--lines", type=int, default=6, help="lines of live output shown per session")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="labd-demo-"))
    home = base / "home"
    print(f"labd demo — temporary home {home}\n")
    daemon = start_daemon(home)
    try:
        lock = threading.Lock()
        with Client(home) as c:
            ids = []
            t0 = time.monotonic()
            for (label, workflow, params, limits) in SESSIONS:
                sid = c.start(workflow, name=f"demo-{label}", params=params, **limits)
                ids.append((label, sid))
                print(f"started {label:<8} {workflow:<13} as session {sid}")
            print()
            threads = [threading.Thread(target=follow, args=(home, sid, label, COLORS[i % len(COLORS)],
                                                             args.lines, lock))
                       for i, (label, sid) in enumerate(ids)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - t0
            print(f"\nall {len(ids)} sessions ended in {elapsed:.1f}s — each ran in its own process:\n")
            rows = []
            for label, sid in ids:
                s = c.session(sid)
                dur = (s["ended_at"] or time.time()) - (s["started_at"] or s["created_at"])
                cost = f"${s['cost']:.4f}" if s["cost"] else "-"
                rows.append([sid, label, s["workflow"], str(s["pid"]), s["status"], str(s["last_seq"]),
                             f"{s['peak_rss'] / 2**20:.0f} MiB", f"{dur:.2f}s", cost, s["reason"] or ""])
            header = ["SESSION", "NAME", "WORKFLOW", "PID", "STATUS", "EVENTS", "PEAK RSS", "RAN", "LLM COST",
                      "REASON"]
            widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
            for r in [header, *rows]:
                print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
            print("\n(LLM cost is the offline scripted model's nominal price: no network was used.)")
            if args.keep:
                print(f"\nEverything is in {home / 'labd.db'}; try: .venv/bin/labd --home {home} show {ids[1][1]}")
            else:
                print("\n(run with --keep to keep the home and explore it with `labd show` / `labd events`)")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        print("daemon stopped.")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
