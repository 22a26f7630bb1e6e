"""The projector (webhook.projection.projector): append, then project.

- Any stream of callbacks (fixtures, delivery reports for a few messages with random
  statuses and times, duplicates, broken bodies, in any order), posted over HTTP and
  projected by the app's projector thread, gives the rows `events rebuild` and
  `events reprocess` give again from the stored events.
- Two projector processes on one PostgreSQL share the pending events: each event is
  projected by exactly one of them, and the rows equal a single projector's.
- PROJECTOR=off: callbacks stay pending until `flask events project`.
- SIGKILL of the real service (gunicorn) after acknowledging and before projecting,
  and in the middle of projecting: after a restart nothing is pending, nothing is
  doubled, and the rows equal a rebuild's.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from tests.conftest import truncate_all
from tests.helpers import FIXTURES, ROOT, SECRET, count, post_callback, project, rows
from tests.projector_helpers import (
    BROKEN_BODIES,
    START,
    append_bulk,
    compact,
    digests,
    event_outcomes,
    pending,
    projection_snapshot,
    received_times,
    status_counts,
    wait_until,
)
from tests.replay_helpers import relax_durability, varied_stream
from tests.service import Sender, Service
from webhook.core.state import state
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.db.events import FAILED, IGNORED, PENDING, PROCESSED
from webhook.ingest.append import append, body_digest
from webhook.ingest.body import load_body
from webhook.projection.projector import drain
from webhook.projection.rules import PROJECTION_TABLES
from webhook.projection.thread import wait_projected
from webhook.replay.rebuild import rebuild
from webhook.replay.simulate import SimulationConfig, simulate

FINAL = {PROCESSED, IGNORED, FAILED}
# What `flask events project` prints last.
PROJECTED = re.compile(
    r"^projected ([\d,]+) events: ([\d,]+) processed, ([\d,]+) ignored, ([\d,]+) failed$",
    re.MULTILINE,
)


def projected_counts(output: str) -> tuple[int, int, int, int]:
    """(events, processed, ignored, failed) from the output of `flask events project`."""
    found = PROJECTED.findall(output)
    assert len(found) == 1, f"no single 'projected N events' line in: {output!r}"
    events, processed, ignored, failed = (int(n.replace(",", "")) for n in found[0])
    return events, processed, ignored, failed


@pytest.fixture
def fresh(backend: str, new_database_url: Callable[[str], str]) -> Iterator[tuple[str, Engine]]:
    """A new, migrated database on this backend, for a test that runs its own server."""
    url = new_database_url(backend)
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield url, engine
    engine.dispose()


# ---------------------------------------------------------------- 1. any stream, replayed

FIXTURE_BODIES = tuple(p.read_bytes() for p in sorted(FIXTURES.glob("*.json")))
# Messages the fixtures already speak of (sent, delivered, completed) and two others.
MESSAGE_IDS = ("01KKBFJYQPYQWF3VT0NDA4XKVD", "01KKET2QEGEHX41K2VSX7GMJAD", "PM1", "PM2")
STATUSES = ("QUEUED_ON_CHANNEL", "SWITCHING_CHANNEL", "DELIVERED", "READ", "FAILED", "NEW_ONE")
BROKEN = tuple(compact(doc) for doc in BROKEN_BODIES)


@st.composite
def delivery_reports(draw: st.DrawFn) -> bytes:
    report: dict[str, Any] = {
        "message_id": draw(st.sampled_from(MESSAGE_IDS)),
        "status": draw(st.sampled_from(STATUSES)),
        "channel_identity": {
            "channel": draw(st.sampled_from(("WHATSAPP", "SMS"))),
            "identity": "+55 11 98765-4321",
        },
        "contact_id": draw(st.sampled_from(("C1", "C2", None))),
    }
    code = draw(st.sampled_from((None, "AAA_CODE", "ZZZ_CODE", "RECIPIENT_NOT_REACHABLE")))
    if code is not None:
        report["reason"] = {"code": code}
    doc: dict[str, Any] = {"app_id": "APP", "project_id": "PRJ"}
    if draw(st.booleans()):  # else the receive time stands in for the event time
        at = START + timedelta(seconds=draw(st.integers(0, 600)))
        doc["event_time"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    doc["message_delivery_report"] = report
    return compact(doc)


BODY = st.one_of(
    delivery_reports(),
    delivery_reports(),
    st.sampled_from(FIXTURE_BODIES),
    st.sampled_from(BROKEN),
)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """Distinct bodies, some sent again, in any order."""
    distinct = draw(st.lists(BODY, min_size=1, max_size=30, unique=True))
    again = draw(st.lists(st.sampled_from(distinct), max_size=10))
    return list(draw(st.permutations(distinct + again)))


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=streams())
def test_any_stream_projects_to_what_rebuild_and_reprocess_give(
    app: Flask, client: FlaskClient, engine: Engine, stream: list[bytes]
) -> None:
    truncate_all(engine)  # each example from empty tables
    assert state(app).projector is not None, "the app's projector thread should run"
    for body in stream:
        response = post_callback(client, body, wait=False)
        assert response.status_code == 200, response.get_json()
    project(app)
    # On PostgreSQL project() skips events the thread has claimed but not committed yet.
    wait_projected(engine, timeout=30)

    outcomes = event_outcomes(engine)
    assert set(outcomes) == digests(stream)  # each distinct body once, duplicates not
    assert {status for _, status, _ in outcomes.values()} <= FINAL
    for body in set(stream) & set(BROKEN):
        assert outcomes[body_digest(body)][1] == FAILED
    live = projection_snapshot(engine)

    runner = app.test_cli_runner()
    result = runner.invoke(args=["events", "rebuild"])
    assert result.exit_code == 0, result.output
    assert f"rebuilt from {len(outcomes)} events" in result.output
    assert projection_snapshot(engine) == live
    assert event_outcomes(engine) == outcomes

    result = runner.invoke(args=["events", "reprocess", "--all"])
    assert result.exit_code == 0, result.output
    assert f"reprocessed {len(outcomes)} events" in result.output
    assert projection_snapshot(engine) == live
    assert event_outcomes(engine) == outcomes


# ---------------------------------------------------------------- 2. two projector processes


def _waiting_on_lock(engine: Engine) -> int:
    """Other sessions of this database waiting for a lock."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def _projector_process(database_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url, "PROJECTOR": "off", "LOG_LEVEL": "WARNING"}
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "events", "project",
             "--batch-size", "40"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip


@pytest.mark.slow
def test_two_projector_processes_project_each_event_once(
    backend: str,
    engine: Engine,
    database_url: str,
    new_database_url: Callable[[str], str],
    tmp_path: Path,
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite runs one projector at a time")
    relax_durability(engine)
    bodies = varied_stream(messages=1000)
    times = received_times(len(bodies))
    appended = [
        append(engine, b, load_body(b), None, at) for b, at in zip(bodies, times, strict=True)
    ]
    total = sum(a.event_id is not None for a in appended)
    assert total == len(set(bodies)) > 3000
    assert pending(engine) == total

    # Both processes start, then meet a table lock on their first claim, and are let go
    # together: neither has drained everything before the other begins.
    with engine.connect() as gate:
        gate.execute(text("LOCK TABLE callback_events IN EXCLUSIVE MODE"))
        procs = [_projector_process(database_url, tmp_path / f"projector{i}.log") for i in (1, 2)]
        try:
            wait_until(
                lambda: _waiting_on_lock(engine) >= 2 or any(p.poll() is not None for p in procs),
                timeout=60,
                what="both projectors to reach their first claim",
            )
            assert all(p.poll() is None for p in procs), "a projector exited early"
            gate.rollback()  # releases the lock
            outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(timeout=10)
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True), 1):
        assert p.returncode == 0, (out, (tmp_path / f"projector{i}.log").read_text())
    counts = [projected_counts(out) for out in outputs]
    print(f"\nTWO PROJECTORS: {total} events; per process {[c[0] for c in counts]}")
    assert all(c[0] > 0 for c in counts), f"one projector did nothing: {counts}"
    assert sum(c[0] for c in counts) == total  # none projected twice, none left out

    final = status_counts(engine)
    assert final[PENDING] == 0
    assert sum(final.values()) == total
    assert final == {
        PROCESSED: sum(c[1] for c in counts),
        IGNORED: sum(c[2] for c in counts),
        FAILED: sum(c[3] for c in counts),
    }

    # The same bodies, received at the same times, projected by one projector.
    other = make_engine(new_database_url("postgresql"))
    try:
        migrate.upgrade(other)
        relax_durability(other)
        for body, at in zip(bodies, times, strict=True):
            append(other, body, load_body(body), None, at)
        assert drain(other).events == total
        assert projection_snapshot(engine, by_digest=True) == projection_snapshot(
            other, by_digest=True
        )
        assert event_outcomes(engine) == event_outcomes(other)
    finally:
        other.dispose()


# ---------------------------------------------------------------- 3. PROJECTOR=off


def test_projector_off_stores_pending_until_events_project(
    make_app: Callable[..., Flask], engine: Engine
) -> None:
    app = make_app(projector=False, sinch_webhook_secrets=(SECRET,))
    assert state(app).projector is None
    client = app.test_client()
    bodies = [*FIXTURE_BODIES, *BROKEN]
    for body in bodies:
        response = post_callback(client, body, wait=False)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == PENDING
    total = len(set(bodies))
    assert status_counts(engine) == {PENDING: total}
    assert {table: count(engine, table) for table in PROJECTION_TABLES} == dict.fromkeys(
        PROJECTION_TABLES, 0
    )

    runner = app.test_cli_runner()
    result = runner.invoke(args=["events", "project"])
    assert result.exit_code == 0, result.output
    events, processed, ignored, failed = projected_counts(result.output)
    assert events == total == processed + ignored + failed
    assert failed >= len(BROKEN) and ignored >= 1  # the broken ones; an unknown trigger
    assert status_counts(engine) == {PROCESSED: processed, IGNORED: ignored, FAILED: failed}
    assert count(engine, "inbound_messages") > 0
    assert count(engine, "message_status") > 0
    assert count(engine, "flow_sends") > 0

    again = runner.invoke(args=["events", "project"])
    assert again.exit_code == 0, again.output
    assert projected_counts(again.output) == (0, 0, 0, 0)


# ---------------------------------------------------------------- 4. SIGKILL


def _check_against_rebuild(engine: Engine) -> None:
    """Nothing pending; the rows and event outcomes are what a rebuild makes of them."""
    assert pending(engine) == 0
    live, outcomes = projection_snapshot(engine), event_outcomes(engine)
    rebuild(engine)
    assert projection_snapshot(engine) == live
    assert event_outcomes(engine) == outcomes


@pytest.mark.slow
def test_sigkill_after_acknowledging_before_projecting(
    fresh: tuple[str, Engine], tmp_path: Path, backend: str
) -> None:
    url, engine = fresh
    messages, bodies = simulate(SimulationConfig(messages=80, seed=811, shuffle="window"))
    service = Service(
        url, tmp_path / "gunicorn.log", secret=SECRET, workers=2, env={"PROJECTOR": "off"}
    )
    try:
        service.start()
        sender = Sender(service, bodies, threads=4).start()
        sender.join(timeout=120)
        # Acknowledged and stored, not projected.
        assert sender.acked == digests(bodies)
        assert status_counts(engine) == {PENDING: len(sender.acked)}
        assert sum(count(engine, t) for t in PROJECTION_TABLES) == 0
        service.crash()
        service.extra_env = {"PROJECTOR": "on"}
        service.start()
        wait_projected(engine, timeout=120)
    finally:
        service.stop()

    assert set(event_outcomes(engine)) == sender.acked
    assert set(status_counts(engine)) <= FINAL
    status = {r["message_id"]: r["status"] for r in rows(engine, "message_status", "message_id")}
    expected = {"read": "READ", "delivered": "DELIVERED", "failed": "FAILED"}
    assert status == {m.message_id: expected[m.outcome] for m in messages}
    assert len(rows(engine, "flow_sends")) == len(messages)
    _check_against_rebuild(engine)


def _projecting(engine: Engine) -> bool:
    """Whether a projector of the service is inside a batch right now.

    PostgreSQL: another session of this database has a transaction open. SQLite: the
    projector's flock (held while a batch is read, parsed and written) is taken.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                        " AND xact_start IS NOT NULL"
                    )
                ).scalar_one()
            )
    path = f"{engine.url.database}-projector"
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@pytest.mark.slow
def test_sigkill_during_projection_loses_and_doubles_nothing(
    fresh: tuple[str, Engine], tmp_path: Path, backend: str
) -> None:
    url, engine = fresh
    relax_durability(engine)
    t0 = time.monotonic()
    bodies = varied_stream(messages=5500)
    total = append_bulk(engine, bodies)
    assert total == len(set(bodies)) > 20_000
    t_appended = time.monotonic()
    service = Service(url, tmp_path / "gunicorn.log", secret=SECRET, workers=2)
    try:
        service.start()
        # A good part projected, more still pending, and a batch in progress: then the
        # whole server dies.
        left = wait_until(
            lambda: (n := pending(engine)) < total * 0.8 and n and _projecting(engine) and n,
            timeout=60,
            what="the projector to be part-way, inside a batch",
            interval=0.005,
        )
        service.crash()
        after_crash = pending(engine)
        print(
            f"\nSIGKILL mid-projection [{backend}]: {total} events, {left} pending when "
            f"seen part-way, {after_crash} pending after the kill"
        )
        assert 0 < after_crash < total, "the kill did not land while projecting"
        service.start()
        wait_projected(engine, timeout=180)
        t_projected = time.monotonic()
    finally:
        service.stop()

    counts = status_counts(engine)
    assert counts[PENDING] == 0
    assert sum(counts.values()) == total  # no event stored twice, none lost
    assert set(event_outcomes(engine)) == digests(bodies)
    _check_against_rebuild(engine)
    print(
        f"timings: append {t_appended - t0:.1f} s, serve+kill+project "
        f"{t_projected - t_appended:.1f} s, checks {time.monotonic() - t_projected:.1f} s"
    )
