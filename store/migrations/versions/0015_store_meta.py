"""``store_meta``: which home a store is the record of, and how many sessions it ever recorded. A second home given
the same database took over the first home's runners (they kept talking to the first home's socket, their output
lost), and a store restored from a backup made the daemon remove the directories of sessions started since and kill
their runners, taking them for deleted ones (admin review). ``sessions_created`` starts at the sessions stored now.

Revision ID: 0015_store_meta
Revises: 0014_skill_names
"""

import sqlalchemy as sa
from alembic import op

revision = "0015_store_meta"
down_revision = "0014_skill_names"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_meta",
        sa.Column("key", sa.String(40), primary_key=True),
        sa.Column("value", sa.Text, nullable=True),
        sa.Column("n", sa.BigInteger, nullable=True),
    )
    conn = op.get_bind()
    count = conn.execute(sa.text("SELECT COUNT(*) FROM sessions")).scalar() or 0
    conn.execute(sa.text("INSERT INTO store_meta (key, n) VALUES ('sessions_created', :n)"), {"n": int(count)})


def downgrade() -> None:
    op.drop_table("store_meta")
