"""Engine creation: SQLite pragmas, PostgreSQL pool settings, session factory.

On PostgreSQL every wait for the server can be bounded by a deadline (see
``set_deadline``): the web app sets one per request, so a server that accepts the
connection and then never answers (a network partition, a hung proxy) costs a
request its deadline and a 503, never a worker killed by gunicorn's timeout.
Connecting is bounded by ``connect_timeout``; idle pooled connections to a vanished
host are found by TCP keepalives, and unacknowledged sends by ``tcp_user_timeout``.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

RV = TypeVar("RV")

CONNECT_TIMEOUT_SECONDS = 3
# libpq TCP settings: find a dead peer on an idle connection within ~60 s, and give up
# on a send the peer never acknowledges after 20 s (instead of ~15 minutes of retries).
TCP_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}

_deadline: ContextVar[float | None] = ContextVar("database_deadline", default=None)


def set_deadline(seconds: float | None) -> Token[float | None]:
    """Bound every PostgreSQL wait in this context to ``seconds`` from now (None: no bound)."""
    return _deadline.set(None if seconds is None else time.monotonic() + seconds)


def clear_deadline(token: Token[float | None] | None = None) -> None:
    """End the bound set by ``set_deadline``."""
    if token is not None:
        try:
            _deadline.reset(token)
            return
        except ValueError:  # set in another context (a copied one): just lift the bound
            pass
    _deadline.set(None)


class DeadlineTimeout(psycopg.OperationalError):
    """The server did not answer before the deadline; the connection was closed."""


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits for the server end at the context's deadline.

    A query cut short leaves the protocol mid-message, so the connection is closed:
    SQLAlchemy then sees a disconnect, drops it from the pool and connects afresh.
    """

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        deadline = _deadline.get()
        if deadline is None or timeout is not None:
            return super().wait(gen, interval=interval, timeout=timeout)
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            return super().wait(gen, interval=interval, timeout=remaining)
        except psycopg.OperationalError:
            if time.monotonic() < deadline:
                raise
            self.close()
            raise DeadlineTimeout(
                f"the database did not answer within the deadline ({remaining:.1f} s)"
            ) from None


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine tuned for this service on SQLite or PostgreSQL."""
    if is_sqlite(url):
        return _sqlite_engine(url, **kwargs)
    options: dict[str, Any] = {
        # Error messages (and so logs) never carry SQL parameters: bodies, numbers, answers.
        "hide_parameters": True,
        # A dead connection after a database restart is replaced, not reported.
        "pool_pre_ping": True,
        "pool_size": 5,
        "max_overflow": 5,
        "pool_timeout": 5,
        # Fail fast when the server is unreachable, so callers can answer 503.
        "connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **TCP_SETTINGS},
    }
    options.update(kwargs)
    engine = create_engine(url, **options)

    if engine.dialect.driver == "psycopg":

        @event.listens_for(engine, "do_connect")
        def _connect(
            _dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any
        ) -> DeadlineConnection:
            return DeadlineConnection.connect(*cargs, **cparams)

    return engine


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "hide_parameters": True,  # see make_engine
        "connect_args": {"timeout": 30, "check_same_thread": False},
    }
    options.update(kwargs)
    engine = create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" hook issue BEGIN itself (see below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit that answered 200 survives power loss, not only a process crash.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue
        # on busy_timeout instead of failing with "database is locked" on upgrade.
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
