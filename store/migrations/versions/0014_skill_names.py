"""``skill_names``: the last version number each skill name was given, kept when its versions are deleted. A skill
saved again after `labd skills rm` started again at version 1, so ``NAME@1`` named another skill than the one the
sessions recording ``{name, version: 1}`` ran (skills review). Filled from the versions stored now and from the
versions sessions ran (their ``session.created`` names the skill: a name whose versions were all deleted before this
migration goes on from the last one a session recorded).

Revision ID: 0014_skill_names
Revises: 0013_files_path_b64
"""

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0014_skill_names"
down_revision = "0013_files_path_b64"
branch_labels = None
depends_on = None

#: session.created events read per query
BATCH = 2000


def upgrade() -> None:
    op.create_table(
        "skill_names",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("last_version", sa.Integer, nullable=False),
    )
    conn = op.get_bind()
    last: dict[str, int] = {name: int(v) for name, v in
                            conn.execute(sa.text("SELECT name, MAX(version) FROM skills GROUP BY name"))}
    events = sa.table("events", sa.column("session_id", sa.String), sa.column("seq", sa.Integer),
                      sa.column("kind", sa.String), sa.column("payload", sa.Text))
    q = (sa.select(events.c.session_id, events.c.seq, events.c.payload)
         .where(events.c.kind == "session.created", events.c.payload.like('%"skill":%'))
         .order_by(events.c.session_id, events.c.seq).limit(BATCH))
    after: tuple[str, int] | None = None
    while True:  # keyset paging: a large store is never held at once
        page = q if after is None else q.where(sa.or_(
            events.c.session_id > after[0], sa.and_(events.c.session_id == after[0], events.c.seq > after[1])))
        rows = conn.execute(page).all()
        if not rows:
            break
        for _sid, _seq, payload in rows:
            name, version = _skill_of(payload)
            if name is not None:
                last[name] = max(last.get(name, 0), version)
        after = (rows[-1][0], rows[-1][1])
    if last:
        conn.execute(sa.text("INSERT INTO skill_names (name, last_version) VALUES (:n, :v)"),
                     [{"n": n, "v": v} for n, v in last.items()])


def _skill_of(payload: str | None) -> tuple[str | None, int]:
    """(name, version) of the skill a ``session.created`` payload says its session ran, or (None, 0)."""
    try:
        data: Any = orjson.loads(payload or "")
    except orjson.JSONDecodeError:
        return None, 0
    skill = data.get("skill") if isinstance(data, dict) else None
    if not isinstance(skill, dict) or not isinstance(skill.get("name"), str) or len(skill["name"]) > 100:
        return None, 0
    version = skill.get("version")
    return (skill["name"], version) if type(version) is int and 0 < version < 2**31 else (None, 0)


def downgrade() -> None:
    op.drop_table("skill_names")
