"""Skills: reusable patterns extracted from successful sessions, versioned.

Revision ID: 0004_skills
Revises: 0003_blobs
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_skills"
down_revision = "0003_blobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skills",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("origin_session", sa.String(32)),
        sa.Column("workflow", sa.String(300), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("skills")
