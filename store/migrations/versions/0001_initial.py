"""Initial schema: events log, sessions, steps, state history.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("workflow", sa.String(300), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("limits", sa.Text, nullable=False),
        sa.Column("workdir", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("ended_by", sa.String(20)),
        sa.Column("outcome", sa.String(20)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("signal", sa.Integer),
        sa.Column("pid", sa.Integer),
        sa.Column("pid_create_time", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("runner_seq", sa.Integer, nullable=False, server_default="0"),
        sa.Column("peak_rss", sa.Integer, nullable=False, server_default="0"),
        sa.Column("peak_cpu_percent", sa.Float, nullable=False, server_default="0"),
        sa.Column("rejected_events", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_sessions_status", "sessions", ["status"])
    op.create_table(
        "events",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("src", sa.String(1), nullable=False),
        sa.Column("src_seq", sa.Integer, nullable=False),
        sa.Column("node_id", sa.String(64)),
        sa.Column("parent", sa.Integer),
        sa.Column("payload", sa.Text, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "steps",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("duration", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("start_seq", sa.Integer),
    )
    op.create_table(
        "state_history",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("from_status", sa.String(20)),
        sa.Column("to_status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("actor", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    for table in ("state_history", "steps", "events", "sessions"):
        op.drop_table(table)
