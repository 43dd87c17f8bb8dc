"""Reading the live tail: the two forms of a published ``events`` message, turned into events.

The daemon publishes a session's committed events on ``session.<id>`` in one of two forms (docs/protocol.md,
"Live tail"):

- **per event**: ``{"session", "events": [[seq, ts, kind, src, node_id, parent, payload, src_seq], ...]}``;
- **a runner frame as it arrived**: ``{"session", "run": [k, [[src_seq, ts, kind, node_id, parent, payload],
  ...]]}`` — the events of one runner frame that all took ingest's hot path in order, spliced in
  as the bytes the runner sent (not decoded and encoded again per event); each one's ``seq`` is ``src_seq + k``,
  its ``src`` is the runner's.

Both decode to the same events; a message holds one form. Decode with the SDK's JSON parser (orjson, as the
daemon does): the runner's bytes are valid JSON the daemon decoded with it, but JSON leaves some things to the
parser (a repeated key: the last counts; an integer beyond 64 bits: orjson reads a float), and the store holds
what orjson made of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labd.ipc.gcpause import gc_paused

if TYPE_CHECKING:
    from labd.ipc.wire import Codec

__all__ = ["LIVE_RCVHWM", "WIRE_FIELDS", "decode_live", "event_from_wire", "live_events", "wire_items"]

#: Live messages a follower's SUB socket holds while its reader does not read (an SDK ``follow`` whose caller
#: stopped iterating, a busy ``labd top``, a frozen dashboard tab): past this many ZeroMQ drops the newest, and
#: the follower fills the gap from the store when it reads again, as after any drop of the tail. A message is
#: usually at most ~512 KiB (a run; per-event messages end past the daemon's ``PUB_CHUNK_BYTES``), so a stalled
#: follower usually holds at most ~32 MiB; but one event larger than that is a message of its own (up to the 16 MiB
#: message limit: a workflow's custom event of megabytes), and the mark counts messages, not bytes: up to 64 times the
#: session's largest event (~1 GiB at worst). It was 100,000 messages (tens of GiB): a follower that stopped reading
#: held everything the session printed meanwhile.
LIVE_RCVHWM = 64

WIRE_FIELDS = ("seq", "ts", "kind", "src", "node_id", "parent", "payload", "src_seq")


def event_from_wire(item: list[Any]) -> dict[str, Any]:
    """Turn a published compact event ``[seq, ts, kind, src, node_id, parent, payload, src_seq]`` into a dict."""
    if len(item) == 8:  # every event the daemon publishes: one dict display, no zip (a follower's per-event cost)
        seq, ts, kind, src, node_id, parent, payload, src_seq = item
        return {"seq": seq, "ts": ts, "kind": kind, "src": "runner" if src == "r" else "daemon", "node_id": node_id,
                "parent": parent, "payload": payload, "src_seq": src_seq}
    ev = dict(zip(WIRE_FIELDS, item, strict=False))
    ev["src"] = "runner" if ev.get("src") == "r" else "daemon"
    return ev


def live_events(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of one live message's body, in ``seq`` order, as dicts (the keys of ``events.query``'s events).

    An item that is not a list of the form's length is skipped (the follower then fills the gap from the store)."""
    found = _run(body)
    if found is None:
        return [event_from_wire(item) for item in body.get("events") or () if isinstance(item, list)]
    off, run = found
    out = []
    for item in run:
        if item.__class__ is not list or len(item) != 6:
            continue
        src_seq, ts, kind, node_id, parent, payload = item
        out.append({"seq": src_seq + off, "ts": ts, "kind": kind, "src": "runner", "node_id": node_id,
                    "parent": parent, "payload": payload, "src_seq": src_seq})
    return out


def decode_live(codec: Codec, frames: list[bytes]) -> list[dict[str, Any]]:
    """Verify and decode one live message (``[signature, body]``, the frames after the topic) into its events as
    dicts (:func:`live_events`), with the cyclic garbage collector paused meanwhile (:mod:`labd.ipc.gcpause`: about
    half a follower's CPU per event). Raises the codec's :class:`~labd.ipc.wire.WireError` for a message to drop."""
    with gc_paused():
        return live_events(codec.unpack(frames).body)


def wire_items(body: dict[str, Any]) -> list[list[Any]]:
    """The events of one live message's body as compact per-event lists ``[seq, ts, kind, src, node_id, parent,
    payload, src_seq]``, whichever form it came in (for followers that only look at a field or two)."""
    found = _run(body)
    if found is None:
        return list(body.get("events") or ())
    off, run = found
    return [[ev[0] + off, ev[1], ev[2], "r", ev[3], ev[4], ev[5], ev[0]] for ev in run
            if ev.__class__ is list and len(ev) == 6]


def _run(body: dict[str, Any]) -> tuple[int, list[Any]] | None:
    """``(seq offset, runner events)`` of a run-form body; None for the per-event form (or a malformed run)."""
    run = body.get("run")
    if run.__class__ is not list or len(run) != 2 or run[0].__class__ is not int or run[1].__class__ is not list:
        return None
    return run[0], run[1]
