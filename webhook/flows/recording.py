"""Write flow_exchanges rows in the background, many per commit.

The data endpoint answers first and records afterwards: a row is handed to the
recorder and the request is done. One writer thread per process takes every row
waiting and inserts them in one transaction, so a burst costs one commit (one fsync)
instead of one per request, and a slow or unavailable database can neither slow down
nor fail an answer. The price: rows still waiting when the process dies are lost
(they are a log of exchanges, not the source of truth for any answer), and a row
becomes visible a few milliseconds after its answer was sent.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, insert

from webhook.core.errors import first_line
from webhook.core.logs import token_ref
from webhook.db.errors import UNAVAILABLE_ERRORS
from webhook.db.models import FlowExchange

log = logging.getLogger(__name__)

_recorders: weakref.WeakSet[ExchangeRecorder] = weakref.WeakSet()


class ExchangeRecorder:
    """A queue of flow_exchanges rows and the thread that writes them in batches."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = 500,
        max_pending: int = 20_000,
        idle_exit_seconds: float = 5.0,
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.idle_exit_seconds = idle_exit_seconds
        self.dropped = 0  # rows refused because the queue was full
        self.failed = 0  # rows lost because their insert failed
        self._reset()
        _recorders.add(self)

    def _reset(self) -> None:
        # Also called in a forked child: the parent's thread and lock do not exist there.
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: list[Mapping[str, Any]] = []
        self._writing = 0
        self._running = False

    def submit(self, row: Mapping[str, Any]) -> None:
        """Queue one row; never blocks on the database and never raises for it."""
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error("flow_exchanges queue full: %d rows dropped so far", self.dropped)
                return
            self._pending.append(row)
            if not self._running:
                self._running = True
                thread = threading.Thread(target=self._run, name="flow-exchanges", daemon=True)
                thread.start()
            self._cond.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued row is written (or given up); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._writing, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._cond.wait(self.idle_exit_seconds)
                if not self._pending:
                    # Idle: stop; the next submit starts a new thread.
                    self._running = False
                    self._cond.notify_all()
                    return
                batch = self._pending[: self.batch_size]
                del self._pending[: self.batch_size]
                self._writing = len(batch)
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._writing = 0
                    self._cond.notify_all()

    def _write(self, batch: list[Mapping[str, Any]]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(FlowExchange), [dict(row) for row in batch])
            return
        except UNAVAILABLE_ERRORS as err:
            self._give_up(batch, err)  # the database is away: do not hammer it row by row
            return
        except Exception as err:
            if len(batch) == 1:
                self._give_up(batch, err)
                return
        # One row the database refuses must not lose the rest of its batch.
        for row in batch:
            self._write([row])

    def _give_up(self, batch: list[Mapping[str, Any]], err: BaseException) -> None:
        self.failed += len(batch)
        tokens = ", ".join(sorted({token_ref(r.get("flow_token")) for r in batch})[:5])
        log.error(
            "could not record %d flow exchange(s) (tokens %s): %s",
            len(batch),
            tokens,
            first_line(err),
        )


@atexit.register
def flush_all(timeout: float = 5.0) -> None:
    """Wait for every recorder of this process to write what it holds."""
    for recorder in list(_recorders):
        if recorder._pid == os.getpid():
            recorder.flush(timeout)
