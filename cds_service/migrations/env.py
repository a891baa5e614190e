"""Alembic environment: migrations run by the service at start-up (Store.migrate) or by hand:
alembic -c cds_service/migrations/alembic.ini -x url=postgresql+psycopg://... upgrade head
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from cds_service.storage import metadata

config = context.config
target_metadata = metadata


def _run(connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several instances may start together: one migrates, the others wait for it.
        connection.execute(text("SELECT pg_advisory_xact_lock(727148)"))
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: give the database as -x url=... or sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as connection:
        _run(connection)
