"""Acknowledged means stored: gunicorn under signed traffic while things break.

Each test starts the real service (gunicorn, 2 sync workers) on a fresh database,
sends a simulated stream of distinct, signed callbacks from several threads, and
records the SHA-256 of every body answered 200. Then it breaks something: a worker
or the whole server is SIGKILLed, or PostgreSQL becomes unreachable behind a TCP
proxy (refused, or silently black-holed). The sender retries whatever was not
answered 200, as Sinch does. Afterwards every acknowledged body is in
callback_events, no projection row lacks its raw event, and the tables hold what
the simulation says they should.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url

from tests.helpers import SECRET, rows
from tests.service import Sender, Service, digest
from tests.tcp_proxy import TcpProxy
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.db.models import CallbackEvent
from webhook.projection.thread import wait_projected
from webhook.replay.simulate import SimulatedMessage, SimulationConfig, simulate

pytestmark = pytest.mark.slow

# Tables whose rows name the raw event they came from.
SOURCED = ("inbound_messages", "flow_responses", "delivery_reports", "flow_sends")


@pytest.fixture
def fresh_engine(
    backend: str, new_database_url: Callable[[str], str]
) -> Iterator[tuple[str, Engine]]:
    """A new, migrated database for one server run."""
    url = new_database_url(backend)
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield url, engine
    engine.dispose()


def traffic(seed: int, messages: int) -> tuple[list[SimulatedMessage], list[bytes]]:
    return simulate(SimulationConfig(messages=messages, seed=seed, shuffle="window"))


def stored_digests(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(CallbackEvent.body_sha256)).scalars())


def orphans(engine: Engine) -> dict[str, int]:
    """Projection rows without their raw event (or, for message_status, any report)."""
    found = {}
    with engine.connect() as conn:
        for table in SOURCED:
            only_callbacks = "AND t.send_status = 'submitted'" if table == "flow_sends" else ""
            found[table] = conn.execute(
                text(
                    f"SELECT COUNT(*) FROM {table} t LEFT JOIN callback_events e "
                    f"ON e.id = t.source_event_id WHERE e.id IS NULL {only_callbacks}"
                )
            ).scalar_one()
        found["message_status"] = conn.execute(
            text(
                "SELECT COUNT(*) FROM message_status s WHERE NOT EXISTS (SELECT 1 FROM "
                "delivery_reports d WHERE d.kind = 'message' AND d.message_id = s.message_id)"
            )
        ).scalar_one()
    return found


def check_outcome(
    engine: Engine, sender: Sender, messages: list[SimulatedMessage], label: str, faults: int
) -> None:
    """Every acknowledged body is stored, nothing is orphaned, the tables are complete."""
    stored = stored_digests(engine)
    missing = sender.acked - stored
    answers = dict(sender.statuses())
    print(
        f"\nFAULTS {label}: faults injected={faults} acknowledged={len(sender.acked)} "
        f"missing={len(missing)} stored={len(stored)} answers={answers}"
    )
    assert not missing, f"{len(missing)} acknowledged callbacks are not stored"
    assert orphans(engine) == dict.fromkeys((*SOURCED, "message_status"), 0)
    # The sender retried until every body was acknowledged, so nothing may be absent.
    assert len(sender.acked) == len(set(sender.bodies)) == len(stored)
    assert len(rows(engine, "flow_sends")) == len(messages)
    status = {r["message_id"]: r["status"] for r in rows(engine, "message_status", "message_id")}
    expected = {"read": "READ", "delivered": "DELIVERED", "failed": "FAILED"}
    assert status == {m.message_id: expected[m.outcome] for m in messages}
    completed = {m.message_id for m in messages if m.completed}
    replies = {r["reply_to_message_id"] for r in rows(engine, "flow_responses")}
    assert replies == completed


def test_worker_sigkill_loses_no_acknowledged_callback(
    fresh_engine: tuple[str, Engine], tmp_path: Path, backend: str
) -> None:
    url, engine = fresh_engine
    messages, bodies = traffic(seed=801, messages=120)
    with Service(url, tmp_path / "gunicorn.log", secret=SECRET, workers=2) as service:
        sender = Sender(service, bodies, threads=4).start()
        kills = 0
        for share in (0.2, 0.45, 0.7):
            sender.wait_for(int(len(bodies) * share))
            before = set(service.worker_pids())
            killed = service.kill_worker()
            kills += 1
            # gunicorn's master replaces the worker; wait so the next kill hits a new one.
            deadline = time.monotonic() + 30
            while killed in service.worker_pids() or len(service.worker_pids()) < 2:
                assert time.monotonic() < deadline, "gunicorn did not replace the worker"
                time.sleep(0.02)
            assert set(service.worker_pids()) != before
        sender.join(timeout=120)
        wait_projected(engine, timeout=60)  # by the service's own projector threads
    check_outcome(engine, sender, messages, f"worker SIGKILL x{kills} [{backend}]", kills)
    # No error answers: only cut connections, or (on a starved machine) a body read past
    # its deadline (408); both retried.
    assert set(sender.statuses()) <= {200, 408, None}


def test_server_sigkill_and_restart_loses_no_acknowledged_callback(
    fresh_engine: tuple[str, Engine], tmp_path: Path, backend: str
) -> None:
    url, engine = fresh_engine
    messages, bodies = traffic(seed=802, messages=120)
    service = Service(url, tmp_path / "gunicorn.log", secret=SECRET, workers=2).start()
    try:
        sender = Sender(service, bodies, threads=4).start()
        crashes = 0
        for share in (0.3, 0.65):
            sender.wait_for(int(len(bodies) * share))
            service.crash()
            crashes += 1
            time.sleep(0.3)  # the sender meets a closed port meanwhile
            service.start()
        sender.join(timeout=120)
        wait_projected(engine, timeout=60)  # by the service's own projector threads
    finally:
        service.stop()
    check_outcome(engine, sender, messages, f"server SIGKILL x{crashes} [{backend}]", crashes)
    answers = sender.statuses()
    assert set(answers) <= {200, 408, None}  # 408: see above
    assert answers[None] > 0  # the sender really did meet the dead server


# ---------------------------------------------------------------- database outage


def _proxied(url: str, proxy: TcpProxy) -> str:
    return (
        make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    )


@pytest.mark.parametrize("mode", ["refused", "blackhole"])
def test_database_outage_answers_503_and_recovers(
    new_database_url: Callable[[str], str], tmp_path: Path, mode: str
) -> None:
    url = new_database_url("postgresql")
    engine = make_engine(url)
    migrate.upgrade(engine)
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    gunicorn_timeout = 20
    env = {"DATABASE_TIMEOUT_SECONDS": "2", "GUNICORN_TIMEOUT": str(gunicorn_timeout)}
    messages, bodies = traffic(seed=803 if mode == "refused" else 804, messages=100)
    service = Service(_proxied(url, proxy), tmp_path / "gunicorn.log", secret=SECRET, env=env)
    try:
        service.start()
        workers = set(service.worker_pids())
        sender = Sender(service, bodies, threads=4).start()
        sender.wait_for(len(bodies) // 4)

        getattr(proxy, "refuse" if mode == "refused" else "blackhole")()
        outage_started = time.monotonic()
        time.sleep(1.0)
        started = time.monotonic()
        ready = httpx.get(service.url + "/readyz", timeout=gunicorn_timeout * 2)
        ready_seconds = time.monotonic() - started
        time.sleep(max(0.0, outage_started + (6 if mode == "blackhole" else 3) - time.monotonic()))
        acked_during = sender.done
        proxy.restore()
        outage_ended = time.monotonic()

        sender.join(timeout=120)
        # Recovered on its own: the same workers, none killed by gunicorn's timeout.
        assert set(service.worker_pids()) == workers
        assert httpx.get(service.url + "/readyz", timeout=10).status_code == 200
        # The projector backed off during the outage and catches up on its own.
        wait_projected(engine, timeout=60)
    finally:
        service.stop()
        proxy.stop()

    assert ready.status_code == 503
    assert ready.json()["error"] == "database_unavailable"
    assert ready.headers["Retry-After"]
    assert ready_seconds < gunicorn_timeout
    during = sender.statuses(outage_started + 0.5, outage_ended)
    assert during[503] > 0, f"no 503 during the outage: {dict(during)}"
    assert set(sender.statuses()) <= {200, 503}  # never 500, never a cut connection
    assert all(a.retry_after for a in sender.attempts if a.status == 503)
    # Server side a request costs at most the deadline (2 s) plus connect_timeout (3 s);
    # the client also sees time queued behind other stuck requests. No worker was
    # killed by gunicorn's timeout (same pids above), and no connection was cut.
    slowest = max(a.seconds for a in sender.attempts)
    assert slowest < gunicorn_timeout, f"a request took {slowest:.1f} s"
    print(
        f"\nOUTAGE {mode}: outage={outage_ended - outage_started:.1f}s 503s={during[503]} "
        f"acknowledged during outage={acked_during - len(bodies) // 4} "
        f"slowest answer={slowest:.2f}s readyz={ready.status_code} in {ready_seconds:.2f}s"
    )
    check_outcome(engine, sender, messages, f"database {mode} [postgresql]", 1)
    engine.dispose()


def test_deadline_bounds_a_database_that_never_answers(
    new_database_url: Callable[[str], str],
) -> None:
    """In-process: a black-holed server costs the deadline plus connect_timeout, then 503."""
    from webhook.db.deadline import clear_deadline, set_deadline
    from webhook.db.engine import CONNECT_TIMEOUT_SECONDS
    from webhook.db.errors import StorageUnavailable
    from webhook.ingest.body import load_body
    from webhook.projection.ingest import ingest

    url = new_database_url("postgresql")
    direct = make_engine(url)
    migrate.upgrade(direct)
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    engine = make_engine(_proxied(url, proxy))
    bodies = traffic(seed=805, messages=2)[1]
    try:
        ingest(engine, bodies[0], load_body(bodies[0]))  # a pooled connection exists
        proxy.blackhole()
        token = set_deadline(1.0)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            ingest(engine, bodies[1], load_body(bodies[1]))
        elapsed = time.monotonic() - started
        clear_deadline(token)
        assert elapsed < 1.0 + CONNECT_TIMEOUT_SECONDS + 2
        proxy.restore()
        token = set_deadline(5.0)
        # A 503 promises nothing either way: the statement may have reached the server
        # once the link came back. The retry is then a duplicate; either way it is stored.
        assert ingest(engine, bodies[1], load_body(bodies[1])).outcome in {"stored", "duplicate"}
        clear_deadline(token)
    finally:
        engine.dispose()
        proxy.stop()
    assert stored_digests(direct) == {digest(b) for b in bodies[:2]}
    direct.dispose()
