"""``files.path_b64``: a file name that is not UTF-8, its exact bytes (standard base64, as its event's ``path_b64``).
The files table kept only the display form (each undecodable byte written ``\\xNN``), which a file literally named
so shares: `session.files` marked the wrong row current, and the dashboard and the MCP server could not serve the
real file (they opened the literal name instead, when there was one). The column is filled for the rows recorded
before from their events: only a row whose display path has a backslash can be such a name, and their payloads are
read in batches (parsed here, the same on SQLite and PostgreSQL), so a large store is never held in memory at once.

Revision ID: 0013_files_path_b64
Revises: 0012_cost_sums
"""

import base64
import binascii
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0013_files_path_b64"
down_revision = "0012_cost_sums"
branch_labels = None
depends_on = None

#: files rows read (with their events' payloads) per query
BATCH = 2000

_KINDS = ("file.created", "file.changed", "file.deleted")


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("path_b64", sa.Text))
    conn = op.get_bind()
    files = sa.table("files", sa.column("session_id", sa.String), sa.column("seq", sa.Integer),
                     sa.column("path", sa.Text), sa.column("path_b64", sa.Text))
    events = sa.table("events", sa.column("session_id", sa.String), sa.column("seq", sa.Integer),
                      sa.column("kind", sa.String), sa.column("payload", sa.Text))
    # the files rows whose display path has a backslash (every \xNN has one), in key order, each with its event's
    # payload; keyset paging on (session_id, seq). LIKE's escape character is given: `\` is its default on neither.
    q = (sa.select(files.c.session_id, files.c.seq, events.c.payload)
         .join(events, sa.and_(events.c.session_id == files.c.session_id, events.c.seq == files.c.seq))
         .where(files.c.path.like("%!\\%", escape="!"), events.c.kind.in_(_KINDS))
         .order_by(files.c.session_id, files.c.seq).limit(BATCH))
    fill = sa.update(files).where(files.c.session_id == sa.bindparam("sid"), files.c.seq == sa.bindparam("n")) \
        .values(path_b64=sa.bindparam("b64"))
    after: tuple[str, int] | None = None
    while True:
        page = q if after is None else q.where(sa.or_(
            files.c.session_id > after[0], sa.and_(files.c.session_id == after[0], files.c.seq > after[1])))
        rows = conn.execute(page).all()
        if not rows:
            break
        named = [{"sid": sid, "n": seq, "b64": b64} for sid, seq, payload in rows
                 if (b64 := _path_b64(payload)) is not None]
        if named:
            conn.execute(fill, named)
        after = (rows[-1][0], rows[-1][1])


def _path_b64(payload: str | None) -> str | None:
    """The event's ``path_b64`` when it is the base64 of some bytes (anything else: not such a name)."""
    try:
        data: Any = orjson.loads(payload or "")
    except orjson.JSONDecodeError:
        return None
    b64 = data.get("path_b64") if isinstance(data, dict) else None
    if not isinstance(b64, str) or not b64:
        return None
    try:
        base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return b64


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("path_b64")
