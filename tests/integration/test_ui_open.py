"""`labd ui --open` without a browser of its own: a stand-in browser (``$BROWSER``) records what it was handed, so
the redirect file's life can be watched while the dashboard runs."""

from __future__ import annotations

import os
import re
import signal
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
        proc.wait(30)


def test_open_hands_the_browser_a_private_file_not_the_token(daemon, tmp_path: Path) -> None:
    """`labd ui --open` starts the browser on a 0600 file that redirects to the dashboard: a browser's command line
    is readable by every local user, so the token must not be on it. The file is removed when the server stops."""
    argv_log = tmp_path / "argv.txt"
    fake = tmp_path / "browser.sh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "BROWSER": str(fake)}
    proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(daemon.home), "ui", "--open"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        token = re.search(r"#token=(\S+)", proc.stdout.readline())
        assert token
        wait_until(lambda: argv_log.exists() and argv_log.read_text().strip(), timeout=30, what="the browser started")
        args = argv_log.read_text()
        assert token.group(1) not in args
        opened = Path(args.strip().removeprefix("file://"))
        assert opened.stat().st_mode & 0o777 == 0o600
        assert token.group(1) in opened.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not opened.exists()


def test_stopped_while_the_browser_starts_it_still_removes_the_file(daemon, tmp_path: Path) -> None:
    """SIGTERM (`systemctl stop`, `kill`) while the browser is still starting: `labd ui --open` does not start
    serving, removes the redirect file (it holds the token) and exits 143, instead of dying with the file left."""
    argv_log = tmp_path / "argv.txt"
    fake = tmp_path / "browser.sh"
    # a browser that is slow to return: the stop arrives while `labd ui` waits for it
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_log}.part && mv {argv_log}.part {argv_log}\nsleep 2\n')
    fake.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(daemon.home), "ui", "--open"],
                            env={**os.environ, "BROWSER": str(fake)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(argv_log.exists, timeout=30, what="the browser started")
        proc.terminate()
        proc.wait(30)
    finally:
        proc.kill()
    opened = Path(argv_log.read_text().strip().removeprefix("file://"))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stdout.read() if proc.stdout else ""
    assert not opened.exists()
