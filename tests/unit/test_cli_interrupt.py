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
