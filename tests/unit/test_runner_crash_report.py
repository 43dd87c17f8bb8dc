"""A runner whose own set-up fails after its output capture is installed still reports why, on its real stderr
(the daemon's log): fd 2 is a capture pipe by then, and the process exits before the pipe's reader emits."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_crash_after_the_capture_is_installed_reaches_the_real_stderr() -> None:
    """The runner's last-resort handler (``report_crash``) writes the traceback to the stderr the process had
    before the capture, then the process exits at once, as ``child_main`` does."""
    code = textwrap.dedent("""
        import os
        from labd.runner.capture import OutputCapture, report_crash
        OutputCapture(lambda stream, text: None).install()
        try:
            1 / 0
        except BaseException:
            report_crash()
            os._exit(3)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    assert "ZeroDivisionError" in out.stderr and "Traceback" in out.stderr
