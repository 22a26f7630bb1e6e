"""message_status: the same row whatever order, duplication or concurrency."""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.helpers import count, rows
from webhook.ingest.body import load_body
from webhook.projection.ingest import ingest

MID = "01KKBFJYQPYQWF3VT0NDA4XKVD"
TIMES = {
    "QUEUED_ON_CHANNEL": "2026-03-10T09:00:00.100Z",
    "SWITCHING_CHANNEL": "2026-03-10T09:00:00.500Z",
    "DELIVERED": "2026-03-10T09:00:02Z",
    "READ": "2026-03-10T09:00:14Z",
    "FAILED": "2026-03-10T09:00:30Z",
}


def report(status: str, channel: str = "WHATSAPP", message_id: str = MID) -> bytes:
    payload: dict[str, Any] = {
        "app_id": "A",
        "event_time": TIMES[status],
        "message_delivery_report": {
            "message_id": message_id,
            "status": status,
            "channel_identity": {"channel": channel, "identity": "5511987654321"},
            "contact_id": "C1",
            "conversation_id": "V1",
        },
    }
    if status in {"FAILED", "SWITCHING_CHANNEL"}:
        payload["message_delivery_report"]["reason"] = {"code": f"{status}_REASON"}
    return json.dumps(payload).encode()


def status_row(engine: Engine) -> dict[str, Any]:
    [row] = rows(engine, "message_status", "message_id")
    row.pop("updated_at")
    return row


def feed(engine: Engine, statuses: tuple[str, ...]) -> dict[str, Any]:
    for status in statuses:
        body = report(status)
        ingest(engine, body, load_body(body))
    return status_row(engine)


def reset(engine: Engine) -> None:
    from tests.conftest import truncate_all

    truncate_all(engine)


CASES = [
    (("QUEUED_ON_CHANNEL", "DELIVERED", "READ"), "READ", False),
    (("QUEUED_ON_CHANNEL", "DELIVERED"), "DELIVERED", False),
    (("QUEUED_ON_CHANNEL", "READ"), "READ", False),
    (("QUEUED_ON_CHANNEL", "FAILED"), "FAILED", False),
    (("QUEUED_ON_CHANNEL", "DELIVERED", "FAILED"), "DELIVERED", True),
    (("QUEUED_ON_CHANNEL", "DELIVERED", "READ", "FAILED"), "READ", True),
    (("SWITCHING_CHANNEL", "QUEUED_ON_CHANNEL", "DELIVERED"), "DELIVERED", False),
    (("SWITCHING_CHANNEL",), "SWITCHING_CHANNEL", False),
]


@pytest.mark.parametrize(("statuses", "final", "flag"), CASES)
def test_every_permutation_gives_the_same_row(
    engine: Engine, statuses: tuple[str, ...], final: str, flag: bool
) -> None:
    results = []
    for order in itertools.permutations(statuses):
        reset(engine)
        results.append(feed(engine, order))
    first = results[0]
    assert all(r == first for r in results), "order changed the row"
    assert first["status"] == final
    assert first["failed_after_delivery"] is flag
    assert first["queued_at"] is not None or "QUEUED_ON_CHANNEL" not in statuses


def test_duplicates_and_replays_do_not_change_the_row(engine: Engine) -> None:
    once = feed(engine, ("QUEUED_ON_CHANNEL", "DELIVERED", "READ"))
    again = feed(engine, ("READ", "QUEUED_ON_CHANNEL", "DELIVERED", "QUEUED_ON_CHANNEL"))
    assert once == again
    assert count(engine, "delivery_reports") == 3


def test_failed_reason_is_kept(engine: Engine) -> None:
    row = feed(engine, ("SWITCHING_CHANNEL", "FAILED"))
    assert row["status"] == "FAILED"
    assert row["reason_code"] == "FAILED_REASON"
    assert row["status_rank"] == 2


def test_same_status_on_two_channels_is_two_history_rows(engine: Engine) -> None:
    for channel in ("WHATSAPP", "SMS"):
        body = report("QUEUED_ON_CHANNEL", channel)
        ingest(engine, body, load_body(body))
    assert count(engine, "delivery_reports") == 2
    assert count(engine, "message_status") == 1


def test_concurrent_writers_agree(engine: Engine) -> None:
    """Reports for many messages from several threads at once end in the lattice's answer."""
    statuses = ("QUEUED_ON_CHANNEL", "DELIVERED", "READ", "FAILED")
    bodies = [report(s, message_id=f"M{i:03d}") for i in range(30) for s in statuses]
    bodies = bodies[::-1] + bodies  # every report twice, in opposite orders
    errors: list[BaseException] = []

    def work(chunk: list[bytes]) -> None:
        try:
            for body in chunk:
                ingest(engine, body, load_body(body))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(bodies[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = rows(engine, "message_status", "message_id")
    assert len(result) == 30
    assert {(r["status"], r["failed_after_delivery"]) for r in result} == {("READ", True)}
    assert count(engine, "delivery_reports") == 120
