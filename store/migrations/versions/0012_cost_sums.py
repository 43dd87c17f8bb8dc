"""``cost_sums``: the LLM calls of ``cost_records`` summed per session, model and UTC day, kept by the writer with
the calls. ``cost.summary`` (``labd cost --all``) summed every call of the daemon's history on each request: a
daemon that ran for months holds millions (1,000,000 calls: 2.5-3.4 s, docs/benchmarks.md §50). The existing
calls are summed into the table here, in one statement (1,000,000 calls: ~5 s, once, §50); the calls' times get an
index.

Revision ID: 0012_cost_sums
Revises: 0011_record_counts
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from labd.store.schema import ADD_TO_COST_SUMS, MODEL_KEY_MAX, model_key

revision = "0012_cost_sums"
down_revision = "0011_record_counts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cost_sums",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("day", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
    )
    # cost.summary's `since` sums the part of its first day from the calls: found by their time, not a scan
    op.create_index("ix_cost_records_ts", "cost_records", ["ts"])
    # the day a call's time falls in, as Python's ts // 86400 (store/writer.py; ingest takes times 0 <= ts < 1e11):
    # PostgreSQL's CAST rounds, so FLOOR first; SQLite's truncates (it has FLOOR only with its math functions)
    pg = op.get_bind().dialect.name == "postgresql"
    day = "CAST(FLOOR(ts / 86400.0) AS BIGINT)" if pg else "CAST(ts / 86400.0 AS INTEGER)"
    into = "INSERT INTO cost_sums (session_id, model, day, calls, prompt_tokens, completion_tokens, cost) "
    sums = "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost) FROM cost_records WHERE "
    short = f"LENGTH(model) <= {MODEL_KEY_MAX}"
    op.execute(f"{into} SELECT session_id, model, {day}, {sums} {short} GROUP BY session_id, model, {day}")
    # the few longer names: their key (cut, with a digest) made in Python, as the writer makes it
    bind = op.get_bind()
    added: dict[tuple[str, str, int], list[Any]] = {}
    for sid, model, d, n, prompt, completion, cost in bind.execute(sa.text(
            f"SELECT session_id, model, {day}, {sums} NOT ({short}) GROUP BY session_id, model, {day}")):
        g = added.setdefault((sid, model_key(model), int(d)), [0, 0, 0, 0.0])
        for i, v in enumerate((n, prompt, completion, cost)):
            g[i] += v
    if added:
        # added, as the writer adds: a workflow's own events may name a model exactly as another's key reads
        bind.execute(sa.text(f"{into} VALUES (:s, :m, :d, :n, :p, :c, :x) {ADD_TO_COST_SUMS}"),
                     [{"s": k[0], "m": k[1], "d": k[2], "n": v[0], "p": v[1], "c": v[2], "x": v[3]}
                      for k, v in added.items()])


def downgrade() -> None:
    op.drop_index("ix_cost_records_ts", "cost_records")
    op.drop_table("cost_sums")
