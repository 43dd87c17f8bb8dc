"""Agent tracking: DAG node columns and edges, costs, files, approvals, step-level state history.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as b:
        b.add_column(sa.Column("kind", sa.String(20), nullable=False, server_default="step"))
        b.add_column(sa.Column("parent_node", sa.String(64)))
        b.add_column(sa.Column("agent", sa.String(100)))
        b.add_column(sa.Column("attempt", sa.Integer))
        b.add_column(sa.Column("redo_of", sa.String(64)))
    with op.batch_alter_table("sessions") as b:
        b.add_column(sa.Column("cost", sa.Float, nullable=False, server_default="0"))
        b.add_column(sa.Column("outcome_error", sa.Text))
        b.add_column(sa.Column("stop_by", sa.String(40)))
        b.add_column(sa.Column("kill_reason", sa.Text))
    with op.batch_alter_table("state_history") as b:
        b.add_column(sa.Column("node_id", sa.String(64)))
    op.create_table(
        "dag_edges",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("src", sa.String(64), primary_key=True),
        sa.Column("dst", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(20), nullable=False),
    )
    op.create_table(
        "cost_records",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("node_id", sa.String(64)),
        sa.Column("agent", sa.String(100)),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("offline", sa.Boolean, nullable=False),
    )
    op.create_table(
        "files",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("change", sa.String(10), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("node_id", sa.String(64)),
        sa.Column("agent", sa.String(100)),
        sa.Column("tool", sa.String(100)),
        sa.Column("ts", sa.Float, nullable=False),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("node_id", sa.String(64)),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("policy", sa.String(20)),
        sa.Column("requested_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("decision", sa.String(20)),
        sa.Column("feedback", sa.Text),
        sa.Column("hypothesis", sa.Text),
        sa.Column("resolved_by", sa.String(100)),
        sa.Column("resolved_via", sa.String(20)),
        sa.Column("resolved_at", sa.Float),
    )
    op.create_index("ix_approvals_status", "approvals", ["status"])
    op.create_index("ix_approvals_session", "approvals", ["session_id"])


def downgrade() -> None:
    for table in ("approvals", "files", "cost_records", "dag_edges"):
        op.drop_table(table)
    with op.batch_alter_table("state_history") as b:
        b.drop_column("node_id")
    with op.batch_alter_table("sessions") as b:
        for col in ("kill_reason", "stop_by", "outcome_error", "cost"):
            b.drop_column(col)
    with op.batch_alter_table("steps") as b:
        for col in ("redo_of", "attempt", "agent", "parent_node", "kind"):
            b.drop_column(col)
