"""``skill_names``: the last version number each skill name was given, kept when its versions are deleted. A skill
saved again after `labd skills rm` started again at version 1, so ``NAME@1`` named another skill than the one the
sessions recording ``{name, version: 1}`` ran (skills review). Filled from the versions stored now.

Revision ID: 0014_skill_names
Revises: 0013_files_path_b64
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_skill_names"
down_revision = "0013_files_path_b64"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skill_names",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("last_version", sa.Integer, nullable=False),
    )
    op.execute("INSERT INTO skill_names (name, last_version) SELECT name, MAX(version) FROM skills GROUP BY name")


def downgrade() -> None:
    op.drop_table("skill_names")
