"""``files.restored``: the row records a file a resume's or branch's restore of a checkpoint put in place (its event's
payload has ``restored: true``), not one a step wrote. Ingest dropped the flag, so `labd files` and the files API
showed such a file with no step and nothing saying why. The column is filled for the rows recorded before from
their events: only rows with no node can be restored ones, and their payloads are read in batches (the JSON is
parsed here, the same on SQLite and PostgreSQL), so a large store is never held in memory at once.

Revision ID: 0008_files_restored
Revises: 0007_clip_reasons
"""

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0008_files_restored"
down_revision = "0007_clip_reasons"
branch_labels = None
depends_on = None

#: files rows read (with their events' payloads) per query
BATCH = 2000

_KINDS = ("file.created", "file.changed", "file.deleted")


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("restored", sa.Boolean, nullable=False, server_default=sa.false()))
    conn = op.get_bind()
    files = sa.table("files", sa.column("session_id", sa.String), sa.column("seq", sa.Integer),
                     sa.column("node_id", sa.String), sa.column("restored", sa.Boolean))
    events = sa.table("events", sa.column("session_id", sa.String), sa.column("seq", sa.Integer),
                      sa.column("kind", sa.String), sa.column("payload", sa.Text))
    # the files rows with no node, in key order, each with its event's payload; keyset paging on (session_id, seq)
    q = (sa.select(files.c.session_id, files.c.seq, events.c.payload)
         .join(events, sa.and_(events.c.session_id == files.c.session_id, events.c.seq == files.c.seq))
         .where(files.c.node_id.is_(None), events.c.kind.in_(_KINDS))
         .order_by(files.c.session_id, files.c.seq).limit(BATCH))
    mark = sa.update(files).where(files.c.session_id == sa.bindparam("sid"), files.c.seq == sa.bindparam("n")) \
        .values(restored=True)
    after: tuple[str, int] | None = None
    while True:
        page = q if after is None else q.where(sa.or_(
            files.c.session_id > after[0], sa.and_(files.c.session_id == after[0], files.c.seq > after[1])))
        rows = conn.execute(page).all()
        if not rows:
            break
        restored = [{"sid": sid, "n": seq} for sid, seq, payload in rows if _restored(payload)]
        if restored:
            conn.execute(mark, restored)
        after = (rows[-1][0], rows[-1][1])


def _restored(payload: str | None) -> bool:
    try:
        data: Any = orjson.loads(payload or "")
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("restored") is True


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("restored")
