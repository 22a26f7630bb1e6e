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

from webhook.core.state import state
from webhook.db.errors import UNAVAILABLE_ERRORS
from webhook.db.events import FAILED, PENDING
from webhook.db.models import CallbackEvent
from webhook.http.errors import error_response
from webhook.projection.projector import on_projected
from webhook.projection.rules import Parsed

PREFIX = "flowhooks"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Why a callback was rejected (nothing stored), by HTTP status.
REJECT_REASONS: dict[int, str] = {
    400: "invalid_body",
    408: "body_timeout",
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
    "Time to answer one callback (verify, store, commit), by outcome.",
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

PROJECTED = Counter(
    f"{PREFIX}_events_projected",
    "Stored callbacks projected, by the status they ended in (processed, ignored, failed).",
    ["status"],
)
PROJECTION_FAILED = Counter(
    f"{PREFIX}_events_projection_failed",
    "Stored callbacks the projector marked failed (also counted in events_projected).",
)

bp = Blueprint("metrics", __name__)


def _count_projected(events: list[Parsed]) -> None:
    for event in events:
        PROJECTED.labels(event.fields.status).inc()
        if event.fields.status == FAILED:
            PROJECTION_FAILED.inc()


on_projected(_count_projected)


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


class EventBacklogCollector(Collector):
    """Events pending projection and events failed, with the age of the oldest of each,
    read from the database at scrape time (so any worker, or none, may answer)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_database_up", "1 if the database answered the scrape's query, else 0."
        )
        try:
            with self.engine.connect() as conn:
                counts = {
                    status: conn.execute(
                        select(func.count(), func.min(CallbackEvent.received_at)).where(
                            CallbackEvent.status == status
                        )
                    ).one()
                    for status in (PENDING, FAILED)
                }
        except UNAVAILABLE_ERRORS:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = datetime.now(UTC)
        help_texts = {
            PENDING: "waiting for the projector (its lag)",
            FAILED: "waiting for a fix and a replay",
        }
        for status, (count, oldest) in counts.items():
            if oldest is not None and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            age = (now - oldest).total_seconds() if oldest is not None else 0.0
            yield GaugeMetricFamily(
                f"{PREFIX}_events_{status}",
                f"Stored callbacks in status '{status}' ({help_texts[status]}).",
                value=count,
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_events_{status}_oldest_age_seconds",
                f"Age of the oldest callback in status '{status}'; 0 when there is none.",
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
    registry.register(EventBacklogCollector(engine))
    return bytes(generate_latest(registry))


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus scrape endpoint; needs `Authorization: Bearer METRICS_TOKEN` if set."""
    st = state()
    token = st.settings.ops.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.reveal().encode()
        ):
            return error_response(
                401,
                "unauthorized",
                "a bearer token is required for /metrics",
                WWW_Authenticate='Bearer realm="metrics"',
            )
    return Response(render(st.engine), content_type=CONTENT_TYPE_LATEST)
