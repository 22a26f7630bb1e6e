"""SQLITE_SYNCHRONOUS: FULL by default (a 200 survives power loss), NORMAL on request."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text

from webhook.core.settings import ConfigError, Settings
from webhook.db.engine import create_sqlite_file, make_engine


def test_setting_defaults_to_full_and_refuses_other_values() -> None:
    assert Settings.from_env({}).database.sqlite_synchronous == "FULL"
    assert (
        Settings.from_env({"SQLITE_SYNCHRONOUS": "normal"}).database.sqlite_synchronous == "NORMAL"
    )
    with pytest.raises(ConfigError, match="SQLITE_SYNCHRONOUS"):
        Settings.from_env({"SQLITE_SYNCHRONOUS": "OFF"})
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        make_engine("sqlite:///:memory:", sqlite_synchronous="OFF")


@pytest.mark.parametrize(("setting", "pragma"), [("FULL", 2), ("NORMAL", 1)])
def test_connections_use_the_setting(
    new_database_url: Callable[[str], str], setting: str, pragma: int
) -> None:
    engine = make_engine(new_database_url("sqlite"), sqlite_synchronous=setting)
    create_sqlite_file(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA synchronous")).scalar_one() == pragma
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    engine.dispose()
