"""Agent-written code cannot drive the user's terminal through what labd shows of it: a session whose code prints
terminal escape sequences (clipboard write OSC 52, retitle, clear screen and forged lines, concealed text, DCS /
APC, C1 controls, BEL, a CR overwriting a line) and puts them in its step names, file names, approval prompt and
result. On a terminal, `labd logs`, `run --follow`, `files`, `show`, `dag`, `approvals`, `compare`, `search`,
errors and `labd top` show them as text (only colours pass); through a pipe the output is the exact record;
`--raw-control-chars` passes it through on request. One daemon and its sessions for the module."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import module_home, running_daemon, wait_until
from tests.integration.cli_support import labd_tty

pytestmark = pytest.mark.timeout(240)

#: the session's code (written to a file the sessions run); the escapes are Python's, in its source
FLOWS = r'''
import sys
from pathlib import Path

OUT = ("clip \x1b]52;c;aGFja2Vk\x07 title \x1b]0;pwned\x1b\\ \x1b[2J\x1b[Happroved: yes "
       "hidden \x1b[8mSECRET\x1b[0m dcs \x1bP1$qm\x1b\\ apc \x1b_payload\x1b\\ "
       "c1 \x9b2J bell \x07\x07\x07 colour \x1b[31mRED\x1b[0m\n"
       "rm -rf ~ \rls -l\n")
ERR = "err \x1b]52;c;ZXJy\x07 \x1b[?1049h\n"
PROMPT = "[bold red]FAKE[/] approve? \x1b[2J\x1b]52;c;YXNr\x07"


def hostile(ctx, tag: str = "1"):
    sys.stdout.write(OUT)
    sys.stdout.flush()
    sys.stderr.write(ERR)
    sys.stderr.flush()
    with ctx.step("fit \x1b]0;step\x07 \u202egnp.exe"):
        Path("report\u202etxt.exe").write_text("x")
        Path("esc \x1b[2J\x07name.txt").write_text("y")
    return "result " + tag + " \x1b]52;c;cmVz\x07"


def ask(ctx):
    sys.stdout.write(OUT)
    sys.stdout.flush()
    return ctx.approval("choose", PROMPT, options=["approve", "reject", "[b]opt[/b]"])
'''

OUT = ("clip \x1b]52;c;aGFja2Vk\x07 title \x1b]0;pwned\x1b\\ \x1b[2J\x1b[Happroved: yes "
       "hidden \x1b[8mSECRET\x1b[0m dcs \x1bP1$qm\x1b\\ apc \x1b_payload\x1b\\ "
       "c1 \x9b2J bell \x07\x07\x07 colour \x1b[31mRED\x1b[0m\n"
       "rm -rf ~ \rls -l\n")
ERR = "err \x1b]52;c;ZXJy\x07 \x1b[?1049h\n"

SGR = re.compile(r"\x1b\[[0-9;]*m")
#: what must not reach the terminal: any control but \t and \n (and SGR, removed first), DEL, C1, bidi controls
ACTS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown(screen: str) -> str:
    """What a terminal shows of ``screen`` as text: colours removed, the pty's CR LF for LF back to LF."""
    return SGR.sub("", screen).replace("\r\n", "\n")


def assert_inert(screen: str) -> None:
    """Nothing in ``screen`` can act on a terminal but colours: no ESC other than SGR (no OSC, DCS, APC, CSI
    that moves, clears or hides), no C1, no BEL, no lone CR, no bidi control."""
    bad = ACTS.findall(shown(screen))
    assert not bad, (sorted(set(bad)), screen)
    assert "\x1b[8m" not in screen, screen


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, Any]]:
    """The daemon and the sessions: two ended runs of `hostile` (for compare), one `ask` waiting for approval."""
    with module_home("escapes") as (base, env), running_daemon(base / "home") as d, d.client() as c:
        flows = base / "hostile.py"
        flows.write_text(FLOWS)
        sids = {"h1": c.start(f"{flows}:hostile", params={"tag": "1"}),
                "h2": c.start(f"{flows}:hostile", params={"tag": "2"})}
        for sid in sids.values():
            assert c.wait(sid, timeout=120)["status"] == "completed"
        sids["ask"] = c.start(f"{flows}:ask")
        wait_until(lambda: c.approvals(session=sids["ask"]), timeout=60, what="the approval asked for")
        yield {"env": env, "sids": sids, "flows": flows, "home": d.home}


@pytest.fixture
def s(shared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for k, v in shared["env"].items():  # over the per-test isolated_env: the CLI talks to the module's daemon
        monkeypatch.setenv(k, v)
    return shared


def _assert_output_shown_as_text(screen: str) -> None:
    text = shown(screen)
    assert "clip \\x1b]52;c;aGFja2Vk\\x07 title \\x1b]0;pwned\\x1b\\ \\x1b[2J\\x1b[Happroved: yes" in text, text
    assert "hidden \\x1b[8mSECRET" in text and "dcs \\x1bP1$qm\\x1b\\ apc \\x1b_payload\\x1b\\" in text
    assert "c1 \\x9b2J bell \\x07\\x07\\x07 colour RED" in text
    assert "\x1b[31mRED\x1b[0m" in screen  # colours pass
    assert "rm -rf ~ \nls -l\n" in text  # the CR overwrote nothing: both are there, on lines of their own


def test_logs_on_a_terminal_show_escape_sequences_as_text(s: dict[str, Any]) -> None:
    """`labd logs` on a terminal: what the session printed on stdout and stderr, and the activity lines quoting
    its step and file names, reach the terminal with every escape sequence, C1 control, BEL, lone CR and bidi
    override shown as text (\\x1b]52;...), colours kept; before, they went to the terminal raw (the clipboard
    written, the screen cleared, SECRET concealed, the first command overwritten)."""
    screen = labd_tty("logs", s["sids"]["h1"])
    assert_inert(screen)
    _assert_output_shown_as_text(screen)
    text = shown(screen)
    assert "err \\x1b]52;c;ZXJy\\x07 \\x1b[?1049h" in text
    assert "fit \\x1b]0;step\\x07 \\u202egnp.exe" in text  # the step's activity line
    assert "report\\u202etxt.exe" in text and "esc \\x1b[2J\\x07name.txt" in text  # the files' activity lines
    tail = labd_tty("logs", "--raw", "--tail", "2", "-t", s["sids"]["h1"])  # --tail and -t go the same way
    assert_inert(tail)
    assert "\\x1b]52;c;ZXJy\\x07" in shown(tail)


def test_run_follow_on_a_terminal_is_safe_too(s: dict[str, Any]) -> None:
    """`labd run --follow` prints through the same code as `logs`: its terminal gets the sequences as text."""
    screen = labd_tty("run", f"{s['flows']}:hostile", "--follow", timeout=120)
    assert "== session completed" in shown(screen), screen
    assert_inert(screen)
    _assert_output_shown_as_text(screen)


def test_a_pipe_or_file_gets_the_exact_record(s: dict[str, Any], tmp_path: Path) -> None:
    """Through a pipe, `labd logs --raw` writes exactly what the session printed, escape sequences and all, on
    each stream; with stdout redirected to a file and stderr on a terminal, the file gets the exact bytes and the
    terminal gets stderr made safe (each stream is judged on its own: before, the terminal got it all raw)."""
    sid = s["sids"]["h1"]
    piped = subprocess.run([sys.executable, "-m", "labd", "logs", "--raw", sid], capture_output=True, timeout=60)
    assert piped.returncode == 0 and (piped.stdout, piped.stderr) == (OUT.encode(), ERR.encode())  # bytes: no
    # newline translation by the reading end (a text-mode pipe would turn the CR into a LF by itself)
    out = tmp_path / "out.txt"
    screen = labd_tty("logs", "--raw", sid, stdout=out)
    assert out.read_bytes() == OUT.encode()
    assert_inert(screen)
    assert shown(screen) == "err \\x1b]52;c;ZXJy\\x07 \\x1b[?1049h\n"


def test_raw_control_chars_passes_output_through(s: dict[str, Any]) -> None:
    """`--raw-control-chars` (logs, and run --follow) writes the session's output unchanged to a terminal too,
    for a user who asks for it (before: no such option, exit 2)."""
    screen = labd_tty("logs", "--raw", "--raw-control-chars", s["sids"]["h1"])
    assert "clip \x1b]52;c;aGFja2Vk\x07" in screen and "\x1b[8mSECRET" in screen and "\x9b2J" in screen, screen
    followed = labd_tty("run", f"{s['flows']}:hostile", "-f", "--raw", "--raw-control-chars", timeout=120)
    assert "clip \x1b]52;c;aGFja2Vk\x07" in followed, followed


def test_names_prompts_results_and_errors_are_shown_escaped(s: dict[str, Any]) -> None:
    """Every listing that quotes what a session chose (file names, step names, the approval prompt, its result
    in `compare`, search hits, history, checkpoints, events) and an error message quoting a name show their
    control characters as text on a terminal, and rich markup in them as the brackets it is ([bold red] stays
    literal); before, the escape sequences in step and file names reached the terminal raw."""
    h1, h2 = s["sids"]["h1"], s["sids"]["h2"]
    screens = {}
    for args in (["files", h1], ["show", h1], ["dag", h1], ["dag", h1, "--format", "mermaid"], ["history", h1],
                 ["checkpoints", h1], ["approvals"], ["events", h1], ["compare", h1, h2], ["search", "report"],
                 ["show", "no\x1b]0;such\x07"]):
        screen = screens[args[0] + " " + args[-1]] = labd_tty(*args)
        assert_inert(screen)
    files = shown(screens[f"files {h1}"])
    assert "report\\u202etxt.exe" in files and "esc \\x1b[2J\\x07name.txt" in files, files
    for key in (f"show {h1}", f"dag {h1}"):
        assert "fit \\x1b]0;step\\x07 \\u202egnp.exe" in shown(screens[key]), screens[key]
    approvals = shown(screens["approvals approvals"])
    assert "[bold red]FAKE[/] approve? \\x1b[2J\\x1b]52;c;YXNr\\x07" in approvals, approvals
    compare = shown(screens[f"compare {h2}"])
    assert "result 2 \\x1b]52;c;cmVz\\x07" in compare, compare
    assert "report" in shown(screens["search report"]) and "no matches" not in shown(screens["search report"])
    assert "no\\x1b]0;such\\x07" in shown(screens["show no\x1b]0;such\x07"])


def test_top_shows_session_text_as_text(s: dict[str, Any]) -> None:
    """`labd top`: a session named with rich markup ([b]FAKE[/b]) is listed by that name, not in bold; its
    output pane, detail pane, the reject dialog's approval prompt and a notification quoting its options show
    escape sequences as text and markup as brackets (before: the name, prompt and options were read as markup, so
    [@click=...] could bind an action, and the output pane sent ESC sequences to the terminal)."""
    from labd.frontends.top.app import TopApp
    from labd.ipc.client import Client

    async def until(pred: Any, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := pred()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)
        return value

    def screen_text(app: TopApp) -> str:
        return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips())

    with Client(s["home"]) as c:
        sid = c.start(f"{s['flows']}:ask", name="[b]FAKE[/b]")
        wait_until(lambda: c.approvals(session=sid), timeout=60, what="the approval asked for")

    async def scenario(app: TopApp, pilot: Any) -> None:
        await until(lambda: app.selected == sid, "the new session selected")
        await until(lambda: any("clip" in line for line in app.output_log.lines), "its output")
        lines = "\n".join(app.output_log.lines)
        assert "\x1b" not in lines and "\x07" not in lines and "\x9b" not in lines, lines
        assert "clip \\x1b]52;c;aGFja2Vk\\x07" in lines and "colour RED" in lines, lines
        await until(lambda: "[b]FAKE[/b]" in screen_text(app), "the name listed as it is")
        await until(lambda: "approval waiting" in screen_text(app), "the approval in the detail pane")
        assert "\x1b" not in screen_text(app)
        await pilot.press("m")  # not an option here: a notification lists the options, one of them markup
        note = await until(lambda: [n for n in app._notifications if "not an option" in n.message], "the note")
        assert note[0].message.endswith("approve, reject, [b]opt[/b]") and note[0].markup is False, note
        await pilot.press("r")
        await until(lambda: type(app.screen).__name__ == "FeedbackScreen", "the reject dialog")
        await until(lambda: "[bold red]FAKE[/] approve? \\x1b[2J" in screen_text(app), "the prompt as it is")
        await pilot.press("escape")

    async def main() -> None:
        app = TopApp(s["home"])
        async with app.run_test(size=(160, 44)) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())
