"""Unbounded text for the labels a workflow chooses, on PostgreSQL.

PostgreSQL enforces ``VARCHAR(n)`` (SQLite ignores the length), so on PostgreSQL the store refused (``event.rejected``,
DataError) an event whose label was longer than its column, and the fact was missing from the record: a step name
of 201-1000 characters (the runner keeps up to ``MAX_STEP_NAME``, 1000), an agent, model or tool name over 100 or
200, a step's status or kind, a session's outcome, a file's kind, the actor of a transition (a client's ``by`` is up
to 100 characters; the column was 40) and an approval's decision (up to 40, ``APPROVAL_OPTION_MAX``; the column was
20, so answering with a longer option failed in the daemon). None of these is a key or indexed, and the events that
carry them are stored whole anyway, so these columns become ``text`` (PostgreSQL stores it as it stores varchar).
Node ids stay ``VARCHAR(64)`` (they are keys): ingest refuses a longer one with a clear reason (labd.ipc.events).
SQLite needs nothing (it never enforced the lengths), so a SQLite store is not rebuilt.

Revision ID: 0010_text_labels
Revises: 0009_bigint
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_text_labels"
down_revision = "0009_bigint"
branch_labels = None
depends_on = None

#: table -> {column: its former length}
COLUMNS = {
    "sessions": {"outcome": 20},
    "steps": {"name": 200, "status": 20, "kind": 20, "agent": 100},
    "state_history": {"to_status": 20, "actor": 40},
    "dag_edges": {"type": 20},
    "cost_records": {"agent": 100, "model": 200},
    "files": {"kind": 20, "agent": 100, "tool": 100},
    "approvals": {"decision": 20},
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column, length in columns.items():
            op.alter_column(table, column, type_=sa.Text, existing_type=sa.String(length))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column, length in columns.items():
            op.alter_column(table, column, type_=sa.String(length), existing_type=sa.Text)
