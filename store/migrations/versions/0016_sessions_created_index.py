"""Indexes on ``sessions (created_at, id)`` and ``(status, created_at, id)``: ``session.list`` reads sessions newest
first and pages through them (``before``); without them every list sorted the whole table, or all the sessions of
the statuses asked for (100,000 sessions: every ``labd ps -a``, every page of ``labd ps --status completed``).

Revision ID: 0016_sessions_created_index
Revises: 0015_store_meta
"""

from alembic import op

revision = "0016_sessions_created_index"
down_revision = "0015_store_meta"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sessions_created_at", "sessions", ["created_at", "id"])
    op.create_index("ix_sessions_status_created_at", "sessions", ["status", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_sessions_status_created_at", table_name="sessions")
    op.drop_index("ix_sessions_created_at", table_name="sessions")
