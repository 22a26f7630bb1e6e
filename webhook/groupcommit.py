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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from webhook.db import write_lock
from webhook.handoff import Handoff, PerEngine, Waiting


@dataclass(eq=False)
class _Item(Waiting):
    work: Callable[[Connection], Any]
    result: Any = None


class GroupCommit(Handoff[_Item]):
    """Runs units of work from many threads in shared transactions, one commit each.

    Threads take turns as in webhook.handoff: the writer runs every queued unit in
    one transaction and commits once, then each thread of the batch answers.
    """

    def __init__(self, engine: Engine, fatal: tuple[type[BaseException], ...] = ()) -> None:
        super().__init__()
        self.engine = engine
        self.fatal = fatal
        self.commits = 0  # for tests and curiosity

    def run(self, work: Callable[[Connection], Any]) -> Any:
        """Run ``work(conn)`` inside a transaction that is committed before this returns.

        ``work`` does its writes inside a SAVEPOINT, so an exception it raises is its
        own (raised here, the batch goes on); one of the ``fatal`` types (the database
        cannot be written) fails every unit of the batch. Nothing is returned before
        the commit.
        """
        item = _Item(work)
        self._submit(item)
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


_committers: PerEngine[GroupCommit] = PerEngine()


def group_commit(engine: Engine, fatal: tuple[type[BaseException], ...] = ()) -> GroupCommit:
    """The GroupCommit of ``engine`` in this process (created with ``fatal`` the first time)."""
    return _committers.get(engine, lambda: GroupCommit(engine, fatal))
