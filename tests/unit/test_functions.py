"""The function-call payload without a daemon: where an unpicklable part is found, and what the daemon accepts."""

from __future__ import annotations

import base64
import hashlib

import pytest

from labd.ipc import LabdError
from labd.ipc.functions import RemoteError, check_params, decode_result, dumps, encode_call


class Holder:
    def __init__(self) -> None:
        self.inner = {"items": (i for i in range(3))}


def test_culprit_path_through_attributes() -> None:
    """The innermost unpicklable part is named, through an object's attributes and a dict."""
    with pytest.raises(LabdError) as info:
        encode_call(print, (1, Holder()), {})
    assert info.value.message.startswith("argument 2.inner['items']: a generator object cannot be sent to a session")
    assert info.value.details == {"path": "argument 2.inner['items']", "type": "generator"}


def test_encode_call_describes_the_call_and_round_trips() -> None:
    """The payload is base64 of a pickle of (fn, args, kwargs); params name the function and carry sys.path."""
    call = encode_call(divmod, (7, 3), {})
    fn, args, kwargs = __import__("dill").loads(base64.b64decode(call.payload))
    assert fn(*args, **kwargs) == (2, 1) and call.params["function"] == "builtins.divmod"
    assert call.params["path"] and all(p.startswith("/") for p in call.params["path"])
    with pytest.raises(LabdError) as info:
        encode_call(42, (), {})  # type: ignore[arg-type]
    assert info.value.code == "not_callable"


def test_check_params_adds_hash_and_refuses_what_does_not_fit() -> None:
    """The daemon's check records sha256 and size of the decoded payload, and refuses unknown or mistyped params
    and text that is not base64, without unpickling anything."""
    raw = b"not even a pickle"
    out = check_params({"function": "m.f", "path": ["/x"], "cwd": "/"}, base64.b64encode(raw).decode())
    assert out["sha256"] == hashlib.sha256(raw).hexdigest() and out["size"] == len(raw)
    for params, payload in [({"evil": 1}, "AAAA"), ({"path": "/x"}, "AAAA"), ({"path": [""]}, "AAAA"),
                            ({}, "not base64!")]:
        with pytest.raises(ValueError):
            check_params(params, payload)


def test_decode_result_and_remote_error_text() -> None:
    """A pickled result is unpickled, a plain JSON one returned as is; RemoteError shows the remote traceback."""
    assert decode_result({"labd.pickle": base64.b64encode(dumps({1, 2})).decode()}) == {1, 2}
    assert decode_result({"a": 1}) == {"a": 1}
    err = RemoteError("ValueError", "bad", "Traceback ...\nValueError: bad\n", session="abc")
    assert str(err).startswith("ValueError: bad\n\n--- remote traceback (session abc) ---\nTraceback")


def test_an_argument_nested_too_deeply_is_named_for_its_depth() -> None:
    """An argument nested past Python's recursion limit is refused naming the argument and its depth (it blamed
    "argument 1[0][0][0][0][0][0]: a list object", as if a list could not be pickled)."""
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(LabdError) as info:
        encode_call(len, (deep,), {})
    assert info.value.code == "not_serializable"
    assert info.value.message.startswith("argument 1: a list object nested too deeply cannot be sent to a session")
