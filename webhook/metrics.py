"""Prometheus metrics, correct under several gunicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it), every worker writes
its counters to memory-mapped files in that directory and a scrape adds them up
(prometheus-client's multi-process mode). Without it (tests, `flask run`) the
ordinary in-process registry is used. The failed-event gauges are not counted in
the workers: each scrape reads them from the database with one indexed query.

Label values are bounded: triggers come from a fixed table, outcomes and reasons
from the constants below, flow actions are folded into a known set.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from datetime import UTC, datetime

from flask import Blueprint, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from webhook.errors import error_response
from webhook.ingest import UNAVAILABLE_ERRORS
from webhook.models import CallbackEvent
from webhook.state import state

PREFIX = "flowhooks"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Outcomes of one callback request: stored (and projected), duplicate, stored but
# ignored (unknown trigger), stored as failed, rejected (nothing stored), error (500).
OUTCOMES = ("stored", "duplicate", "ignored", "failed", "rejected", "error")
# Why a callback was rejected (nothing stored), by HTTP status.
REJECT_REASONS: dict[int, str] = {
    400: "invalid_body",
    401: "bad_signature",
    413: "too_large",
    503: "storage_unavailable",
}
FLOW_ACTIONS = frozenset({"ping", "INIT", "data_exchange", "BACK", "navigate", "complete"})

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CALLBACKS = Counter(
    f"{PREFIX}_callbacks",
    "Callbacks received, by trigger, outcome and (for rejected ones) reason.",
    ["trigger", "outcome", "reason"],
)
CALLBACK_SECONDS = Histogram(
    f"{PREFIX}_callback_duration_seconds",
    "Time to answer one callback (verify, store, project, commit), by outcome.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
FLOW_REQUESTS = Counter(
    f"{PREFIX}_flow_requests",
    "Requests to the WhatsApp Flows data endpoint, by action and HTTP status.",
    ["action", "status"],
)
FLOW_SECONDS = Histogram(
    f"{PREFIX}_flow_request_duration_seconds",
    "Time to answer one Flows data endpoint request, by action.",
    ["action"],
    buckets=LATENCY_BUCKETS,
)

bp = Blueprint("metrics", __name__)


def observe_callback(trigger: str, outcome: str, reason: str, seconds: float) -> None:
    """Count one callback request and its latency (two cheap operations)."""
    CALLBACKS.labels(trigger, outcome, reason).inc()
    CALLBACK_SECONDS.labels(outcome).observe(seconds)


def flow_action_label(action: object) -> str:
    """The action as a label value; anything unexpected becomes "other"."""
    return action if isinstance(action, str) and action in FLOW_ACTIONS else "other"


def observe_flow_exchange(action: object, status: int, seconds: float) -> None:
    """Count one Flows data endpoint request: its action, HTTP status and latency."""
    label = flow_action_label(action)
    FLOW_REQUESTS.labels(label, str(int(status))).inc()
    FLOW_SECONDS.labels(label).observe(seconds)


class FailedEventsCollector(Collector):
    """Events waiting in `failed` and the age of the oldest, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_database_up", "1 if the database answered the scrape's query, else 0."
        )
        try:
            with self.engine.connect() as conn:
                query = select(func.count(), func.min(CallbackEvent.received_at)).where(
                    CallbackEvent.status == "failed"
                )
                failed, oldest = conn.execute(query).one()
        except UNAVAILABLE_ERRORS:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            f"{PREFIX}_events_failed",
            "Stored callbacks in status 'failed' (waiting for a fix and a replay).",
            value=failed,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_events_failed_oldest_age_seconds",
            "Age of the oldest callback in status 'failed'; 0 when there is none.",
            value=max(age, 0.0),
        )


class _Forward(Collector):
    """Expose another registry's metrics inside a per-scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from self.source.collect()


def render(engine: Engine) -> bytes:
    """Every metric in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        # The constructor registers itself; prometheus-client leaves it unannotated.
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(FailedEventsCollector(engine))
    return bytes(generate_latest(registry))


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus scrape endpoint; needs `Authorization: Bearer METRICS_TOKEN` if set."""
    st = state()
    token = st.settings.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            return error_response(
                401,
                "unauthorized",
                "a bearer token is required for /metrics",
                WWW_Authenticate='Bearer realm="metrics"',
            )
    return Response(render(st.engine), content_type=CONTENT_TYPE_LATEST)
