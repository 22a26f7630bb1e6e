"""Engine creation: SQLite pragmas, PostgreSQL pool settings, session factory.

On PostgreSQL every wait for the server can be bounded by a deadline (see
``set_deadline``): the web app sets one per request, so a server that accepts the
connection and then never answers (a network partition, a hung proxy) costs a
request its deadline and a 503, never a worker killed by gunicorn's timeout.
Connecting is bounded by ``connect_timeout``; idle pooled connections to a vanished
host are found by TCP keepalives, and unacknowledged sends by ``tcp_user_timeout``.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.pool import ConnectionPoolEntry

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


def sqlite_file_missing(engine: Engine) -> bool:
    """True for a SQLite engine whose database file does not exist (yet)."""
    path = make_url(str(engine.url)).database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        return False
    return not os.path.exists(path)


def create_sqlite_file(engine: Engine) -> None:
    """Create the SQLite file (and its folder) of ``engine`` if missing: migrations only."""
    path = make_url(str(engine.url)).database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    import sqlite3
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(path).close()


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


def make_engine(
    url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 16, **kwargs: Any
) -> Engine:
    """Create an engine tuned for this service on SQLite or PostgreSQL.

    ``pool_size`` (PostgreSQL) must cover the threads that use the engine at once:
    a connection past it is an overflow one, opened for one checkout and closed at
    checkin, i.e. a new server process per request.
    """
    if is_sqlite(url):
        if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"sqlite_synchronous must be one of {SQLITE_SYNCHRONOUS}")
        return _sqlite_engine(url, sqlite_synchronous, **kwargs)
    options: dict[str, Any] = {
        # Error messages (and so logs) never carry SQL parameters: bodies, numbers, answers.
        "hide_parameters": True,
        "pool_size": pool_size,
        "max_overflow": 5,
        "pool_timeout": 5,
        # Fail fast when the server is unreachable, so callers can answer 503.
        "connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **TCP_SETTINGS},
    }
    options.update(kwargs)
    engine = create_engine(url, **options)

    if engine.dialect.driver == "psycopg":
        from webhook.db.psycopg_conn import DeadlineConnection

        @event.listens_for(engine, "do_connect")
        def _connect(
            _dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any
        ) -> DeadlineConnection:
            return DeadlineConnection.connect(*cargs, **cparams)

    if "pool_pre_ping" not in kwargs:
        _ping_when_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


# A connection used less than this long ago is not pinged before reuse.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """pool_pre_ping, but only for connections idle for ``idle_seconds`` or more.

    A dead connection after a database restart is replaced, not reported: a restart
    leaves connections idle, and an idle one is pinged (and replaced if dead) before
    use. A connection in steady use is not: pinging it would be one more round trip per
    callback, a third of the time on the hot path. ingest retries once on a connection
    that turns out dead anyway.
    """

    @event.listens_for(engine.pool, "connect")
    def _on_connect(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        record.info["used_at"] = time.monotonic()

    @event.listens_for(engine.pool, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        record.info["used_at"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _on_checkout(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        used_at = record.info.get("used_at")
        if used_at is not None and time.monotonic() - used_at < idle_seconds:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as err:
            raise exc.DisconnectionError(str(err)) from err
        if not alive:
            raise exc.DisconnectionError("connection failed the ping")


def _sqlite_engine(url: str, synchronous: str, **kwargs: Any) -> Engine:
    path = make_url(url).database
    options: dict[str, Any] = {
        "hide_parameters": True,  # see make_engine
        "connect_args": {"timeout": 30, "check_same_thread": False},
    }
    options.update(kwargs)
    engine = create_engine(url, **options)

    if path and path != ":memory:" and not path.startswith("file:"):

        @event.listens_for(engine, "do_connect")
        def _existing_file_only(
            _dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any
        ) -> None:
            # Opening never creates the file: a command pointed at a missing database
            # says so instead of leaving an empty one behind (create_sqlite_file does).
            cargs[0] = f"file:{quote(path)}?mode=rw"
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" hook issue BEGIN itself (see below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL (default): a commit that answered 200 survives power loss, not only a
        # process crash. NORMAL skips the fsync per commit: see README "SQLite durability".
        cur.execute(f"PRAGMA synchronous={synchronous}")
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


_lock_files = threading.local()


@contextmanager
def file_lock(engine: Engine, name: str) -> Iterator[None]:
    """On a SQLite file, hold an exclusive flock on ``<db>-<name>`` (PostgreSQL: no-op).

    Each thread opens its own descriptor (flock excludes descriptors, not processes),
    so the threads of a process and other processes queue alike, and a waiter is woken
    the moment the lock is released.
    """
    path = make_url(str(engine.url)).database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    fds: dict[str, int] = _lock_files.__dict__.setdefault("fds", {})
    lock_path = f"{path}-{name}"
    fd = fds.get(lock_path)
    if fd is None:
        fd = fds[lock_path] = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def write_lock(engine: Engine) -> AbstractContextManager[None]:
    """On a SQLite file, one writer at a time (``<db>-writelock``) around a write.

    SQLite lets one writer in at a time; the others wait in its busy handler, which
    polls with sleeps of up to 100 ms, so under concurrent callbacks most of the time is
    spent asleep with the lock free. An flock() waiter is woken at once instead.
    """
    return file_lock(engine, "writelock")


H = TypeVar("H")


class PerEngine(Generic[H]):
    """One object per engine in this process (the appender, the projector thread)."""

    def __init__(self, make: Callable[[Engine], H]) -> None:
        self._make = make
        self._found: weakref.WeakKeyDictionary[Engine, H] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, engine: Engine) -> H:
        with self._lock:
            found = self._found.get(engine)
            if found is None:
                found = self._found[engine] = self._make(engine)
            return found

    def all(self) -> list[H]:
        with self._lock:
            return list(self._found.values())


def upsert_insert(dialect: str, table: Any) -> Any:
    """An INSERT that supports ON CONFLICT on ``dialect`` (postgresql, else SQLite)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    # Imported here: a service on PostgreSQL never loads SQLite's dialect.
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)
