"""Migrations: empty -> head -> base on both databases, and no drift from the models."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import inspect

from webhook import migrate
from webhook.db import make_engine
from webhook.models import Base


def test_upgrade_check_downgrade(backend: str, new_database_url: Callable[[str], str]) -> None:
    engine = make_engine(new_database_url(backend))
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        migrate.check(engine)  # raises if models and migrations differ
        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(engine)  # and back up again
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_flask_db_commands(runner_on_empty: Callable[[], object]) -> None:
    runner = runner_on_empty()
    result = runner.invoke(args=["db", "current"])  # type: ignore[attr-defined]
    assert result.exit_code == 0 and "empty" in result.output
    result = runner.invoke(args=["db", "upgrade"])  # type: ignore[attr-defined]
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["db", "check"])  # type: ignore[attr-defined]
    assert result.exit_code == 0 and "no drift" in result.output
    result = runner.invoke(args=["db", "downgrade", "base"])  # type: ignore[attr-defined]
    assert result.exit_code == 0 and "database at None" in result.output


def test_flask_db_upgrade_unreachable_database_is_one_line() -> None:
    from webhook import create_app
    from webhook.config import Settings

    app = create_app(Settings(database_url="postgresql+psycopg://127.0.0.1:1/none"))
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: upgrade failed: database unavailable")
    assert "Traceback" not in result.output
