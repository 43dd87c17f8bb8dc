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
import hashlib
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["BLOB_MIN", "BlobSender", "jsonable", "model_params"]

#: strings at least this long (characters) become blobs; shorter ones stay inline in the event
BLOB_MIN = 4096
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "auth")
_SCALARS = (str, int, float, bool, type(None))


def jsonable(obj: Any, _depth: int = 0, text: Any = None) -> Any:
    """A JSON-compatible form of an ag2 event, tool schema or plain value (ag2's own ``to_dict`` for
    events, so a recorded request can be turned back into ag2 objects). ``text``: applied to every
    string (the blob sender's reference maker), so serialising and externalising is one pass."""
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


class BlobSender:
    """Replaces long strings by blob references; remembers which blobs this runner already sent."""

    def __init__(self, threshold: int = BLOB_MIN) -> None:
        self.threshold = threshold
        self._sent: set[str] = set()
        self._lock = threading.Lock()

    def externalize(self, obj: Any) -> tuple[Any, dict[str, str]]:
        """``obj`` with every long string replaced by a reference, and the texts not sent before."""
        new: dict[str, str] = {}
        return self._walk(obj, new), new

    def serialize(self, obj: Any, new: dict[str, str]) -> Any:
        """:func:`jsonable` and :meth:`externalize` in one pass; texts not sent before go to ``new``."""
        threshold = self.threshold
        return jsonable(obj, text=lambda s: s if len(s) < threshold else self._walk(s, new))

    def _walk(self, obj: Any, new: dict[str, str]) -> Any:
        if isinstance(obj, str):
            if len(obj) < self.threshold:
                return obj
            data = obj.encode("utf-8", "surrogatepass")
            digest = hashlib.sha256(data).hexdigest()
            with self._lock:
                first = digest not in self._sent
                self._sent.add(digest)
            if first:
                new[digest] = obj
            return {"$blob": digest, "size": len(data)}
        if isinstance(obj, dict):
            return {k: self._walk(v, new) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._walk(v, new) for v in obj]
        return obj

    def forget(self, digests: Mapping[str, str]) -> None:
        """Blobs whose event could not be sent (it was truncated): send them again next time."""
        with self._lock:
            self._sent.difference_update(digests)
