"""PostgreSQL batch writer: callbacks that arrive together share one round trip and commit.

webhook.fastpath makes each callback one statement. Sent alone, every statement is its
own transaction: a pool checkout, a round trip, a commit and its WAL flush per callback,
and the benchmark shows that per-statement work, in the workers and in the server, is a
large part of what a callback costs. So the threads of a process hand their statements
to whichever of them is writing. The writer sends all that are waiting, in one psycopg
pipeline on one connection, between BEGIN and COMMIT (fastpath.execute_batch), and only
after the COMMIT has come back does any of those threads answer. A writer with nothing
else queued sends its own statement alone, as before; the callbacks arriving meanwhile
queue for the next batch, so batches form exactly when callbacks arrive faster than
one round trip.

What is written does not change. The statements are the single-callback ones, run one
after the other in one transaction, so each sees the rows of those before it: a body
sent twice in one batch is stored once, two reports of one message merge as they would
one by one. The writer sorts them by message id and digest first, so that batches of
different processes take their row locks in the same order and do not deadlock; the
callbacks of one batch were all in flight at the same time, so any order is one they
could have arrived in.

If the batch fails, none of it was committed, and every thread runs its own statement
alone, exactly as without batching: a row the database refuses fails only its own
callback, and an outage gives each request its own 503 within its own deadline.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from webhook import fastpath

# Most statements one batch sends (a process has one thread per request in flight).
MAX_BATCH = 32


@dataclass(eq=False, slots=True)
class _Item:
    sql: str
    params: list[Any]
    key: tuple[str, str]
    result: int | None = None
    alone: bool = False  # the batch failed: run the statement alone
    error: BaseException | None = None
    done: bool = False
    # Set when the statement is done, or when its thread is to write the next batch.
    wake: threading.Event = field(default_factory=threading.Event)


class BatchWriter:
    """Sends the one statements of concurrent callbacks of a process in shared batches.

    One thread writes at a time. A thread that arrives while another writes queues its
    statement and sleeps on its own event; the writer wakes each thread of its batch
    after the commit, then hands the writing to the first thread queued meanwhile,
    which takes everything queued by then (as groupcommit.GroupCommit does for SQLite).
    """

    def __init__(self, engine: Engine, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Item] = []
        self._writing = False
        # For tests and curiosity: batches of two or more committed, statements in them.
        self.batches = 0
        self.batched = 0

    @property
    def queued(self) -> int:
        """Statements waiting for the next batch."""
        with self._lock:
            return len(self._queue)

    def run(self, sql: str, params: list[Any], key: tuple[str, str]) -> int | None:
        """Run one bound fastpath statement, committed before this returns; its event id.

        ``key`` orders statements inside a batch: (message id, body digest).
        Raises what fastpath.execute raises when the statement runs alone.
        """
        item = _Item(sql, params, key)
        with self._lock:
            self._queue.append(item)
            writer = not self._writing
            self._writing = True
        if not writer:
            item.wake.wait()
        if not item.done:  # this thread writes the next batch, its own statement first
            with self._lock:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                self._write(batch)
            finally:
                with self._lock:
                    if self._queue:
                        self._queue[0].wake.set()
                    else:
                        self._writing = False
        if item.error is not None:
            raise item.error
        if item.alone:
            return fastpath.execute(self.engine, item.sql, item.params)
        return item.result

    def _write(self, batch: list[_Item]) -> None:
        try:
            if len(batch) == 1:
                # The writer's own statement (it is always first in the queue), sent alone
                # while the next callbacks queue behind it.
                try:
                    batch[0].result = fastpath.execute(self.engine, batch[0].sql, batch[0].params)
                except Exception as err:
                    batch[0].error = err
                return
            ordered = sorted(batch, key=lambda item: item.key)
            try:
                ids = fastpath.execute_batch(
                    self.engine, [(item.sql, item.params) for item in ordered]
                )
            except Exception:
                # Nothing was committed: each statement runs again on its own.
                for item in batch:
                    item.alone = True
                return
            for item, event_id in zip(ordered, ids, strict=True):
                item.result = event_id
            self.batches += 1
            self.batched += len(batch)
        except BaseException as err:  # never leave a thread waiting
            for item in batch:
                item.error = err
            raise
        finally:
            for item in batch:
                item.done = True
                item.wake.set()


_writers: weakref.WeakKeyDictionary[Engine, BatchWriter] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def batch_writer(engine: Engine) -> BatchWriter:
    """The BatchWriter of ``engine`` in this process."""
    with _writers_lock:
        found = _writers.get(engine)
        if found is None:
            found = _writers[engine] = BatchWriter(engine)
        return found
