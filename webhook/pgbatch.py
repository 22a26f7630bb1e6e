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

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from webhook import fastpath
from webhook.handoff import Handoff, PerEngine, Waiting

# Most statements one batch sends (a process has one thread per request in flight).
MAX_BATCH = 32


@dataclass(eq=False)
class _Item(Waiting):
    sql: str
    params: list[Any]
    key: tuple[str, str]
    result: int | None = None
    alone: bool = False  # the batch failed: run the statement alone


class BatchWriter(Handoff[_Item]):
    """Sends the one statements of concurrent callbacks of a process in shared batches.

    Threads take turns as in webhook.handoff (as groupcommit.GroupCommit does for
    SQLite): the writer sends every queued statement in one pipeline and transaction,
    then each thread of the batch answers.
    """

    def __init__(self, engine: Engine, max_batch: int = MAX_BATCH) -> None:
        super().__init__()
        self.engine = engine
        self.max_batch = max_batch
        # For tests and curiosity: batches of two or more committed, statements in them.
        self.batches = 0
        self.batched = 0

    def run(self, sql: str, params: list[Any], key: tuple[str, str]) -> int | None:
        """Run one bound fastpath statement, committed before this returns; its event id.

        ``key`` orders statements inside a batch: (message id, body digest).
        Raises what fastpath.execute raises when the statement runs alone.
        """
        item = _Item(sql, params, key)
        self._submit(item)
        if item.alone:
            return fastpath.execute(self.engine, item.sql, item.params)
        return item.result

    def _write(self, batch: list[_Item]) -> None:
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
            ids = fastpath.execute_batch(self.engine, [(item.sql, item.params) for item in ordered])
        except Exception:
            # Nothing was committed: each statement runs again on its own.
            for item in batch:
                item.alone = True
            return
        for item, event_id in zip(ordered, ids, strict=True):
            item.result = event_id
        self.batches += 1
        self.batched += len(batch)


_writers: PerEngine[BatchWriter] = PerEngine()


def batch_writer(engine: Engine) -> BatchWriter:
    """The BatchWriter of ``engine`` in this process."""
    return _writers.get(engine, lambda: BatchWriter(engine))
