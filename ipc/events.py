"""Event kinds: the typed, versioned schema of every fact labd records about a session.

An event on the runner channel is a compact list ``[src_seq, ts, kind, node_id, parent, payload]``;
in the store and on the event socket it is an object with the session-wide ``seq`` the daemon assigned
(see docs/protocol.md, "Events"). :func:`validate` checks a payload against its kind's schema; ingest
rejects (and counts) anything that fails, it never raises past ingest.

Versioning: every kind below is at version 1. An incompatible change gets a new kind name with a
version suffix (``output@2``) so old readers never misread new rows.
"""

from __future__ import annotations

import hashlib
from typing import Any

from labd.ipc.event_schemas import ANY, SCHEMAS
from labd.ipc.wire import PayloadError, encode_json

__all__ = ["SCHEMAS", "KIND_VERSION", "DAEMON_KINDS", "EventError", "validate", "quick_valid", "TERMINAL_STATUSES",
           "STATUSES", "BLOBS_FIELD", "APPROVAL_PROMPT_MAX", "APPROVAL_CONTEXT_MAX", "APPROVAL_KIND_MAX",
           "APPROVAL_OPTIONS_MAX", "APPROVAL_OPTION_MAX", "APPROVAL_ID_MAX", "APPROVAL_POLICIES",
           "APPROVAL_PAYLOAD_MAX", "APPROVALS_PENDING_MAX", "NODE_ID_MAX", "SHA256_MAX", "TOKENS_MAX"]

#: payload field carrying the texts of blobs referenced for the first time: {sha256 hex: text}
BLOBS_FIELD = "blobs"
#: session statuses, in lifecycle order; the last four are terminal
STATUSES = ("created", "queued", "starting", "running", "paused", "waiting_approval", "completed", "failed",
            "cancelled", "lost")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "lost"})


class EventError(ValueError):
    """An event that does not match its kind's schema."""


#: characters of a node id (an event's ``node_id``, a step's ``parent_node`` and ``redo_of``, the source of an edge):
#: they are keys of the store (``VARCHAR(64)``, which PostgreSQL enforces). The runner's own ids are a few characters
#: (``n12``, ``n3f1.4``); a longer one can only be forged, and ingest refuses it with this reason rather than have the
#: store refuse the whole batch's write (DataError) or silently keep it on SQLite
NODE_ID_MAX = 64
#: characters of a file event's ``sha256`` (a hex digest: 64; the files table's column)
SHA256_MAX = 64
#: a cost.recorded's token counts: 0 to this (the store's INTEGER columns; summed per day in BIGINT)
TOKENS_MAX = 2**31 - 1
#: a cost.recorded's cost, USD: 0 to this (a runner's is the session's code: a negative cost hid spending, and
#: 1.7e308 twice summed to infinity, which broke `labd cost --all` for every session)
COST_MAX = 1e9
#: an event's time stamp, seconds since the epoch: 0 to this (year 5138; 1e300 broke `labd logs --timestamps`)
TS_MAX = 1e11
#: a payload's ``duration`` (seconds): finite, 0 to this
DURATION_MAX = 1e10
#: a ``session.resumed`` budget (USD): finite, 0 to this (the most a client may give: daemon/api/sessions.py)
BUDGET_MAX = 1e12
#: a node's ``edges`` (the nodes it depends on): at most this many per event. Each is a row of the DAG's table
#: (~90 bytes stored for ~16 in the event): 20 events of 100,000 grew a store by 174 MB in 20 s (an attack review)
EDGES_MAX = 10_000
#: kind -> its payload fields that hold a node id
_NODE_FIELDS = {"step.started": ("parent_node", "redo_of"), "step.planned": ("parent_node",),
                "agent.turn.started": ("parent_node",)}
_FILE_KINDS = frozenset({"file.created", "file.changed", "file.deleted"})


# Bounds of an approval request (``approval.requested``), checked by :func:`validate`: by the runner where the
# workflow asks (``ctx.approval`` raises) and by ingest for whatever a runner sends (``event.rejected``). An approval
# is never dropped or counted against the output cap (the workflow waits for its answer), so its size is bounded
# instead: at most 1 MiB of event (and of row) however it is written (docs/design.md, "Approvals at scale").
#: characters of the prompt: a question a person reads (~25k tokens, ~50 pages); material belongs in files
APPROVAL_PROMPT_MAX = 100_000
#: bytes of the context's JSON (UTF-8, as it is sent and stored)
APPROVAL_CONTEXT_MAX = 65_536
#: characters of ``kind`` (the approvals table's column) and of an ``approval_id`` (ids are ``ap-<16 hex>``)
APPROVAL_KIND_MAX = 40
APPROVAL_ID_MAX = 40
#: options: at most this many, each a non-empty string of at most APPROVAL_OPTION_MAX characters (the longest
#: decision ``approval.resolve`` takes: a longer option could never be chosen)
APPROVAL_OPTIONS_MAX = 100
APPROVAL_OPTION_MAX = 40
#: what ``policy`` may be: what happens once ``timeout`` passes without an answer
APPROVAL_POLICIES = ("approve", "reject", "fail")
#: bytes of the whole payload's JSON: the fields above at their bounds fit (a prompt of escapes is 600,000 bytes),
#: and it bounds what they do not name (``agent``, fields a runner adds)
APPROVAL_PAYLOAD_MAX = 2**20
#: approvals one session may have pending at once: each is a row and an entry in the daemon's memory until answered
#: (a workflow asks from a thread that waits; a runner writing its own frames need not wait). Past it, ``ctx.approval``
#: raises and ingest rejects the request
APPROVALS_PENDING_MAX = 1000


KIND_VERSION = {kind: 1 for kind in SCHEMAS}

#: kinds only the daemon may record (lifecycle facts a runner cannot know); from a runner they are rejected
DAEMON_KINDS = frozenset({"session.created", "session.queued", "session.launched", "session.stopping", "session.ended",
                          "session.adopted", "session.pause_requested", "limit.exceeded", "resource.sample",
                          "event.rejected", "approval.resolved", "session.continued", "session.placed"})

#: kinds that must carry a node_id
_NEEDS_NODE = frozenset({"step.started", "step.finished", "step.planned", "agent.turn.started",
                         "agent.turn.finished"})


def _compile() -> dict[str, tuple[tuple[str, tuple[type, ...] | None, bool, bool], ...]]:
    """Per kind: (field, accepted types or None for any, required, booleans allowed) — precomputed
    because ingest validates every event (it is on the hot path)."""
    out = {}
    for kind, schema in SCHEMAS.items():
        fields = []
        for name, (types, required) in schema.items():
            tup = None if types is ANY else (types if isinstance(types, tuple) else (types,))
            fields.append((name, tup, required, tup is not None and bool in tup))
        out[kind] = tuple(fields)
    return out


_COMPILED = _compile()


#: kind -> (its number field held to 0..bound, the bound): every schema's ``duration``, a resume's budget
_BOUNDED = {k: ("duration", DURATION_MAX) for k, schema in SCHEMAS.items() if "duration" in schema} | {
    "session.resumed": ("budget", BUDGET_MAX)}


def validate(kind: Any, payload: Any, node_id: Any = None) -> None:
    """Raise :class:`EventError` unless ``payload`` matches the schema of ``kind``."""
    fields = _COMPILED.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise EventError(f"unknown event kind {kind!r}")
    if not isinstance(payload, dict):
        raise EventError(f"{kind}: payload must be an object")
    if node_id is not None and not isinstance(node_id, str):
        raise EventError(f"{kind}: node_id must be a string")
    if node_id is None and kind in _NEEDS_NODE:
        raise EventError(f"{kind}: node_id is required")
    if node_id is not None and len(node_id) > NODE_ID_MAX:
        raise EventError(f"{kind}: node_id must be at most {NODE_ID_MAX} characters (got {len(node_id):,})")
    get = payload.get
    blobs = get(BLOBS_FIELD)
    if blobs is not None:
        _check_blobs(kind, blobs)
    for field, types, required, bools in fields:
        value = get(field)
        if value is None:
            if required:
                raise EventError(f"{kind}: missing field {field!r}")
            continue
        if types is None:
            continue
        if value.__class__ is bool and not bools:
            raise EventError(f"{kind}: field {field!r} must not be a boolean")
        if not isinstance(value, types):
            raise EventError(f"{kind}: field {field!r} has the wrong type ({type(value).__name__})")
    if kind == "approval.requested":
        _check_approval(payload)
    elif kind in _NODE_FIELDS:
        _check_nodes(kind, payload)
    elif kind in _FILE_KINDS and len(payload["sha256"]) > SHA256_MAX:
        raise EventError(f"{kind}: sha256 must be at most {SHA256_MAX} characters (got {len(payload['sha256']):,})")
    elif kind == "cost.recorded":
        for name in ("prompt_tokens", "completion_tokens"):
            if not 0 <= payload[name] <= TOKENS_MAX:  # PostgreSQL refused the row (SQLite past 2**63): said here
                raise EventError(f"{kind}: {name} must be 0 to {TOKENS_MAX:,} (got {payload[name]:,})")
        if not 0 <= payload["cost"] <= COST_MAX:  # NaN fails too
            raise EventError(f"{kind}: cost must be 0 to {COST_MAX:g} USD (got {payload['cost']!r})")
    bounded = _BOUNDED.get(kind)
    if bounded is not None:
        name, bound = bounded
        value = get(name)
        if value is not None and not 0 <= value <= bound:  # NaN and infinity fail too
            raise EventError(f"{kind}: {name} must be 0 to {bound:g} (got {value!r})")


def _check_nodes(kind: str, payload: dict[str, Any]) -> None:
    """Node ids in a step's payload (its parent, the node it redoes, its edges' sources) fit the store's keys."""
    for name in _NODE_FIELDS[kind]:
        value = payload.get(name)
        if value is not None and len(value) > NODE_ID_MAX:
            raise EventError(f"{kind}: {name} must be at most {NODE_ID_MAX} characters (got {len(value):,})")
    edges = payload.get("edges") or ()
    if len(edges) > EDGES_MAX:
        raise EventError(f"{kind}: edges must be at most {EDGES_MAX:,} (got {len(edges):,})")
    for edge in edges:
        if isinstance(edge, list) and edge and isinstance(edge[0], str) and len(edge[0]) > NODE_ID_MAX:
            raise EventError(f"{kind}: an edge's source node must be at most {NODE_ID_MAX} characters "
                             f"(got {len(edge[0]):,})")


def _check_approval(payload: dict[str, Any]) -> None:
    """The bounds of an approval request (the ``APPROVAL_*`` constants); types are already checked."""
    kind = "approval.requested"
    aid, prompt, options = payload["approval_id"], payload["prompt"], payload["options"]
    if not 0 < len(aid) <= APPROVAL_ID_MAX:
        raise EventError(f"{kind}: approval_id must be 1-{APPROVAL_ID_MAX} characters (got {len(aid):,})")
    if len(payload["kind"]) > APPROVAL_KIND_MAX:
        raise EventError(f"{kind}: kind must be at most {APPROVAL_KIND_MAX} characters (got {len(payload['kind']):,})")
    if len(prompt) > APPROVAL_PROMPT_MAX:
        raise EventError(f"{kind}: prompt must be at most {APPROVAL_PROMPT_MAX:,} characters (got {len(prompt):,}); "
                         "put long material in a file and name it in the prompt")
    if not 0 < len(options) <= APPROVAL_OPTIONS_MAX:
        raise EventError(f"{kind}: options must be 1-{APPROVAL_OPTIONS_MAX} strings (got {len(options):,})")
    for o in options:
        if o.__class__ is not str or not 0 < len(o) <= APPROVAL_OPTION_MAX:
            raise EventError(f"{kind}: each option must be a string of 1-{APPROVAL_OPTION_MAX} characters "
                             f"(got {_describe(o)})")
    policy = payload.get("policy")
    if policy is not None and policy not in APPROVAL_POLICIES:
        raise EventError(f"{kind}: policy must be approve, reject or fail (got {str(policy)[:40]!r})")
    try:  # as the runner sends them (and the store keeps them)
        context = payload.get("context")
        if context is not None and (size := len(encode_json(context))) > APPROVAL_CONTEXT_MAX:
            raise EventError(f"{kind}: context must be at most {APPROVAL_CONTEXT_MAX:,} bytes as JSON "
                             f"(got {size:,})")
        size = len(encode_json(payload))
    except PayloadError as exc:  # nested deeper than JSON can carry
        raise EventError(f"{kind}: {exc}") from None
    if size > APPROVAL_PAYLOAD_MAX:
        raise EventError(f"{kind}: the payload must be at most {APPROVAL_PAYLOAD_MAX:,} bytes as JSON (got {size:,})")


def _describe(value: Any) -> str:
    return f"{len(value):,} characters" if isinstance(value, str) else f"a value of type {type(value).__name__}"


def _check_blobs(kind: str, blobs: Any) -> None:
    """Blobs are content-addressed and shared by all sessions: a text must match its address."""
    if not isinstance(blobs, dict):
        raise EventError(f"{kind}: blobs must be an object of sha256 -> text")
    for digest, text in blobs.items():
        if not (isinstance(digest, str) and len(digest) == 64 and isinstance(text, str)):
            raise EventError(f"{kind}: blobs must map sha256 hex digests to texts")
        if hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() != digest:
            raise EventError(f"{kind}: blob {digest[:12]}… does not match its sha256")


def quick_valid(kind: Any, payload: Any, node_id: Any) -> bool:
    """True if a high-volume event (output, log, custom) is certainly valid; False means: run
    :func:`validate` (which also explains what is wrong). A fast path for ingest's hot loop."""
    if payload.__class__ is not dict or (node_id is not None and (node_id.__class__ is not str
                                                                 or len(node_id) > NODE_ID_MAX)):
        return False
    get = payload.get
    if kind == "custom":
        return get("name").__class__ is str
    if kind == "output":
        return get("stream").__class__ is str and get("text").__class__ is str
    if kind == "log":
        fields = get("fields")
        return (get("level").__class__ is str and get("event").__class__ is str
                and (fields is None or fields.__class__ is dict) and get("logger").__class__ in (str, type(None)))
    return False


_MISSING = object()
