"""Decoding without the cyclic garbage collector (labd.ipc.gcpause, labd.ipc.live.decode_live)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from labd.ipc.gcpause import gc_paused
from labd.ipc.live import decode_live, live_events
from labd.ipc.wire import Codec, WireError

KEY = b"k" * 32


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    """The collector on with CPython's default thresholds, as in a client's process: an in-process ``Ingest`` that
    another test of this worker ran raised them for good (``tune_gc``), and then plain decoding collects less."""
    was, thresholds = gc.isenabled(), gc.get_threshold()
    gc.enable()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*thresholds)
    if was:
        gc.enable()
    else:
        gc.disable()


def _message(n: int) -> list[bytes]:
    """A live message of ``n`` small runner events, as the daemon publishes it (without the topic frame)."""
    events = [[i, 1.0 + i, "custom", None, None, {"name": "tick", "data": i}] for i in range(1, n + 1)]
    return Codec(KEY).pack("events", {"session": "s1", "run": [10, events]})


def _collections_during(fn: object) -> int:
    runs: list[str] = []

    def seen(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(phase)

    gc.callbacks.append(seen)
    try:
        fn()  # type: ignore[operator]
    finally:
        gc.callbacks.remove(seen)
    return len(runs)


def test_decoding_a_live_message_runs_at_most_one_collection_and_gives_the_same_events() -> None:
    """A follower decoding a 5,000-event message (15,000 containers with the SDK's dicts) makes the collector run
    over and over with plain decoding, each run walking what was decoded so far; with :func:`decode_live` at most
    once (when it is switched on again, over the events handed out), and the events are exactly those of plain
    decoding; the collector is on again afterwards."""
    frames = _message(5000)
    codec_a, codec_b = Codec(KEY), Codec(KEY)
    plain: list[object] = []
    paused: list[object] = []
    assert _collections_during(lambda: plain.extend(live_events(codec_a.unpack(frames).body))) >= 10
    gc.collect()  # what plain decoding left counted is not charged to the next one
    assert _collections_during(lambda: paused.extend(decode_live(codec_b, frames))) <= 1
    assert paused == plain and len(paused) == 5000 and paused[0]["seq"] == 11  # type: ignore[index]
    assert gc.isenabled()


def test_a_message_to_drop_still_switches_the_collector_back_on() -> None:
    """A message with a bad signature raises the codec's error out of :func:`decode_live`, with the collector on
    again (a follower dropping forged messages must not leave the process without cyclic collection)."""
    sig, body = _message(3)
    with pytest.raises(WireError):
        decode_live(Codec(KEY), [b"0" * len(sig), body])
    assert gc.isenabled()


def test_a_program_that_runs_without_the_collector_keeps_it_off() -> None:
    """If the program switched the collector off itself, a pause leaves it off (not on) when it ends."""
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_overlapping_pauses_on_two_threads_keep_it_off_until_the_last_ends() -> None:
    """Two threads decoding at once: the collector stays off until both pauses ended, and only then comes back
    on (the first to finish must not switch it on under the other)."""
    inside, release, done = threading.Event(), threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            release.wait(10)
        done.set()

    t = threading.Thread(target=other)
    with gc_paused():
        t.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the other thread's pause is still on
    release.set()
    assert done.wait(10)
    t.join(10)
    assert gc.isenabled()
