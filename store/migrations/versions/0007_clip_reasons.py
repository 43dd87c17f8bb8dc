"""Cut the free texts of session rows recorded before they were bounded: a session's ``reason`` and
``outcome_error`` and its state history's ``reason`` beyond 10,000 characters (``store.projections.MAX_REASON``),
as ingest now cuts them. A failure with megabytes of text in its reason made every session.list too large.
The events keep the whole texts; nothing else changes.

Revision ID: 0007_clip_reasons
Revises: 0006_lineage
"""

import sqlalchemy as sa
from alembic import op

from labd.runner.context import clip
from labd.store.projections import MAX_REASON

revision = "0007_clip_reasons"
down_revision = "0006_lineage"
branch_labels = None
depends_on = None

_TEXTS = (("sessions", ("id",), "reason"), ("sessions", ("id",), "outcome_error"),
          ("state_history", ("session_id", "seq"), "reason"))


def upgrade() -> None:
    conn = op.get_bind()
    for table, keys, column in _TEXTS:
        t = sa.table(table, *(sa.column(k) for k in keys), sa.column(column, sa.Text))
        col = t.c[column]
        rows = conn.execute(sa.select(*(t.c[k] for k in keys), col).where(sa.func.length(col) > MAX_REASON)).all()
        for row in rows:
            match = sa.and_(*(t.c[k] == row[i] for i, k in enumerate(keys)))
            conn.execute(sa.update(t).where(match).values({column: clip(row[-1], MAX_REASON)}))


def downgrade() -> None:
    pass  # the cut texts are not kept (the events have them)
