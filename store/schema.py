"""Table definitions: the append-only ``events`` log and the projections ingest keeps beside it.

JSON columns are plain TEXT holding pre-encoded JSON: SQLAlchemy's JSON type costs 40-45 % of insert
throughput (DESIGN.md §9) and ingest already has the encoded bytes.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, false

__all__ = ["metadata", "sessions", "events", "steps", "state_history", "dag_edges", "cost_records", "cost_sums",
           "model_key", "MODEL_KEY_MAX", "DAY", "SUMMED", "ADD_TO_COST_SUMS", "files", "approvals", "skills", "blobs",
           "blob_refs", "idempotency_keys", "IDEMPOTENCY_RETENTION"]

metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("workflow", String(300), nullable=False),
    Column("params", Text, nullable=False),
    Column("limits", Text, nullable=False),
    Column("workdir", Text, nullable=False),
    Column("status", String(20), nullable=False),
    Column("reason", Text),
    Column("ended_by", String(20)),
    Column("outcome", Text),  # what the runner itself reported
    Column("exit_code", Integer),
    Column("signal", Integer),
    Column("pid", Integer),
    Column("pid_create_time", Float),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("last_seq", BigInteger, nullable=False, default=0),
    Column("runner_seq", BigInteger, nullable=False, default=0),  # last runner src_seq committed
    Column("peak_rss", BigInteger, nullable=False, default=0),
    Column("peak_cpu_percent", Float, nullable=False, default=0.0),
    Column("rejected_events", BigInteger, nullable=False, default=0),
    Column("cost", Float, nullable=False, default=0.0),
    # what finalize() needs after a daemon restart (see store.projections.finalize)
    Column("outcome_error", Text),
    Column("stop_by", String(40)),
    Column("kill_reason", Text),
    # what the current run has recorded against its bounds (0011): [daemon] max_session_record's bytes and the
    # output cap backstop's characters (daemon/recordcap.py, daemon/outputcap.py); 0 again when a resume starts a run
    Column("record_bytes", BigInteger, nullable=False, default=0, server_default="0"),
    Column("output_chars", BigInteger, nullable=False, default=0, server_default="0"),
    Column("tags", Text),  # JSON object of str -> str, from session.start
    # lineage (0006): the session this one was started from, how ("branch" | "replay" | "skill"), and the
    # node of the parent it branched before (branch) or replayed up to (replay)
    Column("parent_id", String(32)),
    Column("origin", String(20)),
    Column("branch_node", String(64)),
)
Index("ix_sessions_status", sessions.c.status)
Index("ix_sessions_parent_id", sessions.c.parent_id)
Index("ix_sessions_ended_at", sessions.c.ended_at)
# session.list's order (newest first, the id breaking ties) and its pages (0016): a list is read from the index, not
# sorted from the whole table
Index("ix_sessions_created_at", sessions.c.created_at, sessions.c.id)
Index("ix_sessions_status_created_at", sessions.c.status, sessions.c.created_at, sessions.c.id)  # `ps --status S`

events = Table(
    "events",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("src", String(1), nullable=False),  # 'r' runner, 'd' daemon
    Column("src_seq", BigInteger, nullable=False),
    Column("node_id", String(64)),
    Column("parent", BigInteger),
    Column("payload", Text, nullable=False),
    sqlite_with_rowid=False,
)

steps = Table(
    "steps",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("name", Text, nullable=False),  # up to MAX_STEP_NAME (1000) characters: Text, not VARCHAR (migration 0010)
    Column("status", Text, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("duration", Float),
    Column("error", Text),
    Column("start_seq", BigInteger),
    Column("kind", Text, nullable=False, default="step"),  # phase | step | agent
    Column("parent_node", String(64)),
    Column("agent", Text),
    Column("attempt", Integer),
    Column("redo_of", String(64)),
)

state_history = Table(
    "state_history",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),  # the event that caused it
    Column("ts", Float, nullable=False),
    Column("from_status", String(20)),
    Column("to_status", Text, nullable=False),
    Column("reason", Text),
    Column("actor", Text, nullable=False),
    Column("node_id", String(64)),  # set for step transitions, None for the session's own
)

dag_edges = Table(
    "dag_edges",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("src", String(64), primary_key=True),
    Column("dst", String(64), primary_key=True),
    Column("type", Text, nullable=False),  # contains | sequence | dependency | redo
)

cost_records = Table(
    "cost_records",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", Float, nullable=False),
    Column("node_id", String(64)),
    Column("agent", Text),
    Column("model", Text, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost", Float, nullable=False),
    Column("offline", Boolean, nullable=False),
)

#: cost.summary's ``since`` sums the part of its first day from the calls themselves: found by their time
Index("ix_cost_records_ts", cost_records.c.ts)

MODEL_KEY_MAX = 200  # characters of a model's name in cost_sums' key (an index entry has a bounded size)


def model_key(model: str) -> str:
    """A model's name as ``cost_sums`` keys it: as it is up to :data:`MODEL_KEY_MAX` characters; a longer one (any
    string a workflow's own events name) cut, with a digest of the whole so that two such names stay apart.
    PostgreSQL refuses an index entry over ~2,700 bytes: the calls of such a name would be refused with it."""
    if len(model) <= MODEL_KEY_MAX:
        return model
    import hashlib

    digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{model[:MODEL_KEY_MAX - 18]}…#{digest}"


DAY = 86400  # seconds: cost_sums.day counts these since the epoch (UTC)
#: the columns of ``cost_sums`` that add up calls
SUMMED = ("calls", "prompt_tokens", "completion_tokens", "cost")
#: how an INSERT into ``cost_sums`` adds to a row that is there (SQLite and PostgreSQL both take it): the writer's
#: and migration 0012's one way of adding
ADD_TO_COST_SUMS = ("ON CONFLICT (session_id, model, day) DO UPDATE SET "
                    + ", ".join(f"{c} = cost_sums.{c} + excluded.{c}" for c in SUMMED))

#: the calls of ``cost_records`` summed per session, model and UTC day (``day``: whole days since the epoch), kept by
#: the writer in the transaction that inserts the calls: ``cost.summary`` reads these (a row per session, model
#: and day) instead of every call of months of use (store/cost_queries.py)
cost_sums = Table(
    "cost_sums",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("model", Text, primary_key=True),
    Column("day", BigInteger, primary_key=True, autoincrement=False),
    Column("calls", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cost", Float, nullable=False),
)

files = Table(
    "files",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("path", Text, nullable=False),
    Column("change", String(10), nullable=False),  # created | changed | deleted
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("node_id", String(64)),
    Column("agent", Text),
    Column("tool", Text),
    Column("ts", Float, nullable=False),
    Column("candidates", Text),  # JSON list of node ids when concurrent steps make attribution ambiguous
    # (0008) put in place by a resume's or branch's restore of a checkpoint (the event's ``restored: true``), not
    # written by a step: such rows have no node
    Column("restored", Boolean, nullable=False, default=False, server_default=false()),
    # (0013) a name that is not UTF-8: its exact bytes (standard base64), as the event's ``path_b64``; ``path`` is its
    # display form (each undecodable byte written ``\\xNN``), which a file really named so shares
    Column("path_b64", Text),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("session_id", String(32), nullable=False),
    Column("node_id", String(64)),
    Column("kind", String(40), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("options", Text, nullable=False),
    Column("context", Text, nullable=False),
    Column("status", String(20), nullable=False),  # pending | resolved
    Column("policy", String(20)),
    Column("requested_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("decision", Text),
    Column("feedback", Text),
    Column("hypothesis", Text),
    Column("resolved_by", String(100)),
    Column("resolved_via", String(20)),
    Column("resolved_at", Float),
)
Index("ix_approvals_status", approvals.c.status)

#: reusable patterns extracted from successful sessions (labd skills); `document` is the skill as JSON text
skills = Table(
    "skills",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("created_at", Float, nullable=False),
    Column("origin_session", String(32)),
    Column("workflow", String(300), nullable=False),
    Column("description", Text, nullable=False),
    Column("document", Text, nullable=False),
    # a save's or import's idempotency key and the sha256 of what it asked for (a retry after a lost reply gets the
    # version the first attempt stored; the same key for another request is refused): null without a key
    Column("idempotency_key", String(200)),
    Column("request_digest", String(64)),
)
Index("ix_approvals_session", approvals.c.session_id)
Index("ix_skills_idempotency_key", skills.c.idempotency_key)

#: the last version number each skill name was given: kept when its versions are deleted, so a number is never
#: given to two skills (sessions record the ``{name, version}`` they ran)
skill_names = Table(
    "skill_names",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("last_version", Integer, nullable=False),
)

#: content-addressed payloads (sha256 of the UTF-8 text), stored once however many events refer to them
blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),  # bytes of UTF-8
    Column("data", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

#: which sessions refer to which blobs: a blob no row refers to may be pruned
blob_refs = Table(
    "blob_refs",
    metadata,
    Column("session_id", String(32), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("first_seq", BigInteger, nullable=False),  # the event that brought it
)
Index("ix_blob_refs_sha256", blob_refs.c.sha256)

#: how long a session.start idempotency key is remembered (a retry after that starts a new session)
IDEMPOTENCY_RETENTION = 24 * 3600.0

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(200), primary_key=True),  # client-generated, one per intended start
    Column("session_id", String(32), nullable=False),
    Column("digest", String(64), nullable=False),  # of the request, to refuse a key re-used for another request
    Column("created_at", Float, nullable=False),
)
Index("ix_idempotency_keys_created_at", idempotency_keys.c.created_at)

#: facts about the store as a whole: ``home`` (the id and path of the home whose record it is: a daemon of another
#: home is refused, daemon/store_identity.py) and ``sessions_created`` (``n``: sessions ever inserted, deletions
#: not subtracted; a home that saw more knows the store went back in time: a restored backup)
store_meta = Table(
    "store_meta",
    metadata,
    Column("key", String(40), primary_key=True),
    Column("value", Text, nullable=True),
    Column("n", BigInteger, nullable=True),
)
