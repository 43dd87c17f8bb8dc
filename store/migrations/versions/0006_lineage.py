"""Session lineage: a session started from another one (branch, replay, skill) records where it came from.
Also an index on sessions.ended_at: the search indexer reads only live and recently ended sessions.

Revision ID: 0006_lineage
Revises: 0005_idempotency
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_lineage"
down_revision = "0005_idempotency"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(32)))
        batch.add_column(sa.Column("origin", sa.String(20)))
        batch.add_column(sa.Column("branch_node", sa.String(64)))
    op.create_index("ix_sessions_parent_id", "sessions", ["parent_id"])
    op.create_index("ix_sessions_ended_at", "sessions", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_ended_at", "sessions")
    op.drop_index("ix_sessions_parent_id", "sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("branch_node")
        batch.drop_column("origin")
        batch.drop_column("parent_id")
