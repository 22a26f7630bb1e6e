"""SQLite group commit: callbacks that arrive together share one transaction and one fsync.

SQLite has one writer at a time and, with synchronous=FULL, an fsync per commit: one
commit per callback caps a file on this disk at a few hundred callbacks a second
whatever the CPU. So the threads of a process hand their callbacks to whichever of
them is writing: it runs each callback in its own SAVEPOINT (insert the event, project
it; a projection that fails rolls back to the savepoint and the event is stored alone
as ``failed``, exactly as ingest does in its own transaction), commits once for all
of them, and only then does each thread answer. Every 200 still follows the durable
commit that holds its event; a thread alone simply commits alone.

Processes queue for the file on db.write_lock; a database that cannot be written
fails the whole batch with StorageUnavailable (nothing of it was committed).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from webhook.db import write_lock


@dataclass(eq=False)
class _Item:
    work: Callable[[Connection], Any]
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    # Set when the unit is done, or when its thread is to write the next batch.
    wake: threading.Event = field(default_factory=threading.Event)


class GroupCommit:
    """Runs units of work from many threads in shared transactions, one commit each.

    One thread writes at a time. A thread that arrives while another writes queues its
    unit and sleeps on its own event; the writer wakes each unit of its batch after
    the commit, then hands the writing to the first unit queued meanwhile (which takes
    everything queued by then). Nobody polls, and nobody is woken for nothing.
    """

    def __init__(self, engine: Engine, fatal: tuple[type[BaseException], ...] = ()) -> None:
        self.engine = engine
        self.fatal = fatal
        self._lock = threading.Lock()
        self._queue: list[_Item] = []
        self._writing = False
        self.commits = 0  # for tests and curiosity

    @property
    def queued(self) -> int:
        """Units waiting for the next batch."""
        with self._lock:
            return len(self._queue)

    def run(self, work: Callable[[Connection], Any]) -> Any:
        """Run ``work(conn)`` inside a transaction that is committed before this returns.

        ``work`` does its writes inside a SAVEPOINT, so an exception it raises is its
        own (raised here, the batch goes on); one of the ``fatal`` types (the database
        cannot be written) fails every unit of the batch. Nothing is returned before
        the commit.
        """
        item = _Item(work)
        with self._lock:
            self._queue.append(item)
            writer = not self._writing
            self._writing = True
        if not writer:
            item.wake.wait()
        if not item.done:  # this thread writes the next batch, its own unit included
            with self._lock:
                batch, self._queue = self._queue, []
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
        return item.result

    def _write(self, batch: list[_Item]) -> None:
        try:
            with write_lock(self.engine), self.engine.begin() as conn:
                for item in batch:
                    try:
                        item.result = item.work(conn)
                    except self.fatal:
                        raise
                    except Exception as err:
                        item.error = err
            self.commits += 1
        except BaseException as err:
            for item in batch:
                item.result, item.error = None, err
        finally:
            for item in batch:
                item.done = True
                item.wake.set()


_committers: weakref.WeakKeyDictionary[Engine, GroupCommit] = weakref.WeakKeyDictionary()
_committers_lock = threading.Lock()


def group_commit(engine: Engine, fatal: tuple[type[BaseException], ...] = ()) -> GroupCommit:
    """The GroupCommit of ``engine`` in this process (created with ``fatal`` the first time)."""
    with _committers_lock:
        found = _committers.get(engine)
        if found is None:
            found = _committers[engine] = GroupCommit(engine, fatal)
        return found
