"""Shared fixtures: every database test runs on SQLite and on a real PostgreSQL.

PostgreSQL: TEST_DATABASE_URL (default postgresql://127.0.0.1:5432/test) names a
server; each test session creates its own throwaway database there, so parallel
runs never collide. When the server cannot be reached the PostgreSQL cases are
skipped, unless REQUIRE_POSTGRES=1 (CI), which turns that into an error.
Each test starts from empty tables (truncated after every test).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from tests.helpers import SECRET
from webhook import create_app
from webhook.core.settings import Settings, normalize_database_url
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.db.models import Base
from webhook.projection.thread import stop_all

BACKENDS = ("sqlite", "postgresql")
DEFAULT_PG = "postgresql://127.0.0.1:5432/test"


def pg_admin_url() -> str:
    return normalize_database_url(os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG)


def _pg_reachable(url: str) -> str | None:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means "no PostgreSQL here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


class PostgresDatabases:
    """Creates throwaway databases on the test server and drops them at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def create(self, prefix: str = "wh") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    url = pg_admin_url()
    problem = _pg_reachable(url)
    if problem:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but unreachable at {url}: {problem}")
        pytest.skip(f"PostgreSQL unreachable ({problem}); set TEST_DATABASE_URL")
    dbs = PostgresDatabases(url)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def new_database_url(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[[str], str]:
    """Make an empty database on a backend and return its URL (not migrated)."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            path = tmp_path_factory.mktemp("sqlite") / f"{uuid.uuid4().hex[:8]}.db"
            return f"sqlite:///{path}"
        dbs: PostgresDatabases = request.getfixturevalue("pg_databases")
        return dbs.create()

    return make


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, new_database_url: Callable[[str], str]) -> str:
    """A database on this backend, migrated to head, shared by the session."""
    url = new_database_url(backend)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def truncate_all(engine: Engine) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture(autouse=True)
def _no_projector_outlives_its_test() -> Iterator[None]:
    """Apps made in a test start a projector thread; none keeps polling afterwards."""
    yield
    stop_all()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a migrated database whose tables are emptied after the test."""
    eng = make_engine(database_url)
    yield eng
    truncate_all(eng)
    eng.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings().with_overrides(database_url=database_url, sinch_webhook_secrets=(SECRET,))


@pytest.fixture
def app(settings: Settings, engine: Engine) -> Iterator[Flask]:
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    dispose(application)


@pytest.fixture
def make_app(engine: Engine) -> Iterator[Callable[..., Flask]]:
    """Build an app with settings overridden, each named after its environment variable
    in lower case, e.g. make_app(sinch_webhook_secrets=()) (Settings.with_overrides)."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        url = engine.url.render_as_string(hide_password=False)
        application = create_app(Settings().with_overrides(**{"database_url": url, **overrides}))
        application.config["TESTING"] = True
        apps.append(application)
        return application

    yield make
    for application in apps:
        dispose(application)


def dispose(application: Flask) -> None:
    """Stop the app's projector thread (if it runs) and close its connections."""
    found = application.extensions["webhook"]
    if found.projector is not None:
        found.projector.stop()
    found.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def runner_on_empty(backend: str, new_database_url: Callable[[str], str]) -> Iterator[Any]:
    """A CLI runner factory for an app on a fresh, unmigrated database."""
    apps: list[Flask] = []

    def make() -> FlaskCliRunner:
        settings = Settings().with_overrides(database_url=new_database_url(backend))
        application = create_app(settings)
        apps.append(application)
        return application.test_cli_runner()

    yield make
    for application in apps:
        dispose(application)
