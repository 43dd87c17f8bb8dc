"""Content-addressed blobs (full LLM requests and responses, large outputs) and their references;
session tags; candidate steps of an ambiguously attributed file.

Revision ID: 0003_blobs
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_blobs"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "blob_refs",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("first_seq", sa.Integer, nullable=False),
    )
    op.create_index("ix_blob_refs_sha256", "blob_refs", ["sha256"])
    with op.batch_alter_table("sessions") as b:
        b.add_column(sa.Column("tags", sa.Text))
    with op.batch_alter_table("files") as b:
        b.add_column(sa.Column("candidates", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("files") as b:
        b.drop_column("candidates")
    with op.batch_alter_table("sessions") as b:
        b.drop_column("tags")
    op.drop_index("ix_blob_refs_sha256", "blob_refs")
    op.drop_table("blob_refs")
    op.drop_table("blobs")
