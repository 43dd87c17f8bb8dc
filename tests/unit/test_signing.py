"""Unit tests for ipc.signing: HMAC signing of frames and the replay guard."""

from __future__ import annotations

import pytest

from labd.ipc.signing import ReplayError, ReplayGuard, SignatureError, Signer

KEY = b"k" * 32
NOW = 1_700_000_000.0


def test_sign_then_verify_accepts_the_same_body() -> None:
    """A signature made with a key verifies for the same body and key."""
    s = Signer(KEY)
    sig = s.sign(b"hello")
    s.verify(sig, b"hello")
    assert len(sig) == 64 and bytes.fromhex(sig.decode())  # hex SHA-256


def test_signature_depends_on_key_and_body() -> None:
    """Different keys or bodies give different signatures; the same input always gives the same one."""
    a, b = Signer(KEY), Signer(b"x" * 32)
    assert a.sign(b"m") == a.sign(b"m")
    assert a.sign(b"m") != b.sign(b"m")
    assert a.sign(b"m") != a.sign(b"n")


def test_wrong_key_is_rejected() -> None:
    """A body signed with another key fails verification."""
    sig = Signer(b"other-key-0123456789").sign(b"body")
    with pytest.raises(SignatureError):
        Signer(KEY).verify(sig, b"body")


def test_tampered_body_is_rejected() -> None:
    """Changing one byte of the body invalidates the signature."""
    s = Signer(KEY)
    sig = s.sign(b'{"a": 1}')
    with pytest.raises(SignatureError):
        s.verify(sig, b'{"a": 2}')


def test_tampered_signature_is_rejected() -> None:
    """Changing the signature (same length) fails verification."""
    s = Signer(KEY)
    sig = bytearray(s.sign(b"body"))
    sig[0] = ord("0") if sig[0] != ord("0") else ord("1")
    with pytest.raises(SignatureError):
        s.verify(bytes(sig), b"body")


def test_empty_signature_is_rejected_as_unsigned() -> None:
    """An empty signature frame raises SignatureError('unsigned frame')."""
    with pytest.raises(SignatureError, match="unsigned"):
        Signer(KEY).verify(b"", b"body")


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 15])
def test_keys_shorter_than_16_bytes_are_refused(key: bytes) -> None:
    """Signer refuses keys under 16 bytes."""
    with pytest.raises(ValueError, match="16 bytes"):
        Signer(key)


def test_16_byte_key_is_accepted() -> None:
    """A key of exactly 16 bytes is the minimum accepted."""
    Signer(b"x" * 16).verify(Signer(b"x" * 16).sign(b"b"), b"b")


def test_replay_guard_accepts_new_ids_and_rejects_a_repeat() -> None:
    """The first use of an id passes; the same id again within the window raises ReplayError."""
    g = ReplayGuard(window=300)
    g.check("a", NOW, now=NOW)
    g.check("b", NOW, now=NOW)
    with pytest.raises(ReplayError, match="already seen"):
        g.check("a", NOW + 1, now=NOW + 1)


def test_replay_guard_rejects_an_empty_id() -> None:
    """A message without an id cannot be checked for replay and is rejected."""
    with pytest.raises(ReplayError):
        ReplayGuard().check("", NOW, now=NOW)


def test_replay_guard_rejects_stale_and_future_timestamps() -> None:
    """Timestamps older or newer than the window are rejected; the window edges are accepted."""
    g = ReplayGuard(window=300)
    with pytest.raises(ReplayError, match="window"):
        g.check("old", NOW - 301, now=NOW)
    with pytest.raises(ReplayError, match="window"):
        g.check("future", NOW + 301, now=NOW)
    g.check("edge-old", NOW - 300, now=NOW)
    g.check("edge-new", NOW + 300, now=NOW)


def test_rejected_timestamp_does_not_record_the_id() -> None:
    """An id rejected for its timestamp is not remembered, so a fresh message with it later passes."""
    g = ReplayGuard(window=10)
    with pytest.raises(ReplayError):
        g.check("x", NOW - 100, now=NOW)
    g.check("x", NOW, now=NOW)


def test_ids_expire_after_the_window_so_memory_stays_bounded() -> None:
    """Ids older than the window are dropped from the history (a replay of them fails on its timestamp)."""
    g = ReplayGuard(window=10)
    for i in range(50):
        g.check(f"id{i}", NOW, now=NOW)
    assert len(g._seen) == 50
    g.check("later", NOW + 11, now=NOW + 11)
    assert list(g._seen) == ["later"]  # private, but the memory bound is the behaviour under test
    with pytest.raises(ReplayError, match="window"):
        g.check("id0", NOW, now=NOW + 11)


def test_max_ids_bounds_the_history() -> None:
    """With max_ids=3 only the 3 newest ids are kept (and still rejected as replays)."""
    g = ReplayGuard(window=300, max_ids=3)
    for i in range(6):
        g.check(f"id{i}", NOW, now=NOW)
    assert list(g._seen) == ["id3", "id4", "id5"]
    for i in (3, 4, 5):
        with pytest.raises(ReplayError, match="already seen"):
            g.check(f"id{i}", NOW, now=NOW)


def test_ids_go_in_time_stamp_order_whatever_order_they_came_in() -> None:
    """One message stamped near the window's far edge does not keep the ids after it: each goes when its own time
    stamp leaves the window (they went in arrival order, and one such message kept a flood's ids for ~600 s)."""
    g = ReplayGuard(window=300)
    g.check("far", NOW + 299, now=NOW)
    for i in range(50):
        g.check(f"id{i}", NOW, now=NOW)
    g.check("later", NOW + 301, now=NOW + 301)
    assert sorted(g._seen) == ["far", "later"]  # private, but the memory bound is the behaviour under test


def test_a_strict_guard_refuses_what_it_let_go_for_room_and_what_came_before_it() -> None:
    """A strict guard (the daemon's control socket) that lets ids go for room refuses a message stamped at or before
    them, so a replay of one cannot slip through; one started at ``not_before`` refuses what was signed before it
    started (a request captured before a restart). A guard that is not strict (runner frames) takes them again."""
    strict, loose = ReplayGuard(window=300, max_ids=3, strict=True), ReplayGuard(window=300, max_ids=3)
    for g in (strict, loose):
        for i in range(6):
            g.check(f"id{i}", NOW + i, now=NOW + 6)
    with pytest.raises(ReplayError, match="before what this receiver can tell apart"):
        strict.check("id0", NOW, now=NOW + 6)
    loose.check("id0", NOW, now=NOW + 6)
    strict.check("new", NOW + 6, now=NOW + 6)
    started = ReplayGuard(strict=True, not_before=NOW)
    with pytest.raises(ReplayError, match="before what this receiver can tell apart"):
        started.check("captured", NOW - 1, now=NOW + 1)
    started.check("fresh", NOW + 0.5, now=NOW + 1)


def test_runner_key_derivation_matches_the_protocol_test_vectors() -> None:
    """The runner keys of docs/protocol.md §7: HMAC-SHA256(daemon key, "labd runner key v1:" + session id) for a
    session's first run, and + "#" + the seq of its session.continued for a resumed run (another key)."""
    from labd.ipc.signing import derive_key

    assert derive_key(bytes(range(32)), "4378cfd2cc34").hex() == (
        "ad58c7e19c310222773e56a154ca525ea026757c1013d05fb6ca143ba3f5f3c6")
    assert derive_key(bytes(range(32)), "4378cfd2cc34", 57).hex() == (
        "5e972d662f33aaa8c974b05f3e9241607a58841bce7e0ad7ddeb9b83d10e2eef")
