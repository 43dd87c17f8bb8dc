"""Ctrl-C while following is never lost, even when Python swallows its KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from labd.frontends.cli.interrupt import ctrl_c


class _Finalized:
    """An object whose finalizer is running when SIGINT arrives (the interrupt is raised inside ``__del__``,
    where Python prints "Exception ignored" and drops it)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # give the pending signal bytecodes to be raised in, inside the finalizer
            pass


def test_a_press_swallowed_by_a_finalizer_is_still_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The press is remembered: ``check()`` raises KeyboardInterrupt after the finalizer swallowed it (before,
    `labd run --follow` followed the session to its end and exited 0 instead of detaching with 130)."""
    swallowed: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_type))
    with ctrl_c() as pressed:
        _Finalized()  # dropped at once: its __del__ runs here and swallows the interrupt
        assert pressed.pressed
        with pytest.raises(KeyboardInterrupt):
            pressed.check()
    assert swallowed == [KeyboardInterrupt]  # it really was swallowed ("Exception ignored in __del__")


def test_the_previous_handler_is_restored_and_no_press_means_no_raise() -> None:
    """Outside the block SIGINT is handled as before; inside, without a press, ``check()`` does nothing."""
    before = signal.getsignal(signal.SIGINT)
    with ctrl_c() as pressed:
        pressed.check()
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


_INTERRUPTING_IMPORT = '''
import sys

class Interrupt:
    """Stands for a Ctrl-C pressed while the commands load: importing them raises KeyboardInterrupt."""

    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt())
'''


@pytest.mark.parametrize("module", ["labd.frontends.cli.app", "labd.ipc.client"])
@pytest.mark.parametrize("how", [["-m", "labd"], ["-c", "import sys; from labd.frontends.cli import main; "
                                                        "sys.exit(main())"]])
def test_ctrl_c_while_the_commands_load_exits_130_without_a_traceback(tmp_path, how: list[str], module: str) -> None:
    """A Ctrl-C while `labd` is still loading its commands or the SDK (a second or so on a busy machine) exits 130
    quietly, as one during a command does: it printed a KeyboardInterrupt traceback, through `python -m labd` and
    through the installed `labd` script (which imports ``main`` from the package and calls it)."""
    import subprocess

    (tmp_path / "sitecustomize.py").write_text(f"MODULE = {module!r}\n" + _INTERRUPTING_IMPORT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, *how, "ps"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 130 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
