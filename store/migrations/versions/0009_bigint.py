"""64-bit sequence numbers and byte counts on PostgreSQL.

PostgreSQL's ``integer`` is 32 bits (SQLite's is 64): a file over 2 GiB (``files.size``), a session over 2 GiB of
memory (``sessions.peak_rss``), a blob over 2 GiB, or a session past 2^31 events (``seq``: a few days at tens of
thousands of events a second) made the store refuse the event (``event.rejected``, DataError), so it was not
recorded. These columns become ``bigint`` there. SQLite needs nothing (its INTEGER is already 64-bit, whatever the
declared type), so a SQLite store is not rebuilt.

On PostgreSQL the change rewrites the tables concerned (``events`` the largest), once, when the daemon that brings
this migration starts.

Revision ID: 0009_bigint
Revises: 0008_files_restored
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_bigint"
down_revision = "0008_files_restored"
branch_labels = None
depends_on = None

#: table -> its columns that hold a sequence number or a byte count
COLUMNS = {
    "sessions": ("last_seq", "runner_seq", "peak_rss", "rejected_events"),
    "events": ("seq", "src_seq", "parent"),
    "steps": ("start_seq",),
    "state_history": ("seq",),
    "cost_records": ("seq",),
    "files": ("seq", "size"),
    "blobs": ("size",),
    "blob_refs": ("first_seq",),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.BigInteger, existing_type=sa.Integer)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.Integer, existing_type=sa.BigInteger)
