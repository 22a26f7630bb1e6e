"""Send a checked flow message, record it in flow_sends, and join sends to outcomes.

Every send is recorded, accepted or not: ``accepted`` (with Sinch's message id),
``rejected`` (Sinch answered 4xx; ``error`` holds its text), ``failed`` (no
acceptance after every retry) or ``unknown`` (the request may have reached Sinch
but no answer came back). An accepted row is keyed by message_id, the same key
MESSAGE_SUBMIT uses, so the callback completes the row instead of adding one, in
whichever order the two arrive.

flow_sends.flow_token is not unique in the schema (other senders reuse tokens, e.g.
templates default to "unused"); this sender keeps its own tokens unique by making
them unguessable and by refusing a chosen token that an earlier send already used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, case, exists, func, or_, select

from webhook.db.engine import upsert_insert
from webhook.db.errors import describe_error
from webhook.db.models import FlowResponse, FlowSend, MessageStatus
from webhook.flows.client import (
    ConversationClient,
    SinchOutcomeUnknown,
    SinchRejected,
    SinchUnavailable,
)
from webhook.flows.message import SendRequest

ACCEPTED, REJECTED, FAILED, UNKNOWN = "accepted", "rejected", "failed", "unknown"
# A token on a row with one of these statuses never reached a user, so it may be used again.
_TOKEN_FREE_STATUSES = (REJECTED,)
# Columns a MESSAGE_SUBMIT may already have filled when our row arrives second: its
# values win (they are what Sinch actually submitted); ours fill the gaps.
_KEEP_CALLBACK = (
    "flow_id", "flow_token", "flow_mode", "flow_cta", "flow_action", "screen", "channel",
    "identity", "contact_id", "conversation_id", "correlation_id",
)  # fmt: skip


class TokenInUse(ValueError):
    """A chosen flow token was already used by an earlier send."""


class NotRecorded(Exception):
    """Sinch accepted the message but the database refused the record."""


@dataclass(frozen=True, slots=True)
class SendOutcome:
    status: str  # ACCEPTED, REJECTED, FAILED or UNKNOWN
    flow_token: str
    message_id: str | None = None
    error: str | None = None


def tokens_in_use(conn: Connection, tokens: Iterable[str]) -> set[str]:
    """Which of ``tokens`` an earlier send (not a rejected one) already used."""
    wanted = sorted(set(tokens))
    found: set[str] = set()
    t = FlowSend.__table__.c
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = select(t.flow_token).where(
            t.flow_token.in_(chunk), t.send_status.not_in(_TOKEN_FREE_STATUSES)
        )
        found.update(row[0] for row in conn.execute(query))
    return found


def record_send(
    conn: Connection,
    req: SendRequest,
    *,
    status: str,
    sent_at: datetime,
    message_id: str | None = None,
    error: str | None = None,
) -> None:
    """Insert one send; an accepted one merges with a MESSAGE_SUBMIT row of the same id."""
    values: dict[str, Any] = {
        "message_id": message_id,
        "flow_id": req.flow_id,
        "flow_token": req.flow_token,
        "flow_mode": req.flow_mode,
        "flow_cta": req.flow_cta,
        "flow_action": req.flow_action,
        "screen": req.screen,
        "channel": req.channel,
        "identity": req.identity,
        "contact_id": req.contact_id,
        "correlation_id": req.correlation_id,
        "send_status": status,
        "error": error,
        "request_body": req.body,
        "sent_at": sent_at,
    }
    stmt = upsert_insert(conn.dialect.name, FlowSend).values(**values)
    if message_id is None:
        conn.execute(stmt)
        return
    t, x = FlowSend.__table__.c, stmt.excluded
    merged: dict[str, Any] = {col: func.coalesce(t[col], x[col]) for col in _KEEP_CALLBACK}
    merged.update(
        send_status=x.send_status, error=x.error, request_body=x.request_body, sent_at=x.sent_at
    )
    conn.execute(stmt.on_conflict_do_update(index_elements=["message_id"], set_=merged))


def send_flow(engine: Engine, client: ConversationClient, req: SendRequest) -> SendOutcome:
    """Send one request and record the outcome (one commit).

    SinchAuthError and SinchConfigError propagate unrecorded: they say nothing about
    this message and would fail every other one the same way.
    """
    # Checked for generated tokens too: it costs one indexed lookup and proves the
    # database can be read before Sinch is asked to send anything.
    with engine.connect() as conn:
        if tokens_in_use(conn, [req.flow_token]):
            raise TokenInUse(
                f"flow token {req.flow_token!r} was already used by an earlier send; "
                "flow tokens must be unique (leave the token out to generate one)"
            )
    message_id: str | None = None
    error: str | None = None
    try:
        message_id = client.send_message(req.json_bytes()).message_id
        status = ACCEPTED
    except SinchRejected as err:
        status, error = REJECTED, str(err)
    except SinchOutcomeUnknown as err:
        status, error = UNKNOWN, str(err)
    except SinchUnavailable as err:
        status, error = FAILED, str(err)
    try:
        with engine.begin() as conn:
            record_send(
                conn,
                req,
                status=status,
                message_id=message_id,
                error=error,
                sent_at=datetime.now(UTC),
            )
    except Exception as err:
        if status != ACCEPTED:
            raise
        raise NotRecorded(
            f"Sinch accepted message {message_id} (flow token {req.flow_token}) but it could "
            f"not be recorded: {describe_error(err)}"
        ) from err
    return SendOutcome(status, req.flow_token, message_id, error)


def journeys() -> Select[Any]:
    """Each flow send with its current delivery status and its completion, if any.

    Status joins by message_id. A completion joins by ``reply_to_message_id``; when
    that is missing, or names no send we know (it may be WhatsApp's own id), it
    joins by flow_token instead.
    """
    fs = FlowSend.__table__
    ms = MessageStatus.__table__
    fr = FlowResponse.__table__
    other = FlowSend.__table__.alias("other_send")
    reply_to_known = exists().where(other.c.message_id == fr.c.reply_to_message_id)
    by_reply = and_(fs.c.message_id.is_not(None), fr.c.reply_to_message_id == fs.c.message_id)
    by_token = and_(
        fs.c.flow_token.is_not(None),
        fr.c.flow_token == fs.c.flow_token,
        or_(fr.c.reply_to_message_id.is_(None), ~reply_to_known),
    )
    return (
        select(
            fs.c.id.label("send_id"),
            fs.c.message_id,
            fs.c.flow_id,
            fs.c.flow_token,
            fs.c.send_status,
            fs.c.error.label("send_error"),
            fs.c.channel,
            fs.c.identity,
            fs.c.contact_id,
            fs.c.sent_at,
            fs.c.submitted_at,
            ms.c.status.label("delivery_status"),
            ms.c.queued_at,
            ms.c.delivered_at,
            ms.c.read_at,
            ms.c.failed_at,
            ms.c.reason_code,
            fr.c.message_id.label("completion_message_id"),
            fr.c.completed_at,
            fr.c.response,
            case(
                (fr.c.message_id.is_(None), None),
                (by_reply, "reply_to"),
                else_="flow_token",
            ).label("completion_joined_by"),
        )
        .select_from(
            fs.outerjoin(ms, ms.c.message_id == fs.c.message_id).outerjoin(
                fr, or_(by_reply, by_token)
            )
        )
        .order_by(fs.c.id, fr.c.completed_at)
    )


def send_journeys(
    conn: Connection, *, message_id: str | None = None, flow_token: str | None = None
) -> list[dict[str, Any]]:
    """Joined rows (see ``journeys``) for one message id and/or flow token, or all."""
    query = journeys()
    fs = FlowSend.__table__.c
    if message_id is not None:
        query = query.where(fs.message_id == message_id)
    if flow_token is not None:
        query = query.where(fs.flow_token == flow_token)
    return [dict(row._mapping) for row in conn.execute(query)]
