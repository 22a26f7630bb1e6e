"""A small known dataset for the reports, with every awkward case, and its expected answers.

Built the way production builds it: signed callbacks posted to the endpoint, out of
order and with duplicates; only what no callback can create (sends made by our own
sender, a FAILED report without event_time) is written another way.

Window used by the tests: [2026-03-01, 2026-03-04).

flow A (FLOW_A)                                   flow B (FLOW_B)
  M1 sent_at 03-02 09:00 (our sender; SUBMIT      M5 03-03 09:00  Q D R, completed by
     later) Q D R, READ first, duplicates;             flow_token only (no reply_to),
     completed (reply_to) 630.25 s later               completion posted before the send
  M2 03-02 10:00  Q R  (READ, no DELIVERED)       M6 03-03 10:00  Q D, token "shared"
  M3 03-02 11:00  Q D F  (FAILED after DELIVERED) M7 03-03 12:00  SWITCHING, Q (SMS),
  R1 03-02 12:00  rejected by the API                  token "shared"; the "shared"
  M4 03-03 08:00  Q F  (OUTSIDE_ALLOWED_...)           completion at 11:00 is M6's
  M9 02-20 09:00  Q D R, completed 03-02 (the     M8 03-03 13:00  no report at all
     send is outside the window, the completion inside)
not a flow send: X1 FAILED (RATE_LIMITED) with no event_time, received 03-02 15:00
completion C9 on 03-03 answers nothing we sent (unknown reply_to, unknown token)
an EVENT_DELIVERY FAILED (events are not messages: not a delivery failure)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import Engine, insert

from tests.helpers import SECRET, post_callback
from webhook import create_app
from webhook.core.settings import Settings
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.db.models import FlowSend
from webhook.ingest.body import load_body
from webhook.projection.ingest import ingest

FLOW_A = "1000000000000001"
FLOW_B = "2000000000000002"
SINCE = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = datetime(2026, 3, 4, tzinfo=UTC)
BASE = {
    "app_id": "01K94JHH80F86PQMSGMGZ6MS3E",
    "project_id": "7f3c2a9e-5b1d-4c8e-9a61-2d4e8b0f13c7",
}


def at(day: int, hour: int, minute: int = 0, second: int = 0, micro: int = 0,
       month: int = 3) -> datetime:  # fmt: skip
    return datetime(2026, month, day, hour, minute, second, micro, tzinfo=UTC)


def ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _body(key: str, payload: dict[str, Any], when: datetime | None) -> bytes:
    doc: dict[str, Any] = {**BASE, key: payload}
    if when is not None:
        doc["event_time"] = ts(when)
        doc["accepted_time"] = ts(when + timedelta(milliseconds=40))
    return json.dumps(doc).encode()


def _identity(n: int, channel: str = "WHATSAPP") -> dict[str, str]:
    return {"channel": channel, "identity": f"+55 11 9{n:04d}-0000", "app_id": ""}


def submit(mid: str, flow_id: str, token: str, when: datetime, n: int) -> bytes:
    flow = {"flow_id": flow_id, "flow_token": token, "flow_mode": "published",
            "flow_cta": "Open", "flow_action": "navigate",
            "flow_action_payload": {"screen": "WELCOME"}}  # fmt: skip
    payload = {"message_id": mid, "conversation_id": f"conv{n}", "contact_id": f"contact{n}",
               "channel_identity": _identity(n),
               "submitted_message": {"channel_specific_message": {"WHATSAPP": {
                   "message_type": "FLOWS", "message": flow}}}}  # fmt: skip
    return _body("message_submit_notification", payload, when)


def report(mid: str, status: str, when: datetime | None, n: int, reason: str | None = None,
           channel: str = "WHATSAPP") -> bytes:  # fmt: skip
    payload: dict[str, Any] = {"message_id": mid, "conversation_id": f"conv{n}",
                               "contact_id": f"contact{n}", "status": status,
                               "channel_identity": _identity(n, channel)}  # fmt: skip
    if reason:
        payload["reason"] = {"code": reason, "description": "the channel said no",
                             "sub_code": "UNSPECIFIED_SUB_CODE"}  # fmt: skip
    return _body("message_delivery_report", payload, when)


def completion(inbound_id: str, token: str, reply_to: str | None, when: datetime, n: int,
               answers: dict[str, Any]) -> bytes:  # fmt: skip
    response = json.dumps({"flow_token": token, **answers})
    contact_message: dict[str, Any] = {"channel_specific_message": {
        "message_type": "nfm_reply", "message": {"type": "nfm_reply", "nfm_reply": {
            "name": "flow", "body": "Sent", "response_json": response}}}}  # fmt: skip
    if reply_to:
        contact_message["reply_to"] = {"message_id": reply_to}
    payload = {"id": inbound_id, "direction": "TO_APP", "contact_message": contact_message,
               "channel_identity": _identity(n), "conversation_id": f"conv{n}",
               "contact_id": f"contact{n}", "accept_time": ts(when)}  # fmt: skip
    return _body("message", payload, when)


def event_failed(event_id: str, when: datetime) -> bytes:
    payload = {"event_id": event_id, "status": "FAILED", "channel_identity": _identity(99),
               "reason": {"code": "CHANNEL_FAILURE"}}  # fmt: skip
    return _body("event_delivery_report", payload, when)


ANSWERS_1 = {"full_name": "Ana", "slot": "09:00", "symptoms": ["fever", "cough"],
             "consent": True}  # fmt: skip
ANSWERS_5 = {"full_name": "Bia", "slot": "10:30", "address": {"city": "Recife"}}
ANSWERS_6 = {"full_name": "Caio", "slot": "14:00", "rating": 5}
ANSWERS_9 = {"full_name": "Duda", "note": 'a, "quoted"\nline'}
ANSWERS_M9 = {"full_name": "Enzo", "consent": False}


def callbacks() -> list[bytes]:
    """Every callback body, in the (scrambled) order they are posted."""
    return [
        # M1: READ before QUEUED and DELIVERED; the READ twice (a retry: same bytes),
        # and a later QUEUED copy with a later event_time (another body, same report).
        report("M1", "READ", at(2, 9, 5), 1),
        report("M1", "READ", at(2, 9, 5), 1),
        report("M1", "QUEUED_ON_CHANNEL", at(2, 9, 0, 1), 1),
        report("M1", "DELIVERED", at(2, 9, 1), 1),
        report("M1", "QUEUED_ON_CHANNEL", at(2, 9, 3), 1),
        completion("C1", "tok1", "M1", at(2, 9, 10, 30, 250000), 1, ANSWERS_1),
        submit("M1", FLOW_A, "tok1", at(2, 9, 0, 1, 500000), 1),
        # M2: READ without DELIVERED.
        submit("M2", FLOW_A, "tok2", at(2, 10), 2),
        report("M2", "READ", at(2, 10, 2), 2),
        report("M2", "QUEUED_ON_CHANNEL", at(2, 10, 0, 1), 2),
        # M3: FAILED after DELIVERED (the FAILED arrives first).
        report("M3", "FAILED", at(2, 11, 3), 3, "CHANNEL_FAILURE"),
        submit("M3", FLOW_A, "tok3", at(2, 11), 3),
        report("M3", "QUEUED_ON_CHANNEL", at(2, 11, 0, 1), 3),
        report("M3", "DELIVERED", at(2, 11, 1), 3),
        # M4: failed.
        submit("M4", FLOW_A, "tok4", at(3, 8), 4),
        report("M4", "QUEUED_ON_CHANNEL", at(3, 8, 0, 1), 4),
        report("M4", "FAILED", at(3, 8, 1), 4, "OUTSIDE_ALLOWED_SENDING_WINDOW"),
        report("M4", "FAILED", at(3, 8, 1), 4, "OUTSIDE_ALLOWED_SENDING_WINDOW"),
        # M5: the completion (no reply_to) arrives before anything else of M5.
        completion("C5", "tok5", None, at(3, 9, 20), 5, ANSWERS_5),
        submit("M5", FLOW_B, "tok5", at(3, 9), 5),
        report("M5", "QUEUED_ON_CHANNEL", at(3, 9, 0, 1), 5),
        report("M5", "DELIVERED", at(3, 9, 1), 5),
        report("M5", "READ", at(3, 9, 2), 5),
        # M6 and M7 share a token; the completion at 11:00 answers M6 (latest before it).
        submit("M6", FLOW_B, "shared", at(3, 10), 6),
        submit("M7", FLOW_B, "shared", at(3, 12), 7),
        completion("C67", "shared", None, at(3, 11), 6, ANSWERS_6),
        report("M6", "QUEUED_ON_CHANNEL", at(3, 10, 0, 1), 6),
        report("M6", "DELIVERED", at(3, 10, 1), 6),
        report("M7", "SWITCHING_CHANNEL", at(3, 12, 0, 1), 7, "RECIPIENT_NOT_REACHABLE"),
        report("M7", "QUEUED_ON_CHANNEL", at(3, 12, 0, 2), 7, channel="SMS"),
        # M8: sent, nothing heard.
        submit("M8", FLOW_B, "tok8", at(3, 13), 8),
        # M9: sent before the window, completed inside it.
        submit("M9", FLOW_A, "tok9", at(20, 9, month=2), 9),
        report("M9", "QUEUED_ON_CHANNEL", at(20, 9, 0, 1, month=2), 9),
        report("M9", "DELIVERED", at(20, 9, 1, month=2), 9),
        report("M9", "READ", at(20, 9, 2, month=2), 9),
        completion("C9B", "tok9", "M9", at(2, 8), 9, ANSWERS_M9),
        # A completion that answers nothing we know.
        completion("C9", "tok-unknown", "NOT-OURS", at(3, 15), 10, ANSWERS_9),
        event_failed("E1", at(2, 12)),
    ]


def build(client: FlaskClient, engine: Engine) -> None:
    """Load the dataset: our sender's rows, then every callback through the endpoint."""
    with engine.begin() as conn:
        conn.execute(
            insert(FlowSend),
            [
                {
                    "message_id": "M1",
                    "flow_id": FLOW_A,
                    "flow_token": "tok1",
                    "send_status": "accepted",
                    "sent_at": at(2, 9),
                },
                {
                    "message_id": None,
                    "flow_id": FLOW_A,
                    "flow_token": "tokR",
                    "send_status": "rejected",
                    "error": "400 invalid",
                    "sent_at": at(2, 12),
                },
            ],
        )
    for body in callbacks():
        response = post_callback(client, body)
        assert response.status_code == 200, response.get_json()
    # X1: not a flow send; its FAILED report has no event_time (placed by received_at).
    body = report("X1", "FAILED", None, 11, "RATE_LIMITED")
    result = ingest(engine, body, load_body(body), received_at=at(2, 15))
    assert result.status == "processed"


_LOADED: dict[str, str] = {}


def loaded_database(backend: str, new_database_url: Callable[[str], str]) -> str:
    """URL of a database holding the dataset, built once per backend and test session.

    Tests only read it, so every test of the reports shares one copy.
    """
    if backend not in _LOADED:
        url = new_database_url(backend)
        engine = make_engine(url)
        migrate.upgrade(engine)
        settings = Settings().with_overrides(database_url=url, sinch_webhook_secrets=(SECRET,))
        app = create_app(settings)
        try:
            build(app.test_client(), engine)
        finally:
            app.extensions["webhook"].engine.dispose()
            engine.dispose()
        _LOADED[backend] = url
    return _LOADED[backend]


def funnel_row(flow_id: str | None, sent: int, rejected: int, queued: int, delivered: int,
               read: int, completed: int, failed: int, failed_after_delivery: int,
               day: str | None = None) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"day": day} if day else {}
    row.update(flow_id=flow_id, sent=sent, rejected=rejected, queued=queued,
               delivered=delivered, read=read, completed=completed, failed=failed,
               failed_after_delivery=failed_after_delivery,
               completion_rate=round(completed / sent, 4) if sent else None)  # fmt: skip
    return row


# Hand-computed from the table in the module docstring.
FUNNEL = [
    funnel_row(FLOW_A, sent=4, rejected=1, queued=4, delivered=3, read=2, completed=1,
               failed=1, failed_after_delivery=1),
    funnel_row(FLOW_B, sent=4, rejected=0, queued=3, delivered=2, read=1, completed=2,
               failed=0, failed_after_delivery=0),
]  # fmt: skip
FUNNEL_DAILY = [
    funnel_row(FLOW_A, 3, 1, 3, 3, 2, 1, 0, 1, day="2026-03-02"),
    funnel_row(FLOW_A, 1, 0, 1, 0, 0, 0, 1, 0, day="2026-03-03"),
    funnel_row(FLOW_B, 4, 0, 3, 2, 1, 2, 0, 0, day="2026-03-03"),
]
# (message_id, flow_id, send, matched_by, seconds_to_complete) in completion order.
COMPLETIONS = [
    ("C9B", FLOW_A, "M9", "reply_to", (at(2, 8) - at(20, 9, month=2)).total_seconds()),
    ("C1", FLOW_A, "M1", "reply_to", 630.25),
    ("C5", FLOW_B, "M5", "flow_token", 1200.0),
    ("C67", FLOW_B, "M6", "flow_token", 3600.0),
    ("C9", None, None, None, None),
]
# (channel, reason_code, failures, after_delivery)
FAILURES = [
    ("WHATSAPP", "CHANNEL_FAILURE", 1, 1),
    ("WHATSAPP", "OUTSIDE_ALLOWED_SENDING_WINDOW", 1, 0),
    ("WHATSAPP", "RATE_LIMITED", 1, 0),
]
FAILURES_DAILY = [
    ("2026-03-02", "WHATSAPP", "CHANNEL_FAILURE", 1, 1),
    ("2026-03-02", "WHATSAPP", "RATE_LIMITED", 1, 0),
    ("2026-03-03", "WHATSAPP", "OUTSIDE_ALLOWED_SENDING_WINDOW", 1, 0),
]
# message_id -> (status, failed_after_delivery, completed) for the timeline, in send order.
TIMELINE = {
    "M1": ("READ", False, True),
    "M2": ("READ", False, False),
    "M3": ("DELIVERED", True, False),
    "M4": ("FAILED", False, False),
    "M5": ("READ", False, True),
    "M6": ("DELIVERED", False, True),
    "M7": ("QUEUED_ON_CHANNEL", False, False),
    "M8": (None, None, False),
}
