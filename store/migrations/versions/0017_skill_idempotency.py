"""Idempotency keys on skills: ``skill.save`` and ``skill.import`` take an ``idempotency_key`` (the SDK sends one
and retries once with it when no reply comes in time), kept with the version it stored and the sha256 of the request,
so a retry after a lost reply gets that version instead of a second copy, and a key used again for another request
is refused (``idempotency_conflict``).

Revision ID: 0017_skill_idempotency
Revises: 0016_sessions_created_index
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_skill_idempotency"
down_revision = "0016_sessions_created_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("skills") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(200), nullable=True))
        batch.add_column(sa.Column("request_digest", sa.String(64), nullable=True))
    op.create_index("ix_skills_idempotency_key", "skills", ["idempotency_key"])


def downgrade() -> None:
    op.drop_index("ix_skills_idempotency_key", table_name="skills")
    with op.batch_alter_table("skills") as batch:
        batch.drop_column("request_digest")
        batch.drop_column("idempotency_key")
