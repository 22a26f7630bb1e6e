"""`events forward` and `events simulate --to`: signed sends to a real HTTP endpoint."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import Engine
from werkzeug.serving import make_server

from tests.helpers import SECRET, count, project, rows
from tests.receiver import Answer, Receiver, running_receiver
from tests.replay_helpers import relax_durability
from webhook.core.state import state
from webhook.core.timeparse import parse_time
from webhook.ingest.body import load_body
from webhook.ingest.signing import NONCE, verify
from webhook.projection.ingest import ingest
from webhook.replay.simulate import SimulationConfig, simulate

FAST = ["--backoff", "0.01", "--timeout", "2"]

receiver = pytest.fixture(running_receiver)


def store(engine: Engine, messages: int = 5, seed: int = 4) -> list[bytes]:
    relax_durability(engine)
    bodies = simulate(SimulationConfig(messages=messages, seed=seed))[1]
    for body in bodies:
        ingest(engine, body, load_body(body))
    return bodies


def forward(runner: FlaskCliRunner, receiver: Receiver, *args: str, **kw: str) -> object:
    return runner.invoke(args=["events", "forward", "--to", receiver.url, *FAST, *args], **kw)


def test_forward_sends_stored_bodies_byte_exact_and_freshly_signed(
    engine: Engine, runner: FlaskCliRunner, receiver: Receiver
) -> None:
    bodies = store(engine)
    result = runner.invoke(args=["events", "forward", "--to", receiver.url])
    assert result.exit_code == 0, result.output
    n = len(bodies)
    assert f"sent {n} events to {receiver.url}" in result.output
    assert f"{n} delivered, 0 failed, 0 retries" in result.output
    assert Counter(receiver.bodies()) == Counter(bodies)
    ids = {bytes(r["body"]): str(r["id"]) for r in rows(engine, "callback_events")}
    for request in receiver.received:
        verify(request.body, request, [SECRET])  # SINCH_WEBHOOK_SECRETS of the app
        assert request.headers["x-flowhooks-replay"] == "1"
        assert request.headers["x-flowhooks-event-id"] == ids[request.body]
        assert request.headers["content-type"] == "application/json"
    assert len({r.headers[NONCE] for r in receiver.received}) == n


def test_other_secret_and_filters(
    engine: Engine, runner: FlaskCliRunner, receiver: Receiver
) -> None:
    store(engine)
    args = ["--secret", "another-secret", "--trigger", "MESSAGE_SUBMIT", "--rate", "200"]
    result = forward(runner, receiver, *args)
    assert result.exit_code == 0, result.output
    assert len(receiver.received) == 5
    for request in receiver.received:
        verify(request.body, request, ["another-secret"])
        assert b"message_submit_notification" in request.body


def test_5xx_429_and_timeouts_are_retried(
    engine: Engine, runner: FlaskCliRunner, receiver: Receiver
) -> None:
    bodies = store(engine, messages=2)
    receiver.answer(bodies[0], Answer(503), Answer(500))
    receiver.answer(bodies[1], Answer(429, {"Retry-After": "0"}))
    receiver.answer(bodies[2], Answer(200, delay=1.0))
    result = forward(runner, receiver, "--timeout", "0.3")
    assert result.exit_code == 0, result.output
    assert "4 retries" in result.output
    got = Counter(receiver.bodies())
    assert (got[bodies[0]], got[bodies[1]], got[bodies[2]]) == (3, 2, 2)
    first_tries = [r for r in receiver.received if r.body == bodies[0]]
    assert len({r.headers["x-sinch-webhook-signature"] for r in first_tries}) == 3


def test_4xx_and_exhausted_retries_fail_with_the_event_named(
    engine: Engine, runner: FlaskCliRunner, receiver: Receiver
) -> None:
    bodies = store(engine, messages=2)
    receiver.answer(bodies[0], Answer(400))
    receiver.answer(bodies[1], Answer(500), Answer(502), Answer(503))
    ids = {bytes(r["body"]): r["id"] for r in rows(engine, "callback_events")}
    result = forward(runner, receiver, "--retries", "2")
    assert result.exit_code == 1
    assert f"event {ids[bodies[0]]}: HTTP 400 Bad Request (not retried)" in result.stderr
    assert f"event {ids[bodies[1]]}: HTTP 503 Service Unavailable (after 3 attempts)" in (
        result.stderr
    )
    assert f"Error: 2 of {len(bodies)} events were not delivered" in result.stderr
    assert Counter(receiver.bodies())[bodies[0]] == 1  # a 4xx is final
    assert count(engine, "callback_events") == len(bodies)  # nothing stored changed


def test_an_unreachable_endpoint_is_one_clear_line(engine: Engine, runner: FlaskCliRunner) -> None:
    store(engine)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"
    result = runner.invoke(args=["events", "forward", "--to", url, "--retries", "1", *FAST])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Error: cannot reach {url}: cannot connect:")
    assert "not delivered" in lines[0]
    assert "Traceback" not in result.output


def test_confirmation_above_100_events_and_dry_run(
    engine: Engine, runner: FlaskCliRunner, receiver: Receiver
) -> None:
    bodies = store(engine, messages=30)
    assert len(bodies) > 100
    dry = forward(runner, receiver, "--dry-run")
    assert dry.exit_code == 0
    assert f"would forward {len(bodies)} events to {receiver.url}" in dry.output
    refused = forward(runner, receiver, input="n\n")
    assert refused.exit_code == 1
    assert f"Send {len(bodies)} events to {receiver.url}?" in refused.output
    assert receiver.received == []
    accepted = forward(runner, receiver, "--concurrency", "8", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert Counter(receiver.bodies()) == Counter(bodies)


def test_bad_options(make_app: Callable[..., Flask], engine: Engine) -> None:
    runner = make_app(sinch_webhook_secrets=()).test_cli_runner()
    dry = runner.invoke(args=["events", "forward", "--to", "http://127.0.0.1:1/", "--dry-run"])
    assert dry.exit_code == 0 and "would forward" in dry.output  # no secret needed
    bad_url = runner.invoke(args=["events", "forward", "--to", "ftp://x", "--secret", "s"])
    assert bad_url.exit_code == 2 and "must be an http:// or https:// URL" in bad_url.output
    no_url = runner.invoke(args=["events", "forward"])
    assert no_url.exit_code == 2 and "--to URL is required" in no_url.output


# ---------------------------------------------------------------- simulate


def test_simulate_sends_the_seeded_stream_signed(
    runner: FlaskCliRunner, receiver: Receiver
) -> None:
    args = ["--messages", "20", "--seed", "3", "--duplicates", "0.1", "--concurrency", "1",
            "--start", "2026-03-01T08:00:00Z"]  # fmt: skip
    result = runner.invoke(args=["events", "simulate", "--to", receiver.url, *args, *FAST])
    assert result.exit_code == 0, result.output
    cfg = SimulationConfig(messages=20, seed=3, duplicate_rate=0.1)
    assert receiver.bodies() == simulate(cfg)[1]  # one sender thread: order kept
    for request in receiver.received:
        verify(request.body, request, [SECRET])
        assert request.headers["x-flowhooks-simulation"] == "3"


@pytest.fixture
def served(app: Flask, engine: Engine) -> Iterator[str]:
    """This service itself, over real HTTP on 127.0.0.1."""
    relax_durability(state(app).engine)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/sinch/callbacks"
    server.shutdown()


def test_simulate_into_the_service_itself(
    runner: FlaskCliRunner, engine: Engine, served: str
) -> None:
    args = ["--messages", "40", "--seed", "8", "--shuffle", "all", "--duplicates", "0.2", "--yes",
            "--start", "2026-03-01T08:00:00Z"]  # fmt: skip
    result = runner.invoke(args=["events", "simulate", "--to", served, *args, *FAST])
    assert result.exit_code == 0, result.output
    messages, stream = simulate(
        SimulationConfig(messages=40, seed=8, shuffle="all", duplicate_rate=0.2)
    )
    assert count(engine, "callback_events") == len(set(stream)) < len(stream)
    project(engine)  # what the service's projector has not yet done
    status = {r["message_id"]: r["status"] for r in rows(engine, "message_status", "message_id")}
    expected = {"read": "READ", "delivered": "DELIVERED", "failed": "FAILED"}
    assert status == {m.message_id: expected[m.outcome] for m in messages}
    assert count(engine, "flow_responses") == sum(m.completed for m in messages)


def test_simulate_to_a_file_and_dry_run(runner: FlaskCliRunner, tmp_path: object) -> None:
    out = f"{tmp_path}/sim.jsonl"
    result = runner.invoke(
        args=["events", "simulate", "--messages", "5", "-o", out, "--start", "2026-03-01T08:00:00Z"]
    )
    assert result.exit_code == 0, result.output
    with open(out, "rb") as f:
        assert f.read().splitlines() == simulate(SimulationConfig(messages=5))[1]
    dry = runner.invoke(
        args=["events", "simulate", "--messages", "5", "--to", "http://h/", "--dry-run"]
    )
    assert dry.exit_code == 0 and "would send" in dry.output
    both = runner.invoke(args=["events", "simulate", "-o", out, "--to", "http://h/"])
    assert both.exit_code == 2 and "exactly one of --to URL or --output FILE" in both.output


def test_simulated_traffic_is_recent_by_default(runner: FlaskCliRunner, tmp_path: Path) -> None:
    """So that reports of the last days show it right after `simulate`."""
    out = tmp_path / "recent.jsonl"
    result = runner.invoke(args=["events", "simulate", "--messages", "10", "-o", str(out)])
    assert result.exit_code == 0, result.output
    now = datetime.now(UTC)
    times = [parse_time(json.loads(line)["event_time"]) for line in out.read_text().splitlines()]
    assert all(t is not None and now - timedelta(hours=2) < t < now for t in times)


def test_simulate_sends_unsigned_without_a_secret(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    runner = make_app(sinch_webhook_secrets=()).test_cli_runner()
    result = runner.invoke(
        args=["events", "simulate", "--messages", "2", "--to", receiver.url, *FAST]
    )
    assert result.exit_code == 0, result.output
    assert "sending unsigned" in result.output
    assert receiver.received and all(
        "x-sinch-webhook-signature" not in r.headers for r in receiver.received
    )


def test_a_password_in_the_url_is_never_echoed(make_app: Callable[..., Flask]) -> None:
    runner = make_app(sinch_webhook_secrets=()).test_cli_runner()
    url = "http://user:hunter2secret@127.0.0.1:1/sinch/callbacks"
    for args in (["events", "forward", "--to", url, "--dry-run"],
                 ["events", "simulate", "--messages", "1", "--to", url, *FAST]):  # fmt: skip
        result = runner.invoke(args=args)
        assert "hunter2secret" not in result.output, args
        assert "user:***@127.0.0.1" in result.output, args


def test_forward_stops_after_ten_refusals_in_a_row(
    engine: Engine, runner: FlaskCliRunner, receiver: Receiver
) -> None:
    """A wrong secret refuses every callback the same way: stop, and say why."""
    bodies = store(engine, messages=8)  # about 30 events
    for body in bodies:
        receiver.answer(body, Answer(401))
    result = forward(runner, receiver, "--concurrency", "1", "--yes")
    assert result.exit_code == 1
    assert "stopped: 10 answers in a row that retrying cannot fix (last: HTTP 401" in (
        result.stderr
    )
    assert "check the URL and the secret" in result.stderr
    assert 10 <= len(receiver.received) <= 12 < len(bodies)  # what was in flight still went
