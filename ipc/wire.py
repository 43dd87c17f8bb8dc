"""The message envelope: how every frame on every labd socket is encoded, signed and checked.

On the wire a message is two frames, ``[signature, body]`` (a ROUTER socket prepends the peer's
routing id; the event PUB socket prepends a topic). ``body`` is one JSON object::

    {"v": 1, "id": "<unique id>", "ts": <unix seconds>, "type": "<message type>",
     "re": "<id of the request this answers>" (replies only), "body": {...}}

See docs/protocol.md for every message type.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from labd.ipc.signing import ReplayError, ReplayGuard, SignatureError, Signer

__all__ = [
    "PROTOCOL_VERSION",
    "cut_deep",
    "json_int",
    "DEFAULT_MAX_MESSAGE",
    "ID_MAX",
    "Message",
    "WireError",
    "MalformedFrame",
    "OversizedFrame",
    "Codec",
    "PayloadError",
    "encode_json",
    "json_fallback",
    "nesting_ok",
    "non_finite",
    "MAX_DEPTH",
    "ACK_TAIL",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
#: how a runner's ``events`` message asking for an ack at once ends (after its events array; docs/protocol.md §7)
ACK_TAIL = b'],"ack":true}}'


class WireError(Exception):
    """A frame that must be dropped; ``reason`` is a stable short label for counters."""

    reason = "malformed"


class PayloadError(ValueError):
    """A value that cannot be encoded as JSON at all (nested deeper than :data:`MAX_DEPTH` levels)."""


#: orjson refuses to encode structures nested deeper than this; labd refuses them where they enter
MAX_DEPTH = 255


def encode_json(obj: Any, *, strict_text: bool = False, exact_ints: bool = False) -> bytes:
    """Encode ``obj`` as JSON the way every labd frame is encoded (unknown types as their repr, big ints
    as strings); raise :class:`PayloadError` for what cannot be encoded at all (too deeply nested). A string that
    is not valid UTF-8 (a lone surrogate) is recorded as its escape; with ``strict_text`` (a client's request: it is
    told, not changed) orjson's ``JSONEncodeError`` (a ``TypeError``) is raised instead; so with ``exact_ints`` for an
    integer past 64 bits (else carried as its text)."""
    try:
        return orjson.dumps(obj, default=json_fallback, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        if "ecursion" in str(exc):
            raise PayloadError(f"value nested deeper than {MAX_DEPTH} levels cannot be recorded") from None
        if exact_ints and "64-bit" in str(exc):  # a client's request is refused, naming the field: sent as a text,
            raise  # the daemon refused the field's type ("must be a seq >= 0" for a seq of 23 digits)
    # orjson refuses some values without asking the fallback (ints over 64 bits, tuple keys, strings holding lone
    # surrogates): sanitise a copy rather than lose the message (a result holding one crashed the runner: review).
    try:
        return orjson.dumps(_sanitise(obj, not strict_text), default=json_fallback, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        if strict_text:
            raise
        raise PayloadError(f"value cannot be recorded as JSON: {exc}") from None


def nesting_ok(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """True if ``obj`` (decoded JSON) nests at most ``limit`` levels (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return False
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


def cut_deep(obj: Any, limit: int, why: str) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples) with each container nested deeper than ``limit`` levels replaced by
    ``{"unsent": why}``; iterative (no recursion limit). What is not cut is the same objects, in the same order."""
    box: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(obj, box, 0, 1)]
    while stack:
        value, parent, key, depth = stack.pop()
        if not isinstance(value, dict | list | tuple):
            parent[key] = value
            continue
        if depth > limit:
            parent[key] = {"unsent": why}
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value)
        new: Any = {} if isinstance(value, dict) else [None] * len(value)
        parent[key] = new
        for k, v in items:
            new[k] = v
            if isinstance(v, dict | list | tuple):
                stack.append((v, new, k, depth + 1))
    return box[0]


def non_finite(obj: Any) -> tuple[str, float] | None:
    """The first NaN or ±Infinity float in ``obj`` (dicts, lists, tuples) and where it is (``limits.budget``,
    ``params.xs[2]``), or None. JSON has no such numbers and orjson writes them as ``null``: a request would
    silently carry "absent" where a number was meant (a NaN budget read as no budget). Iterative; paths are
    only made once one is found (the search alone: ~0.25 us a value)."""
    stack: list[Any] = [obj]
    pop, extend, finite = stack.pop, stack.extend, math.isfinite
    while stack:
        value = pop()
        if isinstance(value, float):
            if not finite(value):
                break
        elif isinstance(value, dict):
            extend(value.values())
        elif isinstance(value, list | tuple):
            extend(value)
    else:
        return None
    paths: list[tuple[Any, str]] = [(obj, "")]
    while paths:
        value, path = paths.pop()
        if isinstance(value, float):
            if not finite(value):
                return path, value
        elif isinstance(value, dict):
            paths.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(value.items()))
        elif isinstance(value, list | tuple):
            paths.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    return None


class MalformedFrame(WireError):
    reason = "malformed"
    #: the message id, when a signed frame could not be decoded but its id could be read
    msg_id: str | None = None


#: the longest message id accepted: a receiver remembers every id for its replay window, so an unbounded id would be
#: memory a sender could make it hold (8 MiB ids: +500 MB in seconds, an attack review)
ID_MAX = 128
#: an envelope's ``id`` found without decoding (a message too large or undecodable, to answer it): any JSON spacing,
#: any id without escapes (a quote, a backslash or a control character); it matched compact JSON and [0-9A-Za-z_-]
#: only, so a client writing `"id": "..."` or ids like `ui:1` got no answer (a protocol review)
_ID_RE = re.compile(rb'"id"[ \t\r\n]*:[ \t\r\n]*"([^"\\\x00-\x1f]{1,%d})"' % ID_MAX)


def _found_id(raw: bytes) -> str | None:
    """The ``id`` in the first 256 bytes of an envelope, if one is there (see :data:`_ID_RE`)."""
    found = _ID_RE.search(raw[:256])
    if found is None:
        return None
    try:
        return found.group(1).decode()
    except UnicodeDecodeError:
        return None


class OversizedFrame(WireError):
    reason = "oversized"


@dataclass(frozen=True, slots=True)
class Message:
    """A verified, decoded message."""

    type: str
    body: dict[str, Any]
    id: str
    ts: float
    re: str | None = None
    #: a request whose sender reassembles a reply sent in parts (:mod:`labd.ipc.parts`)
    parts: bool = False


class Codec:
    """Packs and unpacks signed messages with one key; one instance per socket owner (not thread-safe)."""

    def __init__(self, key: bytes, *, max_message: int = DEFAULT_MAX_MESSAGE, replay_window: float = 300.0,
                 replay_ids: int = 1_000_000, strict_replay: bool = False, not_before: float | None = None):
        """``replay_ids``: the most message ids remembered for the replay window (the oldest are let go first);
        ``strict_replay`` and ``not_before``: see :class:`~labd.ipc.signing.ReplayGuard`."""
        self.signer = Signer(key)
        self.guard = ReplayGuard(window=replay_window, max_ids=replay_ids, strict=strict_replay, not_before=not_before)
        self.max_message = max_message
        # Cheap unique ids: a random per-process prefix plus a counter (no uuid4 per message).
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count()

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"

    def pack(self, type_: str, body: dict[str, Any], *, re: str | None = None, parts: bool = False,
             exact_ints: bool = False) -> list[bytes]:
        """Return ``[signature, body]`` frames for a new message; ``parts``: a request whose sender takes a large
        reply in parts (:mod:`labd.ipc.parts`); ``exact_ints``: raise (a TypeError) for an integer past 64 bits."""
        env: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": self.new_id(), "ts": time.time(), "type": type_}
        if re is not None:
            env["re"] = re
        if parts:
            env["parts"] = True
        env["body"] = body
        raw = encode_json(env, strict_text=True, exact_ints=exact_ints)  # a lone surrogate is refused, naming the field
        return [self.signer.sign(raw), raw]

    def _events_head(self, session: str) -> bytes:
        """An ``events`` message up to its body's ``session`` field, for a body spliced together from bytes."""
        return (b'{"v":%d,"id":"%s","ts":%r,"type":"events","body":{"session":' %
                (PROTOCOL_VERSION, self.new_id().encode(), time.time())) + orjson.dumps(session)

    def pack_events(self, session: str, events: list[bytes], *, ack: bool = False) -> list[bytes]:
        """``[signature, body]`` of an ``events`` message whose events are already JSON-encoded (the runner
        encodes each event once, when it is emitted, for its spool; they are spliced in, not re-encoded).
        ``ack``: ask the daemon to acknowledge it at once rather than within its ack interval."""
        raw = b"".join((self._events_head(session), b',"events":[', b",".join(events), ACK_TAIL if ack else b"]}}"))
        return [self.signer.sign(raw), raw]

    def pack_run(self, session: str, offset: int, span: bytes | memoryview) -> list[bytes]:
        """``[signature, body]`` of a live ``events`` message in the run form, ``{"session", "run": [offset,
        <span>]}``: ``span`` (a runner frame's events array, as received) is spliced in, not re-encoded. It sits
        inside a two-element array on purpose: were it more than one JSON value (crafted bytes), the message would
        not be valid JSON, so it never decodes into something other than that one array (docs/protocol.md)."""
        raw = b"".join((self._events_head(session), b',"run":[%d,' % offset, span, b"]}}"))
        return [self.signer.sign(raw), raw]

    def oversized_id(self, frames: list[bytes]) -> str | None:
        """The ``id`` of a message over ``max_message`` (which :meth:`unpack` refuses), so that its sender can be
        told: read from the first 256 bytes, where an envelope has it, and only if the message is validly signed.
        The body is never decoded (its signature is checked: a hash over its bytes)."""
        if len(frames) != 2:
            return None
        sig, raw = frames
        try:
            self.signer.verify(sig, raw)
        except SignatureError:
            return None
        return _found_id(raw)

    def unpack(self, frames: list[bytes], *, seen: bool = False) -> Message:
        """Verify and decode ``[signature, body]``; raise a :class:`WireError` subclass to drop it.

        ``seen=True`` decodes a message this codec already accepted once (a receiver processing it
        again after a failure) without tripping the replay guard."""
        if len(frames) != 2:
            raise MalformedFrame(f"expected 2 frames, got {len(frames)}")
        sig, raw = frames
        if len(raw) > self.max_message:
            raise OversizedFrame(f"message of {len(raw)} bytes exceeds {self.max_message}")
        try:
            self.signer.verify(sig, raw)
        except SignatureError as exc:
            raise _Dropped("bad_signature", str(exc)) from None
        try:
            env = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            err = MalformedFrame(f"body is not JSON: {exc}")
            # The signature is valid, so the sender is genuine: give the receiver the id to answer (e.g. a
            # request nested deeper than the decoder allows still gets a structured error reply).
            err.msg_id = _found_id(raw)
            raise err from None
        if not isinstance(env, dict):
            raise MalformedFrame("body is not a JSON object")
        msg_id, ts, type_, body = env.get("id"), env.get("ts"), env.get("type"), env.get("body")
        version = env.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:  # not true, not 1.0: the integer 1
            raise MalformedFrame(f"unsupported protocol version {version!r}")
        if not isinstance(msg_id, str) or not isinstance(type_, str) or not isinstance(body, dict):
            raise MalformedFrame("envelope needs string 'id', string 'type' and object 'body'")
        if not 0 < len(msg_id) <= ID_MAX:
            raise MalformedFrame(f"envelope 'id' must be 1-{ID_MAX} characters, not {len(msg_id)}")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise MalformedFrame("envelope needs numeric 'ts'")
        try:
            if not seen:
                self.guard.check(msg_id, float(ts))
        except ReplayError as exc:
            raise _Dropped("replayed", str(exc)) from None
        re = env.get("re")
        return Message(type=type_, body=body, id=msg_id, ts=float(ts), re=re if isinstance(re, str) else None,
                       parts=env.get("parts") is True)


def json_fallback(obj: Any) -> Any:
    """Workflow payloads may hold anything; what JSON cannot carry travels as its repr."""
    if isinstance(obj, set | frozenset):
        return list(obj)
    return repr(obj)


def json_int(n: int) -> bool:
    """Does integer ``n`` travel as a JSON number (orjson's 64 bits, signed or not)? Past them a frame carries it as
    a text (:func:`encode_json`)."""
    return -(2**63) <= n < 2**64


def _text(s: str) -> str:
    """``s`` as UTF-8 can carry it: a lone surrogate (``"\\udcff"``, from bytes decoded with ``surrogateescape``) as
    its escape."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _big_int(n: int) -> str:
    """An int JSON cannot carry as a number, as text (past Python's 4,300 digits, its size instead)."""
    try:
        return repr(n)
    except ValueError:
        return f"<int of {n.bit_length():,} bits, too long to write out>"


def _key(k: Any, texts: bool) -> Any:
    """A dict key as orjson takes it (``OPT_NON_STR_KEYS``): an int past 64 bits, or any other type, as text."""
    if isinstance(k, str):
        return _text(k) if texts else k
    if isinstance(k, int) and not isinstance(k, bool):
        return k if json_int(k) else _big_int(k)
    return k if isinstance(k, float | bool) or k is None else repr(k)


def _sanitise(obj: Any, texts: bool = True) -> Any:
    if isinstance(obj, str):
        return _text(obj) if texts else obj
    if isinstance(obj, dict):
        return {_key(k, texts): _sanitise(v, texts) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_sanitise(v, texts) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool) and not json_int(obj):
        return _big_int(obj)
    return obj


class _Dropped(WireError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
