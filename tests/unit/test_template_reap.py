"""The runner template's reaping (runner/template.py): every child's end reaches the daemon."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labd.runner.template import _reap
from tests.conftest import wait_until


@pytest.mark.timeout(30)
def test_an_unused_spares_end_is_reported_like_any_childs() -> None:
    """A spare that dies unused (killed, crashed in its warm-up) is reaped, named as the spare that died, and its
    ``exited`` reaches the daemon: before, it was skipped as "nobody's news", and its pid stayed for good among the
    template children the daemon's escapee check treats as the template's own."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    try:
        stat = Path(f"/proc/{pid}/stat")
        wait_until(lambda: stat.read_text().split(") ")[1][0] == "Z", timeout=10, what="the child exited")
        assert _reap(w, spare=pid) is True
        os.close(w)
        with os.fdopen(r) as f:
            messages = [json.loads(line) for line in f.read().splitlines()]
        (cpu,) = [m.pop("cpu") for m in messages]  # its CPU time, from wait4
        assert messages == [{"op": "exited", "pid": pid, "exit_code": 3, "signal": None}]
        assert isinstance(cpu, float) and 0 <= cpu < 10
    finally:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
