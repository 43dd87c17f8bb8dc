"""`labd ui --open` without a browser of its own: a stand-in browser (``$BROWSER``) records what it was handed, so
the redirect file's life can be watched while the dashboard runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)


def test_the_redirect_file_is_removed_after_the_delay_while_the_dashboard_runs(isolated_env: Path,
                                                                              tmp_path: Path) -> None:
    """The 0600 redirect file `--open` hands the browser (it carries the token) is removed once its delay has
    passed (LABD_UI_OPEN_FILE_S shortens the 120 s for tests), not only at exit: the dashboard is still up and
    serving when it is gone."""
    seen = tmp_path / "seen.txt"
    fake = tmp_path / "browser.sh"
    # the stand-in browser notes the file it was given and whether that file was there, private, when it started
    fake.write_text(f'#!/bin/sh\nf="${{1#file://}}"\n{{ echo "$f"; stat -c %a "$f"; }} > {seen}.tmp\n'
                    f"mv {seen}.tmp {seen}\n")
    fake.chmod(0o755)
    env = {**os.environ, "BROWSER": str(fake), "LABD_UI_OPEN_FILE_S": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(isolated_env), "ui", "--open"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        url = re.search(r"http://127\.0\.0\.1:(\d+)/#token=\S+", proc.stdout.readline())
        assert url, "no URL printed"
        wait_until(seen.exists, timeout=30, what="the stand-in browser started")
        opened, mode = seen.read_text().split()
        assert mode == "600"
        wait_until(lambda: not Path(opened).exists(), timeout=30, what="the redirect file removed after its delay")
        assert proc.poll() is None, "the dashboard stopped"
        with urllib.request.urlopen(f"http://127.0.0.1:{url.group(1)}/", timeout=10) as page:
            assert page.status == 200  # and still serving
    finally:
        proc.terminate()
        proc.wait(10)
