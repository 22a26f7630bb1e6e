"""The projector's background thread in a serving process, and waiting for projection."""

from __future__ import annotations

import logging
import os
import threading
import time

from sqlalchemy import Engine

from webhook.db.engine import PerEngine
from webhook.db.errors import describe_error, is_schema_missing, is_unavailable
from webhook.projection.projector import BATCH_SIZE, pending_summary, project_pending

log = logging.getLogger("webhook.projector")


class ProjectorThread:
    """Projects pending events in the background of a serving process.

    Woken by ``notify`` after each committed append, and every ``poll_seconds`` in any
    case (events appended by other processes, or left pending by a crash). A database
    outage is logged once and retried with a growing pause, up to ``max_pause``.
    """

    def __init__(self, engine: Engine, poll_seconds: float = 1.0, max_pause: float = 5.0,
                 batch_size: int = BATCH_SIZE) -> None:  # fmt: skip
        self.engine = engine
        self.poll_seconds = poll_seconds
        self.max_pause = max_pause
        self.batch_size = batch_size
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def start(self) -> None:
        """Start the thread (again, after a fork: threads do not survive one)."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="projector", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        pause = 0.0
        while not self._stop.is_set():
            self._wake.wait(pause or self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                while not self._stop.is_set() and project_pending(self.engine, self.batch_size):
                    pass
            except Exception as err:
                if pause:  # already said: one line per outage, not one per retry
                    pass
                elif is_schema_missing(err):
                    log.warning("projector: the database has no schema; run `flowhooks db "
                                "upgrade` (retrying)")  # fmt: skip
                elif is_unavailable(err):
                    log.warning("projector: database unavailable (%s); retrying",
                                describe_error(err))  # fmt: skip
                else:
                    log.error("projector: %s; retrying", describe_error(err), exc_info=True)
                pause = min(max(pause * 2, 0.1), self.max_pause)
            else:
                pause = 0.0


projector_thread: PerEngine[ProjectorThread] = PerEngine(ProjectorThread)
"""The ProjectorThread of an engine in this process (not started)."""


def wait_projected(engine: Engine, timeout: float = 30.0) -> None:
    """Block until no event is pending (for tests and scripts; polls the database)."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            if pending_summary(conn)[0] == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"events still pending after {timeout} s")
        time.sleep(0.02)


def stop_all(timeout: float = 5.0) -> None:
    """Stop every projector thread of this process (tests, and a clean shutdown)."""
    for thread in projector_thread.all():
        thread.stop(timeout)
