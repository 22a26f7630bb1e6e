"""Alembic environment: the URL comes from the caller or from DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from webhook.core.settings import Settings
from webhook.db.engine import make_engine
from webhook.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table and renames the copy into place; SQLite's modern
        # RENAME re-checks every view and fails while the old table is gone. The legacy
        # RENAME leaves views alone, and they bind to the new table by name.
        connection.exec_driver_sql("PRAGMA legacy_alter_table=ON")
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if sqlite:
            connection.exec_driver_sql("PRAGMA legacy_alter_table=OFF")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
