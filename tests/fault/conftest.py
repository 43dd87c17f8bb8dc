"""Fault-suite helpers: figures printed by each test, short knobs for long timeouts."""

from __future__ import annotations

import os
from typing import Any

#: the runner waits this long for the daemon's last acks before exiting (instead of 30 s): what is not
#: acknowledged by then stays in its spool, which is what these tests exercise
RUNNER_FLUSH_ENV = {"LABD_RUNNER_FLUSH_TIMEOUT": "2"}
#: ... and the daemon's SQLite busy timeout (2 s instead of 30 s): a locked store is found unavailable in seconds
STORE_LOCK_ENV = {**RUNNER_FLUSH_ENV, "LABD_DB_BUSY_TIMEOUT": "2"}


def outage_seconds(default: float = 10.0) -> float:
    """Outage length for the daemon/store outage tests (``LABD_FAULT_OUTAGE_S`` overrides)."""
    return float(os.environ.get("LABD_FAULT_OUTAGE_S", default))


def figures(name: str, **values: Any) -> None:
    """Print a test's figures on one line (visible with ``-s``; collected in docs/reliability notes)."""
    print(f"\n[fault] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
