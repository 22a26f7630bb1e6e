"""SQLite group commit: callbacks that arrive together share one commit, and nothing else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import truncate_all
from tests.helpers import FIXTURES, count, fixture_bytes, in_threads
from webhook.callbacks import load_body
from webhook.db import write_lock
from webhook.groupcommit import GroupCommit, group_commit
from webhook.ingest import DUPLICATE, STORED, UNAVAILABLE_ERRORS, ingest, ingest_generic
from webhook.models import Base
from webhook.simulate import SimulationConfig, simulate

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def lite(engine: Engine, backend: str) -> Engine:
    if backend != "sqlite":
        pytest.skip("group commit is SQLite's")
    return engine


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "threads never queued"
        time.sleep(0.005)


def queued_behind_lock(engine: Engine, calls: list[Callable[[], Any]]) -> list[Any]:
    """Hold the write lock until the first caller writes and the others queue behind it."""
    committer = group_commit(engine, UNAVAILABLE_ERRORS)
    results: list[Any] = []
    with write_lock(engine):
        runner = threading.Thread(target=lambda: results.extend(in_threads(calls)))
        runner.start()
        wait_for(lambda: committer.queued == len(calls) - 1)
    runner.join()
    return results


def test_callbacks_waiting_together_share_one_commit(lite: Engine) -> None:
    _, bodies = simulate(SimulationConfig(messages=3, seed=2))
    committer = group_commit(lite, UNAVAILABLE_ERRORS)
    before = committer.commits
    calls = [lambda b=b: ingest(lite, b, load_body(b)) for b in bodies]
    results = queued_behind_lock(lite, calls)
    assert [r.outcome for r in results] == [STORED] * len(bodies)
    # The first writer took only itself; everything queued behind it went in one commit.
    assert committer.commits - before == 2
    assert count(lite, "callback_events") == len(bodies)
    assert count(lite, "flow_sends") == 3


def test_one_bad_callback_fails_alone(lite: Engine) -> None:
    good = [fixture_bytes(f"message_delivery__{s}") for s in ("queued_on_channel", "read")]
    bad = fixture_bytes("message_submit__flows")
    naive = datetime(2026, 3, 2, 12, 0)  # refused by the schema's UTC type
    calls: list[Callable[[], Any]] = [lambda b=b: ingest(lite, b, load_body(b)) for b in good]
    calls.insert(1, lambda: ingest(lite, bad, load_body(bad), None, naive))
    results = queued_behind_lock(lite, [calls[1], calls[0], calls[2]])
    assert isinstance(results[0], Exception)
    assert [r.outcome for r in results[1:]] == [STORED, STORED]
    assert count(lite, "callback_events") == 2
    assert count(lite, "message_status") == 1


def test_duplicates_in_one_batch_are_stored_once(lite: Engine) -> None:
    body = fixture_bytes("message_delivery__delivered")
    results = queued_behind_lock(lite, [lambda: ingest(lite, body, load_body(body))] * 4)
    assert sorted(r.outcome for r in results) == [DUPLICATE] * 3 + [STORED]
    assert count(lite, "callback_events") == 1


def test_a_failed_commit_fails_the_whole_batch() -> None:
    class Boom(Exception):
        pass

    class FailingEngine:
        """Just enough of an Engine for GroupCommit: begin() fails like a full disk."""

        dialect = type("D", (), {"name": "postgresql"})()

        def begin(self) -> Any:
            raise Boom("disk I/O error")

    committer = GroupCommit(FailingEngine(), (Boom,))  # type: ignore[arg-type]
    results = in_threads([lambda: committer.run(lambda conn: 1)] * 3)
    assert all(isinstance(r, Boom) for r in results)


def test_concurrent_ingest_gives_the_rows_of_one_at_a_time(lite: Engine) -> None:
    _, simulated = simulate(SimulationConfig(messages=40, seed=8, shuffle="all",
                                             duplicate_rate=0.2, failure_rate=0.2,
                                             broken_response_rate=0.3))  # fmt: skip
    bodies = [fixture_bytes(p.stem) for p in sorted(FIXTURES.glob("*.json"))] + simulated
    at = {b: T0 + timedelta(seconds=i) for i, b in enumerate(dict.fromkeys(bodies))}
    for body in bodies:
        ingest_generic(lite, body, load_body(body), None, at[body])
    expected = content(lite)
    truncate_all(lite)
    calls = [lambda part=part: [ingest(lite, b, load_body(b), None, at[b]) for b in part]
             for part in (bodies[i::8] for i in range(8))]  # fmt: skip
    assert not any(isinstance(r, Exception) for r in in_threads(calls))
    assert content(lite) == expected


def content(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row without surrogate ids (which depend on arrival order), sorted."""
    out = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            cols = [c.name for c in table.columns if c.name not in {"id", "source_event_id"}]
            rows = conn.execute(text(f"SELECT {', '.join(cols)} FROM {table.name}"))
            out[table.name] = sorted(tuple(map(repr, r)) for r in rows)
    return out
