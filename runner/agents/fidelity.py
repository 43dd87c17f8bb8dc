"""Full-fidelity payloads: ag2 objects as JSON, large strings as content-addressed blobs.

Every LLM call is recorded complete (system prompt, messages, tool schemas, model parameters; content,
tool calls, finish reason, usage), never truncated. Strings longer than :data:`BLOB_MIN` characters are
replaced in the event by a reference ``{"$blob": <sha256 of the UTF-8 text>, "size": <bytes>}``; the
first event of the session that refers to a given text carries it once in its ``blobs`` field
(``{sha256: text}``), which ingest moves into the store's ``blobs`` table (see store/blobs.py). A
20 k-token system prompt sent with 500 calls therefore crosses the channel once and is stored once.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["BLOB_MIN", "MEMO_SIZE", "BlobSender", "event_form", "jsonable", "model_params"]

#: strings at least this long (characters) become blobs; shorter ones stay inline in the event
BLOB_MIN = 4096
#: ag2 events whose serialised form a BlobSender keeps (a few agents' histories; the oldest quarter goes first)
MEMO_SIZE = 8192
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "auth")
_SCALARS = (str, int, float, bool, type(None))
_LEAVES = frozenset((int, float, bool, type(None)))  # values the blob walk leaves alone


def jsonable(obj: Any, _depth: int = 0, text: Any = None) -> Any:
    """A JSON-compatible form of an ag2 event, tool schema or plain value (ag2's own ``to_dict`` for
    events, so a recorded request can be turned back into ag2 objects). ``text``: applied to every
    string (the blob sender's reference maker), so serialising and externalising is one pass."""
    # exact types first: this runs for every value of every recorded request (the isinstance chain
    # below gives the same result for them, an ABC check at a time)
    kind = type(obj)
    if kind is str:
        return text(obj) if text is not None else obj
    if kind is int or kind is float or kind is bool or obj is None:
        return obj
    if kind is dict and _depth <= 40:
        return {k if type(k) is str else str(k): jsonable(v, _depth + 1, text) for k, v in obj.items()}
    if (kind is list or kind is tuple) and _depth <= 40:
        return [jsonable(v, _depth + 1, text) for v in obj]
    if isinstance(obj, str):
        return text(obj) if text is not None else obj
    if isinstance(obj, _SCALARS):
        return obj
    if _depth > 40:
        return repr(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, _depth + 1, text) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v, _depth + 1, text) for v in obj]
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        try:
            out = jsonable(to_dict(), _depth + 1, text)
        except Exception:  # noqa: BLE001 - a value ag2 cannot serialise is recorded by its repr
            return repr(obj)
        if isinstance(out, dict):
            out = {"type": type(obj).__name__, **out}
        return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name, None), _depth + 1, text) for f in dataclasses.fields(obj)}
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(), _depth + 1, text)
        except Exception:  # noqa: BLE001
            return repr(obj)
    if isinstance(obj, bytes):
        return {"bytes": len(obj)}
    return repr(obj)


class _Fallback(Exception):
    """A value the one-pass event walk leaves to :func:`jsonable` (the message is serialised that way)."""


#: ag2 event class -> its "module.qualname" (ag2's ``qualified_name``), for nested events
_QUALNAMES: dict[type, str] = {}
#: ag2 event class -> whether its ``to_dict`` is ag2's own ``event_to_dict`` (then :func:`event_form` applies)
_PLAIN_TO_DICT: dict[type, bool] = {}


def event_form(event: Any, text: Any = None) -> Any:
    """``jsonable(event, text=text)`` of an ag2 event, in one pass.

    :func:`jsonable` of an event calls ag2's ``to_dict`` (``event_to_dict``: a recursive copy of the
    event's fields, nested events as ``{"__event__": <qualified name>, ...}``) and then walks that copy
    again; this walks the event's fields once and builds the same form. The common values (strings,
    numbers, dicts, lists, nested events, plain dataclasses such as ag2's ``Usage``) are handled here;
    anything else (enums, exceptions, bytes, UUIDs, pydantic models, nesting deeper than 30), or an event
    class with its own ``to_dict``, makes it fall back to :func:`jsonable` for the whole event, so the
    result is always the same."""
    cls = type(event)
    plain = _PLAIN_TO_DICT.get(cls)
    if plain is None:
        from ag2.events import BaseEvent

        plain = _PLAIN_TO_DICT[cls] = (getattr(cls, "to_dict", None) is BaseEvent.to_dict
                                        and hasattr(cls, "_event_fields_"))
    if plain:
        try:
            out: dict[str, Any] = {"type": cls.__name__}
            out.update(_fields_form(event, text, 1))
            return out
        except _Fallback:
            pass
    return jsonable(event, text=text)


def _fields_form(event: Any, text: Any, depth: int) -> dict[str, Any]:
    return {k: _value_form(v, text, depth + 1) for k, v in event.__dict__.items() if not k.startswith("_")}


def _value_form(value: Any, text: Any, depth: int) -> Any:
    if depth > 30:  # jsonable's depth limit (40) would apply somewhere below: let it decide
        raise _Fallback
    kind = type(value)
    if kind is str:
        return text(value) if text is not None else value
    if kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): _value_form(v, text, depth + 1) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_value_form(v, text, depth + 1) for v in value]
    if hasattr(kind, "_event_fields_"):  # a nested event (ag2's _is_event_instance)
        name = _QUALNAMES.get(kind) or _qualname(kind)
        out: dict[str, Any] = {"__event__": text(name) if text is not None else name}  # as jsonable does
        out.update(_fields_form(value, text, depth))
        return out
    if kind in _PLAIN_DATACLASSES or _plain_dataclass(kind):  # e.g. ag2's Usage, in every ModelResponse
        name = _QUALNAMES.get(kind) or _qualname(kind)
        return {"__dataclass__": text(name) if text is not None else name,
                "data": {f.name: _value_form(getattr(value, f.name), text, depth + 2)
                         for f in dataclasses.fields(value)}}
    raise _Fallback


def _qualname(kind: type) -> str:
    """``module.qualname`` of a class, remembered (ag2's ``qualified_name``)."""
    name = _QUALNAMES[kind] = f"{kind.__module__}.{kind.__qualname__}"
    return name


#: dataclasses that ag2's serialize_value turns into {"__dataclass__": ..., "data": ...} (checked once per class)
_PLAIN_DATACLASSES: set[type] = set()


def _plain_dataclass(kind: type) -> bool:
    """A dataclass that none of serialize_value's earlier cases (enum, exception, dict, list, bytes, UUID) takes."""
    if not dataclasses.is_dataclass(kind) or issubclass(kind, (enum.Enum, BaseException, dict, list, tuple, bytes,
                                                               bytearray, uuid.UUID)):
        return False
    _PLAIN_DATACLASSES.add(kind)
    return True


def model_params(config: Any) -> dict[str, Any]:
    """The model parameters of an ag2 model config (temperature, max_tokens, ...): its scalar fields,
    never anything that looks like a credential."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        items = [(f.name, getattr(config, f.name, None)) for f in dataclasses.fields(config)]
    else:
        items = [(k, v) for k, v in vars(config).items()] if hasattr(config, "__dict__") else []
    out: dict[str, Any] = {}
    for name, value in items:
        name = name.lstrip("_")
        if any(word in name.lower() for word in _SECRET_WORDS) or not isinstance(value, _SCALARS) or value is None:
            continue
        out[name] = value
    return out


def _keeper(message: Any, key: int, memo: dict[int, Any]) -> Callable[[], Any]:
    """A weak reference to ``message`` that drops its memo entry when the message dies (or, for an object
    that cannot be weakly referenced, a holder that keeps it alive until the entry is evicted)."""
    def drop(ref: weakref.ref[Any]) -> None:
        hit = memo.get(key)
        if hit is not None and hit[0] is ref:  # not an entry made since for a new object with this id
            memo.pop(key, None)
    try:
        return weakref.ref(message, drop)
    except TypeError:
        return lambda: message


class BlobSender:
    """Replaces long strings by blob references; remembers which blobs this runner already sent.

    It also remembers the serialised form of the last :data:`MEMO_SIZE` ag2 events it serialised
    (:meth:`serialize_messages`): an agent's history grows by a message or two per call and every call
    records all of it, so without the memo each call would serialise the whole history again (O(n) per
    call, ~80 us per message). An entry lives as long as its event (a weak reference whose callback
    removes it; an event that cannot be weakly referenced is held), so an id is never reused for another
    object while its entry lives, and the memo keeps no finished conversation alive: a long-running
    workflow whose conversations are short would otherwise carry up to MEMO_SIZE dead histories, which
    every full garbage collection walks (measured: one 90 ms collection per few thousand turns, ~20-30 us
    per turn). ag2 events are records of what happened: a middleware that rewrites history (compaction,
    assembly) builds new events, which are new entries."""

    def __init__(self, threshold: int = BLOB_MIN, withhold: Callable[[str], str] | None = None) -> None:
        self.threshold = threshold
        #: the session's secrets replaced in a blob's text before its address is taken
        #: (:func:`labd.runner.withhold.text_withholder`)
        self._withhold = withhold
        self._sent: set[str] = set()
        self._lock = threading.Lock()
        #: id(event) -> (a callable returning the event: its weak reference, or a holder; its serialised form;
        #: the (digest, text) of every blob the form refers to)
        self._memo: dict[int, tuple[Callable[[], Any], Any, tuple[tuple[str, str], ...]]] = {}

    def externalize(self, obj: Any) -> tuple[Any, dict[str, str]]:
        """``obj`` with every long string replaced by a reference, and the texts not sent before.
        Containers holding no long string are returned as they are (not copied)."""
        new: dict[str, str] = {}
        return self._walk(obj, new), new

    def serialize(self, obj: Any, new: dict[str, str]) -> Any:
        """:func:`jsonable` and :meth:`externalize` in one pass; texts not sent before go to ``new``."""
        threshold = self.threshold
        return jsonable(obj, text=lambda s: s if len(s) < threshold else self._ref(s, new))

    def serialize_messages(self, messages: Any, new: dict[str, str]) -> list[Any]:
        """:meth:`serialize` of a message list, each ag2 event serialised once per session (memo)."""
        memo, threshold = self._memo, self.threshold
        out: list[Any] = []
        for message in messages:
            if type(message) is str or not hasattr(message, "to_dict"):  # plain values: not memoised
                out.append(self.serialize(message, new))
                continue
            key = id(message)
            hit = memo.get(key)
            if hit is not None and hit[0]() is message:
                if hit[2]:  # its texts go with this event if the runner forgot having sent them
                    self._resend(hit[2], new)
                out.append(hit[1])
                continue
            refs: list[tuple[str, str]] = []

            def text(s: str, refs: list[tuple[str, str]] = refs) -> Any:
                if len(s) < threshold:
                    return s
                return self._ref(s, new, refs)
            form = event_form(message, text)
            if len(memo) >= MEMO_SIZE:
                with self._lock:  # oldest first (insertion order); another thread may have evicted it
                    for key in list(memo)[:MEMO_SIZE // 4]:
                        memo.pop(key, None)
            memo[key] = (_keeper(message, key, memo), form, tuple(refs))
            out.append(form)
        return out

    def _resend(self, refs: tuple[tuple[str, str], ...], new: dict[str, str]) -> None:
        with self._lock:
            for digest, text in refs:
                if digest not in self._sent:
                    self._sent.add(digest)
                    new[digest] = text

    def _ref(self, text: str, new: dict[str, str], refs: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        if self._withhold is not None:
            text = self._withhold(text)
        data = text.encode("utf-8", "surrogatepass")
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            first = digest not in self._sent
            self._sent.add(digest)
        if first:
            new[digest] = text
        if refs is not None:
            refs.append((digest, text))
        return {"$blob": digest, "size": len(data)}

    def _walk(self, obj: Any, new: dict[str, str]) -> Any:
        kind = type(obj)
        if kind is str or isinstance(obj, str):
            return obj if len(obj) < self.threshold else self._ref(obj, new)
        if kind is dict or isinstance(obj, dict):
            out: dict[str, Any] | None = None
            threshold = self.threshold
            for key, value in obj.items():
                vkind = type(value)
                if vkind in _LEAVES or (vkind is str and len(value) < threshold):
                    continue  # most values of an event: nothing to walk, nothing to copy
                walked = self._walk(value, new)
                if walked is not value:
                    if out is None:
                        out = dict(obj)
                    out[key] = walked
            return obj if out is None else out
        if kind is list or isinstance(obj, list):
            items: list[Any] | None = None
            for i, value in enumerate(obj):
                if type(value) in _LEAVES:
                    continue
                walked = self._walk(value, new)
                if walked is not value:
                    if items is None:
                        items = list(obj)
                    items[i] = walked
            return obj if items is None else items
        return obj

    def forget(self, digests: Mapping[str, str]) -> None:
        """Blobs whose event could not be sent (it was truncated): send them again next time."""
        with self._lock:
            self._sent.difference_update(digests)
