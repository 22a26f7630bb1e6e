"""GET /metrics: callback outcomes, latency, failed-event gauges, flow requests, token."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from tests.helpers import ROOT, SECRET, fixture_bytes, post_callback, project, sign
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.http.metrics import observe_flow_exchange
from webhook.ingest.append import append
from webhook.ingest.body import load_body
from webhook.projection.ingest import ingest
from webhook.replay.simulate import SimulationConfig, simulate

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client: FlaskClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


FAILING_BODY = json.dumps({"message_delivery_report": {"message_id": ["not", "a", "string"]}})


def test_every_callback_outcome_is_counted(client: FlaskClient, make_app: Any) -> None:
    before = scrape(client)
    text_body = fixture_bytes("message_inbound__text")
    assert post_callback(client, text_body).get_json()["outcome"] == "stored"
    assert post_callback(client, text_body).get_json()["outcome"] == "duplicate"
    assert post_callback(client, fixture_bytes("unknown__future_trigger")).status_code == 200
    assert post_callback(client, FAILING_BODY.encode()).get_json()["status"] == "pending"
    assert post_callback(client, text_body, secret="wrong").status_code == 401
    assert post_callback(client, b"not json").status_code == 400
    small = make_app(sinch_webhook_secrets=(), max_content_length=100).test_client()
    assert small.post("/sinch/callbacks", data=b"{" + b" " * 200 + b"}").status_code == 413
    down = make_app(database_url="postgresql+psycopg://127.0.0.1:1/none", sinch_webhook_secrets=())
    assert down.test_client().post("/sinch/callbacks", data=text_body).status_code == 503
    after = scrape(client)

    total = "flowhooks_callbacks_total"
    expected = {
        ("MESSAGE_INBOUND", "stored", ""): 1,
        ("MESSAGE_INBOUND", "duplicate", ""): 1,
        ("UNKNOWN", "stored", ""): 1,
        ("MESSAGE_DELIVERY", "stored", ""): 1,
        ("none", "rejected", "bad_signature"): 1,
        ("none", "rejected", "invalid_body"): 1,
        ("none", "rejected", "too_large"): 1,
        ("none", "rejected", "storage_unavailable"): 1,
    }
    for (trigger, outcome, reason), n in expected.items():
        got = delta(before, after, total, trigger=trigger, outcome=outcome, reason=reason)
        assert got == n, (trigger, outcome, reason)
    hist = "flowhooks_callback_duration_seconds_count"
    assert delta(before, after, hist, outcome="rejected") == 4
    assert delta(before, after, hist, outcome="stored") == 3
    assert delta(before, after, "flowhooks_callback_duration_seconds_bucket",
                 outcome="stored", le="+Inf") == 3  # fmt: skip
    # What projection made of the three stored events.
    projected = "flowhooks_events_projected_total"
    assert delta(before, after, projected, status="processed") == 1
    assert delta(before, after, projected, status="ignored") == 1
    assert delta(before, after, projected, status="failed") == 1
    assert delta(before, after, "flowhooks_events_projection_failed_total") == 1


def test_pending_gauges_show_the_projector_lag(make_app: Any, engine: Engine) -> None:
    client = make_app(projector=False, sinch_webhook_secrets=(SECRET,)).test_client()
    samples = scrape(client)
    assert value(samples, "flowhooks_events_pending") == 0
    assert value(samples, "flowhooks_events_pending_oldest_age_seconds") == 0
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    body = fixture_bytes("message_inbound__text")
    append(engine, body, load_body(body), received_at=two_hours_ago)
    assert post_callback(client, FAILING_BODY.encode(), wait=False).status_code == 200
    samples = scrape(client)
    assert value(samples, "flowhooks_events_pending") == 2
    assert 2 * 3600 <= value(samples, "flowhooks_events_pending_oldest_age_seconds") < 3 * 3600
    project(engine)
    samples = scrape(client)
    assert value(samples, "flowhooks_events_pending") == 0
    assert value(samples, "flowhooks_events_pending_oldest_age_seconds") == 0


def test_failed_events_gauges_come_from_the_database(client: FlaskClient, engine: Engine) -> None:
    samples = scrape(client)
    assert value(samples, "flowhooks_database_up") == 1
    assert value(samples, "flowhooks_events_failed") == 0
    assert value(samples, "flowhooks_events_failed_oldest_age_seconds") == 0

    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    ingest(engine, FAILING_BODY.encode(), load_body(FAILING_BODY.encode()),
           received_at=two_hours_ago)  # fmt: skip
    other = json.dumps({"message_delivery_report": {"message_id": {}}}).encode()
    ingest(engine, other, load_body(other))
    samples = scrape(client)
    assert value(samples, "flowhooks_events_failed") == 2
    assert value(samples, "flowhooks_events_failed_oldest_age_seconds") >= 2 * 3600


def test_scrape_survives_a_database_outage(make_app: Any) -> None:
    app = make_app(database_url="postgresql+psycopg://127.0.0.1:1/none")
    samples = scrape(app.test_client())
    assert value(samples, "flowhooks_database_up") == 0
    assert ("flowhooks_events_failed", ()) not in samples


def test_flow_exchanges_are_counted_by_action_and_status(client: FlaskClient) -> None:
    before = scrape(client)
    observe_flow_exchange("INIT", 200, 0.02)
    observe_flow_exchange("data_exchange", 200, 0.05)
    observe_flow_exchange("data_exchange", 421, 0.001)
    observe_flow_exchange("'; DROP TABLE", 400, 0.001)  # never a label of its own
    after = scrape(client)
    total = "flowhooks_flow_requests_total"
    assert delta(before, after, total, action="INIT", status="200") == 1
    assert delta(before, after, total, action="data_exchange", status="200") == 1
    assert delta(before, after, total, action="data_exchange", status="421") == 1
    assert delta(before, after, total, action="other", status="400") == 1
    count = "flowhooks_flow_request_duration_seconds_count"
    assert delta(before, after, count, action="data_exchange") == 2


def test_token_protects_metrics(make_app: Any) -> None:
    client = make_app(metrics_token="s3cret-token").test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"] == "unauthorized"
        assert "s3cret-token" not in response.get_data(as_text=True)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    samples = scrape(client, Authorization="Bearer s3cret-token")
    assert value(samples, "flowhooks_database_up") == 1


def test_metrics_open_without_token(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 200


# ---------------------------------------------------------------- under gunicorn


class Gunicorn:
    """gunicorn with gunicorn.conf.py on an OS-chosen port, its output collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            # No control socket: its default path is shared by every gunicorn of this user.
            [str(ROOT / ".venv" / "bin" / "gunicorn"), "--config", "gunicorn.conf.py",
             "--no-control-socket", "wsgi:app"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.url = self._wait_for_port()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_port(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", line)
                if found:
                    return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError("gunicorn did not start:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)


@pytest.mark.slow
def test_metrics_add_up_across_gunicorn_workers(
    new_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    # About metrics, not storage: one run, on its own SQLite database.
    database_url = new_database_url("sqlite")
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    engine.dispose()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale file from an earlier run")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SINCH_WEBHOOK_SECRETS": SECRET,
        "WEB_CONCURRENCY": "2",
        "BIND": "127.0.0.1:0",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        # Recycle workers often: counts of workers that are gone must still add up.
        "GUNICORN_MAX_REQUESTS": "8",
        "LOG_FORMAT": "json",
    }
    _, stream = simulate(SimulationConfig(messages=5, seed=5, completion_rate=1.0))
    bodies = stream + stream[:4]  # four retries
    server = Gunicorn(env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:

            def post(body: bytes) -> int:
                headers = {"Content-Type": "application/json", **sign(body)}
                return http.post("/sinch/callbacks", content=body, headers=headers).status_code

            with ThreadPoolExecutor(max_workers=4) as pool:
                statuses = list(pool.map(post, bodies))
            # A query string (the usual place for a secret to leak) never reaches the logs.
            bad = [http.post("/sinch/callbacks?token=in-url-9f2", content=b,
                             headers=sign(b, "wrong")).status_code
                   for b in stream[:2]]  # fmt: skip
            samples = parse(http.get("/metrics").text)
    finally:
        server.stop()

    assert statuses == [200] * len(bodies) and bad == [401] * 2
    total = "flowhooks_callbacks_total"
    by_outcome: dict[str, float] = {}
    for (name, labels), n in samples.items():
        if name == total:
            outcome = dict(labels)["outcome"]
            by_outcome[outcome] = by_outcome.get(outcome, 0) + n
    assert by_outcome == {"stored": len(stream), "duplicate": 4, "rejected": 2}
    hist_count = sum(
        n for (name, _), n in samples.items() if name == "flowhooks_callback_duration_seconds_count"
    )
    assert hist_count == len(bodies) + 2
    # Several worker processes served (recycled every 8 requests) and were all counted.
    pids = {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
    assert len(pids) >= 3
    assert "999999.db" not in pids  # the master cleared the directory at start
    # One JSON log line per callback, from every worker, with no secret in any line.
    records = [json.loads(line) for line in server.lines if line.startswith("{")]
    callbacks = [r for r in records if r.get("logger") == "webhook.callback"]
    assert len(callbacks) == len(bodies) + 2
    assert not [line for line in server.lines if SECRET in line or "in-url-9f2" in line]
    access = [line for line in server.lines if '"POST /sinch/callbacks HTTP/1.1" 200' in line]
    rids = {c["request_id"] for c in callbacks}
    assert access and all(line.rsplit("rid=", 1)[1] in rids for line in access)
