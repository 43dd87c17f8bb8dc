"""Unit tests for ipc.wire: the signed JSON envelope and every reason a frame is dropped."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import pytest

from labd.ipc.wire import (
    ID_MAX,
    PROTOCOL_VERSION,
    Codec,
    MalformedFrame,
    Message,
    OversizedFrame,
    WireError,
    non_finite,
)

KEY = b"0123456789abcdef0123456789abcdef"


def _env(**over: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": f"id-{time.monotonic_ns()}", "ts": time.time(),
                           "type": "ping", "body": {}}
    env.update(over)
    return env


def _signed(codec: Codec, obj: Any) -> list[bytes]:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return [codec.signer.sign(raw), raw]


def _reason(codec: Codec, frames: list[bytes]) -> str:
    with pytest.raises(WireError) as info:
        codec.unpack(frames)
    return info.value.reason


def test_pack_unpack_round_trip() -> None:
    """A packed message unpacks (by another codec with the same key) to the same type, body and re."""
    a, b = Codec(KEY), Codec(KEY)
    frames = a.pack("session.start", {"workflow": "demo.count", "params": {"n": 3}, "x": [1, 2.5, None]}, re="r1")
    assert len(frames) == 2
    msg = b.unpack(frames)
    assert isinstance(msg, Message)
    assert msg.type == "session.start"
    assert msg.body == {"workflow": "demo.count", "params": {"n": 3}, "x": [1, 2.5, None]}
    assert msg.re == "r1"
    assert abs(msg.ts - time.time()) < 5
    assert msg.id and isinstance(msg.id, str)


def test_re_is_absent_by_default_and_non_string_re_is_ignored() -> None:
    """Without re= the message has re None; a non-string 're' in the envelope decodes as None."""
    c = Codec(KEY)
    assert Codec(KEY).unpack(c.pack("ping", {})).re is None
    assert c.unpack(_signed(c, _env(re=42))).re is None


def test_ids_are_unique_per_codec() -> None:
    """Every packed message gets a new id, and two codecs do not share ids."""
    a, b = Codec(KEY), Codec(KEY)
    ids = {a.new_id() for _ in range(1000)} | {b.new_id() for _ in range(1000)}
    assert len(ids) == 2000


@pytest.mark.parametrize("frames", [[], [b"only-one"], [b"a", b"b", b"c"]])
def test_wrong_frame_count_is_malformed(frames: list[bytes]) -> None:
    """Anything but exactly two frames is dropped as 'malformed'."""
    c = Codec(KEY)
    with pytest.raises(MalformedFrame):
        c.unpack(frames)
    assert _reason(c, frames) == "malformed"


def test_non_json_body_is_malformed() -> None:
    """A correctly signed body that is not JSON is 'malformed'."""
    c = Codec(KEY)
    assert _reason(c, _signed(c, b"{not json")) == "malformed"


@pytest.mark.parametrize("raw", [b"[1, 2]", b"42", b'"text"', b"null"])
def test_non_object_body_is_malformed(raw: bytes) -> None:
    """A JSON body that is not an object is 'malformed'."""
    c = Codec(KEY)
    assert _reason(c, _signed(c, raw)) == "malformed"


@pytest.mark.parametrize("version", [0, 2, "1", None, True, 1.0])
def test_wrong_protocol_version_is_malformed(version: Any) -> None:
    """Only protocol version 1, the JSON integer, is accepted (not ``true`` or ``1.0``, equal to 1 in Python)."""
    c = Codec(KEY)
    with pytest.raises(MalformedFrame, match="version"):
        c.unpack(_signed(c, _env(v=version)))


def test_an_id_of_up_to_id_max_characters_is_accepted_and_a_longer_or_empty_one_is_malformed() -> None:
    """Ids are remembered for the replay window, so their length is bounded: a sender cannot make the receiver hold
    megabytes per message (an attack review sent 8 MiB ids: +500 MB); the longest accepted is ``ID_MAX``."""
    c = Codec(KEY)
    longest = "a" * (ID_MAX - 1) + "b"
    assert c.unpack(_signed(c, _env(id=longest))).id == longest
    for bad in ("", "x" * (ID_MAX + 1), "y" * (8 << 20)):
        with pytest.raises(MalformedFrame, match="'id' must be"):
            c.unpack(_signed(c, _env(id=bad)))
    assert len(c.guard._seen) == 1  # only the accepted id is remembered


@pytest.mark.parametrize("field", ["id", "type", "body", "ts"])
def test_missing_envelope_field_is_malformed(field: str) -> None:
    """Dropping any of id, type, body or ts makes the frame 'malformed'."""
    c = Codec(KEY)
    env = _env()
    del env[field]
    assert _reason(c, _signed(c, env)) == "malformed"


@pytest.mark.parametrize("over", [{"id": 5}, {"type": ["x"]}, {"body": [1]}, {"ts": "now"}, {"ts": None}])
def test_wrongly_typed_envelope_field_is_malformed(over: dict[str, Any]) -> None:
    """id and type must be strings, body an object and ts a number."""
    c = Codec(KEY)
    assert _reason(c, _signed(c, _env(**over))) == "malformed"


def test_boolean_ts_is_malformed() -> None:
    """ts=true is not a number even though bool subclasses int in Python."""
    c = Codec(KEY)
    with pytest.raises(MalformedFrame, match="ts"):
        c.unpack(_signed(c, _env(ts=True)))


def test_integer_ts_is_accepted() -> None:
    """An integral ts is a valid number."""
    c = Codec(KEY)
    ts = int(time.time())
    msg = c.unpack(_signed(c, _env(ts=ts)))
    assert msg.ts == float(ts) and isinstance(msg.ts, float)


def test_oversized_frame_is_dropped_before_anything_else() -> None:
    """A body over max_message is 'oversized', even when it is also unsigned."""
    c = Codec(KEY, max_message=200)
    frames = c.pack("t", {"pad": "x" * 300})
    with pytest.raises(OversizedFrame):
        c.unpack(frames)
    assert _reason(c, [b"", frames[1]]) == "oversized"
    assert Codec(KEY, max_message=200).unpack(c.pack("t", {"pad": "x" * 10})).body == {"pad": "x" * 10}


def test_an_oversized_frame_names_its_id_only_when_validly_signed() -> None:
    """``oversized_id``: the id of a frame over max_message, read from its first bytes, so the daemon can answer it
    (``request_too_large``); None when it is unsigned, wrongly signed or not two frames (such a sender is not told)."""
    c = Codec(KEY, max_message=200)
    frames = c.pack("t", {"pad": "x" * 300})
    assert c.oversized_id(frames) == orjson.loads(frames[1])["id"]
    assert c.oversized_id([b"", frames[1]]) is None
    assert c.oversized_id([b"0" * 64, frames[1]]) is None
    assert Codec(b"k" * 32, max_message=200).oversized_id(frames) is None
    assert c.oversized_id(frames[1:]) is None


def test_the_id_of_a_message_it_cannot_read_is_found_whatever_its_json_spacing() -> None:
    """A request too large, or undecodable, is answered to its ``id`` read from its first bytes: found in JSON as
    other languages write it (``"id": "..."``, Python's ``json.dumps``) and for any id without escapes (``ui:1``,
    ``my.id``), as the protocol says any unique string works; it was found only in compact JSON and for ids of
    ``[0-9A-Za-z_-]``, so such clients were never told (a protocol review). An id with an escape is not guessed."""
    import json

    c = Codec(KEY, max_message=200)
    for msg_id in ("ui:1", "my.id", "3f2b-UUID-like", "caf\u00e9" if False else "café"):
        raw = json.dumps({"v": 1, "id": msg_id, "ts": time.time(), "type": "t", "body": {"pad": "x" * 300}},
                         ensure_ascii=False).encode()
        assert c.oversized_id([c.signer.sign(raw), raw]) == msg_id
        bad = raw.replace(b'"pad"', b'"pad": NaN, "q"', 1)[:180]  # signed, within the limit, not JSON
        with pytest.raises(MalformedFrame) as err:
            c.unpack([c.signer.sign(bad), bad])
        assert err.value.msg_id == msg_id
    quoted = json.dumps({"v": 1, "id": 'a"b', "ts": 1.0, "type": "t", "body": {"pad": "x" * 300}}).encode()
    assert c.oversized_id([c.signer.sign(quoted), quoted]) is None


def test_non_finite_finds_nan_and_infinity_with_their_path() -> None:
    """``non_finite``: the first NaN/±Infinity in a request body (what orjson would send as null) and where it is;
    None for finite floats, ints, None and strings."""
    nan, inf = float("nan"), float("inf")
    found = non_finite({"limits": {"memory": "1G", "budget": nan}})
    assert found is not None and found[0] == "limits.budget" and math.isnan(found[1])
    assert non_finite({"params": {"xs": [1.0, 2, (3.5, -inf)]}}) == ("params.xs[2][1]", -inf)
    assert non_finite({"a": inf, "b": nan})[0] == "a"  # type: ignore[index]
    assert non_finite([inf]) == ("[0]", inf)
    assert non_finite({"a": [1.5, None, "nan", {"b": 0.0}], 3: 1e308}) is None


@pytest.mark.parametrize("sig", [b"", b"0" * 64, b"not-hex"])
def test_bad_or_missing_signature(sig: bytes) -> None:
    """Unsigned or wrongly signed frames are dropped as 'bad_signature'."""
    c = Codec(KEY)
    assert _reason(c, [sig, c.pack("t", {})[1]]) == "bad_signature"


def test_frame_signed_with_another_key_is_bad_signature() -> None:
    """A frame packed with another key does not verify."""
    assert _reason(Codec(KEY), Codec(b"z" * 32).pack("t", {})) == "bad_signature"


def test_signature_is_checked_before_json_parsing() -> None:
    """Garbage with a wrong signature is 'bad_signature', not 'malformed' (no parsing of untrusted bytes)."""
    assert _reason(Codec(KEY), [b"0" * 64, b"{not json"]) == "bad_signature"


def test_replayed_frame_is_dropped() -> None:
    """The same frames unpacked twice: the second time is 'replayed'."""
    a, b = Codec(KEY), Codec(KEY)
    frames = a.pack("t", {"n": 1})
    b.unpack(frames)
    assert _reason(b, frames) == "replayed"


@pytest.mark.parametrize("offset", [-3600, 3600])
def test_stale_or_future_timestamp_is_replayed(offset: float) -> None:
    """A correctly signed envelope with ts far outside the replay window is 'replayed'."""
    c = Codec(KEY, replay_window=300)
    assert _reason(c, _signed(c, _env(ts=time.time() + offset))) == "replayed"


def test_non_json_values_fall_back_to_repr() -> None:
    """Objects JSON cannot carry travel as their repr, sets as lists, and the frame still verifies."""

    class Thing:
        def __repr__(self) -> str:
            return "<Thing 7>"

    c = Codec(KEY)
    body = c.unpack(c.pack("custom", {"obj": Thing(), "s": {3}, "fs": frozenset({"a"}), "b": b"ab",
                                      "c": complex(1, 2), "nested": [{"o": Thing()}], 5: "int-key"})).body
    assert body == {"obj": "<Thing 7>", "s": [3], "fs": ["a"], "b": "b'ab'", "c": "(1+2j)",
                    "nested": [{"o": "<Thing 7>"}], "5": "int-key"}


def test_integer_beyond_64_bits_does_not_crash_pack() -> None:
    """A Python int wider than 64 bits (e.g. a workflow's result) is carried, not a TypeError from pack()."""
    c = Codec(KEY)
    body = c.unpack(c.pack("session.finished", {"outcome": "completed", "result": 2**70})).body
    assert body["result"] in (2**70, str(2**70), repr(2**70))


def test_dict_with_non_string_non_scalar_keys_does_not_crash_pack() -> None:
    """A payload dict keyed by tuples (common in user data) is encoded via the fallback, not a TypeError."""
    c = Codec(KEY)
    body = c.unpack(c.pack("custom", {"name": "grid", "data": {(1, 2): 0.5}})).body
    assert body["name"] == "grid"
    assert "(1, 2)" in str(body["data"])


def test_a_runner_codec_remembers_a_bounded_number_of_ids() -> None:
    """The ids a codec remembers for its replay window are capped by ``replay_ids`` (runners' codecs in the daemon:
    RUNNER_REPLAY_IDS), so a session's code signing frames with unique ids cannot grow the daemon (an attack review:
    a million 128-character ids, ~300 MB per session); the newest ids are the ones kept."""
    from labd.daemon.runner_frames import RUNNER_REPLAY_IDS

    c = Codec(KEY, replay_ids=RUNNER_REPLAY_IDS)
    ids = [f"{i:0128d}" for i in range(RUNNER_REPLAY_IDS + 500)]
    for i in ids:
        c.unpack(_signed(c, _env(id=i)))
    assert len(c.guard._seen) == RUNNER_REPLAY_IDS
    assert _reason(c, _signed(c, _env(id=ids[-1]))) == "replayed"
