"""The durable record: SQLAlchemy tables, migrations, the batch writer behind ingest, and queries."""

from labd.store.db import migrate, open_engine
from labd.store.queries import Store

__all__ = ["open_engine", "migrate", "Store"]
