"""What a session's current run has recorded against its bounds, kept with the session: ``sessions.record_bytes``
(``[daemon] max_session_record``: bytes of labd's own kinds a runner sent) and ``sessions.output_chars`` (the
output cap's backstop: characters of output, log records and custom events accepted). Both lived only in ingest's
memory, so a daemon restart started them again from zero: a session that wrote to its channel itself could record
its bound once more after every restart (daemon/recordcap.py, daemon/outputcap.py). Existing rows start at 0, as
the counts did before; an ended run keeps its counts (not loaded again), and a resume, a new run, sets them to 0.

Revision ID: 0011_record_counts
Revises: 0010_text_labels
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_record_counts"
down_revision = "0010_text_labels"
branch_labels = None
depends_on = None

COLUMNS = ("record_bytes", "output_chars")


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
