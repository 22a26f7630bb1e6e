"""One writer at a time among a process's threads, the rest queued for its next batch.

Shared by SQLite's group commit (webhook.groupcommit) and PostgreSQL's batch writer
(webhook.pgbatch): they differ in how a batch is written, not in how threads take turns.
A thread that arrives while another writes queues its item and sleeps on the item's own
event. The writer wakes each item of its batch once the batch is written, then hands the
writing to the first item queued meanwhile, whose thread takes everything queued by
then (up to ``max_batch``). Nobody polls, and nobody is woken for nothing.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy import Engine


@dataclass(eq=False, kw_only=True)
class Waiting:
    """What every queued item carries: whether it is done, and its thread's wake-up."""

    error: BaseException | None = None
    done: bool = False
    # Set when the item is done, or when its thread is to write the next batch.
    wake: threading.Event = field(default_factory=threading.Event)


ItemT = TypeVar("ItemT", bound=Waiting)


class Handoff(Generic[ItemT]):
    """Takes turns writing batches of items; subclasses say how a batch is written."""

    max_batch: int | None = None  # None: everything queued

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[ItemT] = []
        self._writing = False

    @property
    def queued(self) -> int:
        """Items waiting for the next batch."""
        with self._lock:
            return len(self._queue)

    def _submit(self, item: ItemT) -> None:
        """Return once ``item`` is done; this thread writes a batch if it is its turn.

        Raises the item's error, if the batch that held it set one.
        """
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

    def _write_all(self, batch: list[ItemT]) -> None:
        try:
            self._write(batch)
        except BaseException as err:  # never leave a thread waiting, nor without an answer
            for item in batch:
                item.error = err
            raise
        finally:
            for item in batch:
                item.done = True
                item.wake.set()

    def _write(self, batch: list[ItemT]) -> None:
        """Write the batch: set each item's result or error (its first item is this thread's)."""
        raise NotImplementedError


H = TypeVar("H")


class PerEngine(Generic[H]):
    """One object per engine in this process, made on first use."""

    def __init__(self) -> None:
        self._found: weakref.WeakKeyDictionary[Engine, H] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, engine: Engine, make: Callable[[], H]) -> H:
        with self._lock:
            found = self._found.get(engine)
            if found is None:
                found = self._found[engine] = make()
            return found
