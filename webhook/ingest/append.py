"""The append path: store a verified callback byte-exact as a ``pending`` event.

This is all the request does before answering 200: one row in callback_events with
the body, its SHA-256 (unique: a duplicate body changes nothing), the signature
headers, the receive time and the trigger. The projector (webhook.projection.projector) folds
it into the typed tables afterwards.

The threads of a process that append at the same time share one statement and one
commit (group commit): the first to arrive writes everything queued by then as one
multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING, the others sleep until that
commit is back, and nobody answers before the commit that holds its event. On
PostgreSQL the statement runs in autocommit mode: one round trip per batch. On SQLite
the batch holds the write lock (db.write_lock) for one short transaction.

A batch the database refuses (not an outage) is written again one event at a time,
and an event refused alone is stored bare (no headers): nothing authentic is lost.
A database that cannot be written raises StorageUnavailable, answered 503.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, exc

from webhook.db.deadline import deadline_passed
from webhook.db.engine import PerEngine, upsert_insert, write_lock
from webhook.db.errors import UNAVAILABLE_ERRORS, is_schema_missing, unavailable
from webhook.db.events import PENDING
from webhook.db.models import CallbackEvent
from webhook.ingest.parsers import detect_trigger

STORED, DUPLICATE = "stored", "duplicate"
# Most events one statement carries (a process has one thread per request in flight).
MAX_BATCH = 64


@dataclass(frozen=True, slots=True)
class AppendResult:
    outcome: str  # STORED or DUPLICATE
    event_id: int | None
    trigger: str
    status: str | None  # PENDING for a new event; None for a duplicate


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def append(
    engine: Engine,
    body: bytes,
    payload: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    received_at: datetime | None = None,
) -> AppendResult:
    """Store ``body`` (verified, parsed to the JSON object ``payload``) as pending.

    Returns once the event is committed (or found already stored).
    """
    trigger = detect_trigger(payload)
    row: dict[str, Any] = {
        "body": body,
        "body_sha256": body_digest(body),
        "headers": dict(headers) if headers else None,
        "received_at": received_at or datetime.now(UTC),
        "trigger": trigger,
        "status": PENDING,
    }
    event_id = _appender(engine).append(row)
    if event_id is None:
        return AppendResult(DUPLICATE, None, trigger, None)
    return AppendResult(STORED, event_id, trigger, PENDING)


# ---------------------------------------------------------------- group commit


@dataclass(eq=False)
class _Item:
    row: dict[str, Any]
    event_id: int | None = None
    error: BaseException | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class Appender:
    """One writer at a time among a process's threads; the others queue for its next batch.

    A thread that arrives while another writes queues its row and sleeps on its own
    event. The writer wakes each item of its batch once the batch is committed, then
    hands the writing to the first item queued meanwhile, whose thread takes
    everything queued by then (up to MAX_BATCH). Nobody polls, nobody is woken for
    nothing. Listeners run after every commit (the projector is woken there).
    """

    def __init__(self, engine: Engine, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._queue: list[_Item] = []
        self._writing = False
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def append(self, row: dict[str, Any]) -> int | None:
        """Store one row; its event id, or None if the digest was already stored."""
        item = _Item(row)
        with self._lock:
            self._queue.append(item)
            writer = not self._writing
            self._writing = True
        if not writer:
            item.wake.wait()
        if not item.done:  # this thread writes the next batch, its own item first
            with self._lock:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                self._write_all(batch)
            finally:
                with self._lock:
                    if self._queue:
                        self._queue[0].wake.set()
                    else:
                        self._writing = False
        if item.error is not None:
            raise item.error
        return item.event_id

    def _write_all(self, batch: list[_Item]) -> None:
        try:
            self._write(batch)
        except BaseException as err:  # never leave a thread waiting, nor without an answer
            for item in batch:
                item.error = err
        finally:
            for item in batch:
                item.done = True
                item.wake.set()
        for listener in self.listeners:
            listener()

    def _write(self, batch: list[_Item]) -> None:
        try:
            self._once_more_if_dead(lambda: self._insert([item.row for item in batch], batch))
            return
        except UNAVAILABLE_ERRORS as err:
            raise unavailable(err) from err
        except Exception as err:  # a row the database refuses: each alone, refused ones bare
            if is_schema_missing(err):  # not migrated: no row can be stored
                raise unavailable(err) from err
        for item in batch:
            try:
                try:
                    self._insert([item.row], [item])
                except UNAVAILABLE_ERRORS:
                    raise
                except Exception:
                    self._insert([{**item.row, "headers": None}], [item])
            except UNAVAILABLE_ERRORS as err:
                raise unavailable(err) from err

    def _insert(self, rows: list[dict[str, Any]], items: list[_Item]) -> None:
        """One INSERT of every new digest among ``rows``, committed; ids onto ``items``."""
        unique: dict[str, dict[str, Any]] = {}
        for row in rows:
            unique.setdefault(row["body_sha256"], row)
        if self.engine.dialect.name == "sqlite":
            with write_lock(self.engine), self.engine.begin() as conn:
                ids = self._run(conn, list(unique.values()))
        else:
            with self._autocommit.connect() as conn:
                ids = self._run(conn, list(unique.values()))
        claimed: set[str] = set()
        for item in items:
            digest = item.row["body_sha256"]
            # The first item with a new digest stored it; any other copy is a duplicate.
            item.event_id = ids.get(digest) if digest not in claimed else None
            claimed.add(digest)

    @staticmethod
    def _run(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
        result = conn.execute(_statement(conn.dialect.name), rows)
        return {digest: event_id for event_id, digest in result}

    @staticmethod
    def _once_more_if_dead(attempt: Callable[[], None]) -> None:
        """Run ``attempt``; again once if it met a pooled connection the server had closed.

        The pool pings only connections idle for a while (db.make_engine), so after a
        database restart one in steady use can still be dead; the pool drops it, and as
        nothing was committed on it, the same work is done again on a fresh connection.
        """
        try:
            attempt()
            return
        except exc.DBAPIError as err:
            if not err.connection_invalidated or deadline_passed():
                raise
        attempt()


_STATEMENTS: dict[str, Any] = {}


def _statement(dialect: str) -> Any:
    found = _STATEMENTS.get(dialect)
    if found is None:
        t = CallbackEvent.__table__
        found = _STATEMENTS[dialect] = (
            upsert_insert(dialect, t)
            .on_conflict_do_nothing(index_elements=["body_sha256"])
            .returning(t.c.id, t.c.body_sha256)
        )
    return found


_appender: PerEngine[Appender] = PerEngine(Appender)


def on_append(engine: Engine, listener: Callable[[], None]) -> None:
    """Call ``listener`` after every committed append batch on ``engine`` in this process."""
    _appender(engine).listeners.append(listener)
