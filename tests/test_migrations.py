"""Migrations: empty -> head -> base on both databases, and no drift from the models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, exc, inspect, text

from webhook.db import migrate
from webhook.db.engine import make_engine, sqlite_file_missing
from webhook.db.models import Base


def alembic_current(engine: Engine) -> str | None:
    if sqlite_file_missing(engine):  # nothing is created before the first upgrade
        return None
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def outcome(fn: Callable[[], str | None]) -> tuple[str, str | None]:
    """What a call returns, or the error it raises."""
    try:
        return "returned", fn()
    except Exception as err:
        return f"raised {type(err).__name__}", str(err)


def test_upgrade_check_downgrade(backend: str, new_database_url: Callable[[str], str]) -> None:
    engine = make_engine(new_database_url(backend))
    try:
        assert migrate.current_revision(engine) is None  # no version table yet
        assert alembic_current(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert alembic_current(engine) == migrate.head_revision()
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        migrate.check(engine)  # raises if models and migrations differ
        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None  # an empty version table
        assert alembic_current(engine) is None
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
    from webhook.core.settings import Settings

    nowhere = "postgresql+psycopg://127.0.0.1:1/none"
    app = create_app(Settings().with_overrides(database_url=nowhere))
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: upgrade failed: database unavailable")
    assert "Traceback" not in result.output


def test_head_revision_is_alembics() -> None:
    alembic_head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert alembic_head is not None
    assert migrate.head_revision() == alembic_head
    # Read from the scripts' text, without falling back to Alembic.
    assert migrate._head_from_script_text(migrate.MIGRATIONS_DIR / "versions") == alembic_head


SCRIPT = """revision{annotation} = {revision}
down_revision{annotation} = {down}


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
"""

# name -> (revision, down_revision) source text of each script.
SCRIPT_SETS: dict[str, list[tuple[str, str]]] = {
    "empty": [],
    "linear": [('"a"', "None"), ('"b"', '"a"'), ('"c"', '"b"')],
    "merged": [('"a"', "None"), ('"b"', '"a"'), ('"c"', '"a"'), ('"d"', '("b", "c")')],
    "two heads": [('"a"', "None"), ('"b"', '"a"'), ('"c"', '"a"')],
    "computed": [('"a"', "None"), ('"b" + "c"', '"a"')],
    "missing down revision": [('"a"', "None"), ('"b"', '"x"')],
}


@pytest.mark.parametrize("name", SCRIPT_SETS)
@pytest.mark.filterwarnings("ignore:Revision x referenced:UserWarning")
def test_head_revision_matches_alembic_on_other_histories(name: str, tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    for i, (revision, down) in enumerate(SCRIPT_SETS[name]):
        annotation = ": str" if i % 2 else ""
        text_ = SCRIPT.format(revision=revision, down=down, annotation=annotation)
        (versions / f"{i:04d}_script.py").write_text(text_)
    expected = outcome(lambda: ScriptDirectory(str(tmp_path)).get_current_head())
    assert outcome(lambda: migrate.head_revision(tmp_path)) == expected


def test_current_revision_with_several_rows_raises_like_alembic(
    backend: str, new_database_url: Callable[[str], str]
) -> None:
    engine = make_engine(new_database_url(backend))
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('other')"))
        expected = outcome(lambda: alembic_current(engine))
        assert expected[0] == "raised CommandError"
        assert outcome(lambda: migrate.current_revision(engine)) == expected
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_current_revision_unreachable_database_raises_operational_error(
    database: str, tmp_path: Path
) -> None:
    # No server on port 1; a directory where the SQLite file should be.
    url = (
        "postgresql+psycopg://127.0.0.1:1/none"
        if database == "postgresql"
        else f"sqlite:///{tmp_path}"
    )
    engine = make_engine(url)
    try:
        with pytest.raises(exc.OperationalError):
            alembic_current(engine)
        with pytest.raises(exc.OperationalError):
            migrate.current_revision(engine)
    finally:
        engine.dispose()


def test_pending_status_revision_on_a_database_with_events(
    backend: str, new_database_url: Callable[[str], str]
) -> None:
    """0004 on a store that already holds events: statuses kept, the new value allowed,
    unknown ones refused; a downgrade turns what is pending into failed, losing nothing."""
    engine = make_engine(new_database_url(backend))
    insert = text(
        "INSERT INTO callback_events (body, body_sha256, received_at, trigger, status) "
        "VALUES (:body, :sha, :at, 'MESSAGE_DELIVERY', :status)"
    )
    at = "2026-03-01 10:00:00"
    try:
        migrate.upgrade(engine, "0003_reporting")
        with engine.begin() as conn:
            for i, status in enumerate(("processed", "failed", "ignored")):
                conn.execute(insert, {"body": b"{}", "sha": f"{i:064d}", "at": at,
                                      "status": status})  # fmt: skip
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(insert, {"body": b"{}", "sha": "9" * 64, "at": at, "status": "pending"})
            kept = conn.execute(text("SELECT status FROM callback_events ORDER BY id")).scalars()
            assert list(kept) == ["processed", "failed", "ignored", "pending"]
        with pytest.raises(exc.IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"body": b"{}", "sha": "8" * 64, "at": at, "status": "done"})
        index_names = {ix["name"] for ix in inspect(engine).get_indexes("callback_events")}
        assert "ix_callback_events_pending" in index_names
        migrate.downgrade(engine, "0003_reporting")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT status, error FROM callback_events ORDER BY id"))
            assert [tuple(r) for r in rows][-1] == (
                "failed",
                "pending when the schema was downgraded: reprocess it",
            )
    finally:
        engine.dispose()
