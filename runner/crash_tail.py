"""The end of a runner's crash file (``<session dir>/runner.stderr``: its fd 2, with faulthandler's report of a fatal
error; :func:`labd.runner.session.own_crash_channel`), read when the runner exited on a signal or a non-zero code:
by the daemon for a runner of this machine, by the Ray actor on its node for a remote one (which hands it back with
the exit status). What is recorded of it, and how, is the daemon's (:mod:`labd.daemon.crash_report`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["CRASH_FILE", "CRASH_READ", "read_tail"]

#: the runner's crash channel, in the session's directory (beside ``work``): what the runner itself writes on fd 2
#: before its output is captured, its last-resort traceback and a fatal error's (faulthandler); the daemon records
#: its tail when the runner ends without an outcome (daemon/supervisor.py)
CRASH_FILE = "runner.stderr"

#: bytes read from the end of a crash file (the daemon records at most 2,000 characters of them)
CRASH_READ = 8000


def read_tail(crash_file: Path | str | None, nbytes: int = CRASH_READ) -> tuple[str, bool] | None:
    """``(text, cut)``: the last ``nbytes`` bytes of the crash file, decoded (invalid UTF-8 replaced), and whether
    the file held more; None if it is missing, empty, not a regular file or unreadable. Read without following a
    link: the file is in the session's directory, which session code can write."""
    if crash_file is None:
        return None
    try:
        fd = os.open(crash_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not st.st_size:
            return None
        raw = os.pread(fd, nbytes, max(0, st.st_size - nbytes))
    except OSError:
        return None
    finally:
        os.close(fd)
    return raw.decode("utf-8", "replace"), len(raw) < st.st_size
