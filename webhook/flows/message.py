"""Build and check a WhatsApp Flows send request for the Conversation API (pure).

``build_request`` turns a ``FlowMessage`` into the exact JSON body of
``POST /v1/projects/{project}/messages:send``: the FLOWS ``channel_specific_message``
of the shared spec (sinch-conversation-callbacks.md §7.2), the same shape Sinch
echoes back in MESSAGE_SUBMIT. Every rule is checked before anything is sent; all
problems are collected and raised together in one ``InvalidFlowMessage``. The
rules and their sources are listed in docs/sending.md.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from webhook.flows.emoji import find_emoji
from webhook.ingest.fields import normalize_identity

MODES = ("draft", "published")
ACTIONS = ("navigate", "data_exchange")
HEADER_TYPES = ("text", "image", "video", "document")
MEDIA_HEADER_TYPES = HEADER_TYPES[1:]
CHANNEL = "WHATSAPP"

# WhatsApp / Sinch limits (whatsapp-flows.md §7, sinch-conversation-callbacks.md §7.2).
MAX_CTA = 20
MAX_BODY = 1024
MAX_HEADER_TEXT = 60
MAX_FOOTER = 60
MAX_METADATA = 1024
MAX_CORRELATION_ID = 128
# Sizes of the flow_sends columns the send is recorded in (webhook/models.py): a
# longer value would be accepted by Sinch and then fail to be recorded.
MAX_FLOW_ID = 64
MAX_CONTACT_ID = 64
MAX_SCREEN = 128
MAX_TOKEN = 255
# ITU-T E.164: at most 15 digits including the country code.
MIN_MSISDN_DIGITS, MAX_MSISDN_DIGITS = 7, 15

TOKEN_PREFIX = "ftk_"
_TTL = re.compile(r"^\s*(\d+)\s*s?\s*$")


@dataclass(frozen=True, slots=True)
class FlowMessage:
    """What to send: the fields of a Flows message and its recipient (unchecked)."""

    flow_id: str | None = None
    cta: str | None = None
    body: str | None = None
    # Recipient: exactly one of a WhatsApp number or a Sinch contact id.
    to: str | None = None
    contact_id: str | None = None
    # Header: text (``header`` alone, or header_type "text"), or a media link.
    header: str | None = None
    header_type: str | None = None
    header_url: str | None = None
    footer: str | None = None
    screen: str | None = None
    data: Any = None
    mode: str = "published"
    action: str = "navigate"
    # None: a new unguessable token is generated.
    token: str | None = None
    # None: the body text doubles as the text fallback; "": no text fallback at all.
    fallback_text: str | None = None
    metadata: str | None = None
    correlation_id: str | None = None
    # Seconds (int), or the API's own form "86400s".
    ttl: int | str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a message; ``field`` names the payload field."""

    field: str
    message: str

    def __str__(self) -> str:
        return self.message


class InvalidFlowMessage(ValueError):
    """The message breaks one or more rules; ``problems`` lists every one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(p.message for p in self.problems))


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A checked request: the body to POST and what to record about it."""

    body: dict[str, Any]
    flow_token: str
    token_generated: bool
    flow_id: str
    flow_mode: str
    flow_cta: str
    flow_action: str
    screen: str | None
    channel: str
    identity: str | None
    contact_id: str | None
    correlation_id: str | None

    def json_bytes(self) -> bytes:
        """The exact bytes sent (and printed by a dry run)."""
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


def new_flow_token() -> str:
    """An unguessable flow token (192 random bits), e.g. ``ftk_3q2...``."""
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def normalize_number(number: str) -> str:
    """A WhatsApp number as the projections store it (webhook.ingest.fields, the one
    normaliser): digits only, no '+', leading '00', spaces, dashes or dots."""
    return normalize_identity("WHATSAPP", number) or ""


class _Problems(list[Problem]):
    def add(self, field: str, message: str) -> None:
        self.append(Problem(field, message))

    def text(
        self, field: str, label: str, value: str | None, limit: int, required: str | None = None
    ) -> bool:
        """Check an optional (or, with ``required``, mandatory) text; True if it is fine."""
        if value is None:
            if required:
                self.add(field, required)
            return required is None
        if not value.strip():
            self.add(field, f"{label} is empty")
            return False
        if len(value) > limit:
            self.add(field, f"{label} is {len(value)} characters; at most {limit} allowed")
            return False
        return True


def _check_recipient(m: FlowMessage, problems: _Problems) -> None:
    if (m.to is None) == (m.contact_id is None):
        which = "neither" if m.to is None else "both"
        problems.add(
            "recipient",
            f"recipient: give exactly one of a WhatsApp number or a contact id ({which} given)",
        )
    elif m.to is not None:
        digits = normalize_number(m.to)
        if not (digits.isascii() and digits.isdigit()) or not (
            MIN_MSISDN_DIGITS <= len(digits) <= MAX_MSISDN_DIGITS
        ):
            problems.add(
                "recipient.identity",
                f"WhatsApp number {m.to!r} is not an international phone number "
                f"({MIN_MSISDN_DIGITS} to {MAX_MSISDN_DIGITS} digits with the country code)",
            )
    else:
        problems.text("recipient.contact_id", "contact id", m.contact_id, MAX_CONTACT_ID)


def _header_kind(m: FlowMessage) -> str:
    return (m.header_type or ("text" if m.header is not None else "")).strip().lower()


def _check_header(m: FlowMessage, problems: _Problems) -> None:
    kind = _header_kind(m)
    if not kind:
        if m.header_url is not None:
            media = ", ".join(MEDIA_HEADER_TYPES)
            problems.add("header.type", f"header link given without a media header type ({media})")
    elif kind not in HEADER_TYPES:
        problems.add(
            "header.type",
            f"header type must be one of {', '.join(HEADER_TYPES)}; got {m.header_type!r}",
        )
    elif kind == "text":
        if m.header_url is not None:
            problems.add("header.link", "a text header takes no link")
        problems.text(
            "header.text",
            "header text",
            m.header,
            MAX_HEADER_TEXT,
            required="header type text needs the header text",
        )
    else:
        if m.header is not None:
            problems.add(
                "header.text",
                f"a {kind} header takes a link, not text (use the footer or body for text)",
            )
        link = f"header.{kind}.link"
        if m.header_url is None:
            problems.add(link, f"header type {kind} needs a link")
        else:
            parts = urlsplit(m.header_url.strip())
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems.add(link, f"header link must be an http(s) URL; got {m.header_url!r}")


def _check_action(m: FlowMessage, problems: _Problems) -> None:
    action = m.action.strip().lower()
    if action not in ACTIONS:
        problems.add(
            "flow_action", f"flow_action must be navigate or data_exchange; got {m.action!r}"
        )
    if action == "navigate":
        problems.text(
            "flow_action_payload.screen",
            "screen",
            m.screen,
            MAX_SCREEN,
            required="flow_action navigate needs the first screen's id",
        )
    elif action == "data_exchange" and (m.screen is not None or m.data is not None):
        problems.add(
            "flow_action_payload",
            "flow_action data_exchange takes no screen or data "
            "(the first screen comes from the data endpoint's INIT answer)",
        )
    if m.data is None or action == "data_exchange":
        return
    if not isinstance(m.data, Mapping):
        problems.add(
            "flow_action_payload.data", f"data must be a JSON object; got {type(m.data).__name__}"
        )
    elif not m.data:
        problems.add(
            "flow_action_payload.data", "data must be a non-empty object (leave it out instead)"
        )


def _ttl(value: int | str) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"{value}s" if value > 0 else None
    match = _TTL.match(value)
    if not match or int(match.group(1)) <= 0:
        return None
    return f"{int(match.group(1))}s"


def validate(m: FlowMessage) -> list[Problem]:
    """Every rule the message breaks, in payload order; empty when it can be sent."""
    problems = _Problems()
    _check_recipient(m, problems)
    _check_header(m, problems)
    problems.text("body.text", "body text", m.body, MAX_BODY, required="body text is required")
    problems.text("footer.text", "footer", m.footer, MAX_FOOTER)
    problems.text("flow_id", "flow_id", m.flow_id, MAX_FLOW_ID, required="flow_id is required")
    problems.text("flow_token", "flow_token", m.token, MAX_TOKEN)
    if m.mode.strip().lower() not in MODES:
        problems.add("flow_mode", f"flow_mode must be draft or published; got {m.mode!r}")
    problems.text(
        "flow_cta", "flow_cta", m.cta, MAX_CTA, required="flow_cta (the button text) is required"
    )
    if m.cta is not None and m.cta.strip():
        emoji = find_emoji(m.cta)
        if emoji is not None:
            problems.add(
                "flow_cta", f"flow_cta must not contain emoji; found {emoji!r} (U+{ord(emoji):04X})"
            )
    _check_action(m, problems)
    problems.text("message_metadata", "message_metadata", m.metadata, MAX_METADATA)
    problems.text("correlation_id", "correlation_id", m.correlation_id, MAX_CORRELATION_ID)
    if m.ttl is not None and _ttl(m.ttl) is None:
        problems.add(
            "ttl", f"ttl must be a positive number of seconds (e.g. 86400 or 86400s); got {m.ttl!r}"
        )
    return list(problems)


def _header(m: FlowMessage) -> dict[str, Any] | None:
    kind = _header_kind(m)
    if not kind:
        return None
    if kind == "text":
        return {"type": "text", "text": m.header}
    return {"type": kind, kind: {"link": (m.header_url or "").strip()}}


def build_request(
    m: FlowMessage, app_id: str, *, token_factory: Callable[[], str] = new_flow_token
) -> SendRequest:
    """Check ``m`` and build the request body; raise InvalidFlowMessage listing every problem.

    Long: one pass over the message's fields, in the order of the payload it builds.
    """
    problems = validate(m)
    if problems:
        raise InvalidFlowMessage(problems)
    assert m.flow_id is not None and m.cta is not None and m.body is not None
    token = m.token if m.token is not None else token_factory()
    mode, action = m.mode.strip().lower(), m.action.strip().lower()

    flow: dict[str, Any] = {}
    header = _header(m)
    if header is not None:
        flow["header"] = header
    flow["body"] = {"text": m.body}
    if m.footer is not None:
        flow["footer"] = {"text": m.footer}
    flow.update(
        flow_id=m.flow_id, flow_token=token, flow_mode=mode, flow_cta=m.cta, flow_action=action
    )
    screen = m.screen if action == "navigate" else None
    if action == "navigate":
        payload: dict[str, Any] = {"screen": screen}
        if m.data is not None:
            payload["data"] = dict(m.data)
        flow["flow_action_payload"] = payload

    message: dict[str, Any] = {}
    fallback = m.body if m.fallback_text is None else m.fallback_text
    if fallback:
        message["text_message"] = {"text": fallback}
    message["channel_specific_message"] = {CHANNEL: {"message_type": "FLOWS", "message": flow}}

    identity = normalize_number(m.to) if m.to is not None else None
    if identity is not None:
        recipient: dict[str, Any] = {
            "identified_by": {"channel_identities": [{"channel": CHANNEL, "identity": identity}]}
        }
    else:
        recipient = {"contact_id": m.contact_id}

    body: dict[str, Any] = {"app_id": app_id, "recipient": recipient, "message": message}
    if m.metadata is not None:
        body["message_metadata"] = m.metadata
    if m.correlation_id is not None:
        body["correlation_id"] = m.correlation_id
    body["channel_priority_order"] = [CHANNEL]
    if m.ttl is not None:
        body["ttl"] = _ttl(m.ttl)
    return SendRequest(
        body=body,
        flow_token=token,
        token_generated=m.token is None,
        flow_id=m.flow_id,
        flow_mode=mode,
        flow_cta=m.cta,
        flow_action=action,
        screen=screen,
        channel=CHANNEL,
        identity=identity,
        contact_id=m.contact_id,
        correlation_id=m.correlation_id,
    )
