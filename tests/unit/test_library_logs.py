"""Libraries' own log records in the daemon's log (admin review): psycopg's "error ignored terminating ..." while
its PostgreSQL server restarted was written raw, a plain line among the JSON ones (a log shipper could not parse
it; journald gave it no priority)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROGRAM = """
import logging
from labd.daemon import logsetup
logsetup.configure("json", "info")
logging.getLogger("psycopg").warning("error ignored terminating %s: the connection is lost", "<Pipeline [BAD]>")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("alembic.runtime").exception("it failed")
logging.getLogger("psycopg").info("chatter below warning")
"""


def test_a_librarys_log_records_are_json_lines_with_their_logger_and_level() -> None:
    """Each record a library logs at warning or worse is one JSON line of the daemon's format, naming its logger and
    level (a traceback inside it, not after it); records below warning are not written, as before."""
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert len(records) == 2, lines
    first, second = records
    assert first["event"] == "error ignored terminating <Pipeline [BAD]>: the connection is lost"
    assert first["logger"] == "psycopg" and first["level"] == "warning" and first["timestamp"]
    assert second["logger"] == "alembic.runtime" and second["level"] == "error"
    assert "ZeroDivisionError" in second["exception"]
