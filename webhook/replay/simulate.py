"""Realistic, seeded Sinch callback traffic for flow messages (pure).

For each simulated flow message: MESSAGE_SUBMIT, QUEUED_ON_CHANNEL, then DELIVERED
and READ (READ sometimes without DELIVERED), or FAILED with a real reason code, and
for some a flow completion (MESSAGE_INBOUND nfm_reply) with answers. The same config
and seed always give the same bodies, byte for byte. Used by `flask events simulate`,
the benchmarks and the reliability tests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# (reason code, WhatsApp channel code, description) seen on failed WhatsApp sends.
FAILURE_REASONS: tuple[tuple[str, str, str], ...] = (
    ("OUTSIDE_ALLOWED_SENDING_WINDOW", "131047", "More than 24 hours have passed"),
    ("RECIPIENT_NOT_REACHABLE", "131026", "Recipient is not a valid WhatsApp user"),
    ("RECIPIENT_NOT_OPTED_IN", "131050", "User stopped marketing messages"),
    ("RATE_LIMITED", "131056", "Pair rate limit hit"),
    ("CHANNEL_FAILURE", "131000", "Something went wrong"),
    ("DELIVERY_REJECTED_DUE_TO_POLICY", "131049", "Not delivered to maintain ecosystem"),
)
SCREENS = ("WELCOME", "APPOINTMENT", "DETAILS")


@dataclass(frozen=True)
class SimulationConfig:
    messages: int = 100
    seed: int = 1
    flows: int = 3
    contacts: int = 0  # 0: one contact per message
    failure_rate: float = 0.05
    skip_delivered_rate: float = 0.05  # READ arrives without DELIVERED
    read_rate: float = 0.7
    completion_rate: float = 0.4
    broken_response_rate: float = 0.0
    duplicate_rate: float = 0.0
    shuffle: str = "window"  # "none", "window" (local reordering) or "all"
    window: int = 8
    start: datetime = field(default_factory=lambda: datetime(2026, 3, 1, 8, 0, tzinfo=UTC))
    spacing_seconds: float = 2.0
    app_id: str = "01K94JHH80F86PQMSGMGZ6MS3E"
    project_id: str = "7f3c2a9e-5b1d-4c8e-9a61-2d4e8b0f13c7"


def ulid(rng: random.Random, when: datetime) -> str:
    """A ULID-shaped id (time prefix + randomness) drawn from ``rng``."""
    ms = int(when.timestamp() * 1000)
    head = "".join(_CROCKFORD[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    return head + "".join(rng.choice(_CROCKFORD) for _ in range(16))


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class SimulatedMessage:
    message_id: str
    flow_id: str
    flow_token: str
    contact_id: str
    identity: str
    outcome: str  # "read", "delivered", "failed", "queued"
    completed: bool
    bodies: tuple[bytes, ...]


def recent_start(cfg: SimulationConfig, now: datetime | None = None) -> datetime:
    """A start that puts the whole simulated traffic in the recent past (ending an hour
    before ``now``), so reports over the last days show it at once."""
    span = timedelta(seconds=cfg.messages * cfg.spacing_seconds) + timedelta(hours=1)
    return ((now or datetime.now(UTC)) - span).replace(microsecond=0)


def simulate_message(cfg: SimulationConfig, rng: random.Random, index: int) -> SimulatedMessage:
    """All callbacks for one flow message, in the order a channel would produce them.

    Long: the life of one message step by step (send, statuses, completion), in order.
    """
    sent = cfg.start + timedelta(seconds=index * cfg.spacing_seconds)
    message_id = ulid(rng, sent)
    contact_n = rng.randrange(cfg.contacts) if cfg.contacts else index
    contact_id = ulid(random.Random(f"contact-{cfg.seed}-{contact_n}"), cfg.start)
    conversation_id = ulid(random.Random(f"conv-{cfg.seed}-{contact_n}"), cfg.start)
    identity = f"55119{contact_n:08d}"
    flow_n = rng.randrange(max(cfg.flows, 1))
    flow_id = f"11873455290{flow_n:05d}"
    flow_token = "ftk_" + "".join(rng.choice(_CROCKFORD) for _ in range(20))
    ci = {"channel": "WHATSAPP", "identity": identity, "app_id": ""}
    base = {"app_id": cfg.app_id, "project_id": cfg.project_id}
    metadata = f"flow={flow_id};token={flow_token}"

    def envelope(key: str, payload: dict[str, Any], at: datetime) -> bytes:
        doc = {**base, "accepted_time": _ts(at + timedelta(milliseconds=30)),
               "event_time": _ts(at), key: payload, "message_metadata": ""}  # fmt: skip
        return _dump(doc)

    def report(status: str, at: datetime, reason: dict[str, str] | None = None) -> bytes:
        payload: dict[str, Any] = {"message_id": message_id, "conversation_id": conversation_id,
                   "status": status, "channel_identity": ci, "contact_id": contact_id,
                   "metadata": metadata, "processing_mode": "CONVERSATION"}  # fmt: skip
        if reason:
            payload["reason"] = reason
        return envelope("message_delivery_report", payload, at)

    screen = rng.choice(SCREENS)
    flow_message = {
        "header": {"type": "text", "text": "Book your visit"},
        "body": {"text": "Pick a time that suits you."},
        "flow_id": flow_id, "flow_token": flow_token, "flow_mode": "published",
        "flow_cta": "Book now", "flow_action": "navigate",
        "flow_action_payload": {"screen": screen, "data": {"clinic": f"Clinic {flow_n}"}},
    }  # fmt: skip
    submit = {"message_id": message_id, "conversation_id": conversation_id,
              "channel_identity": ci, "contact_id": contact_id,
              "submitted_message": {"text_message": {"text": "Please update WhatsApp."},
                                    "channel_specific_message": {"WHATSAPP": {
                                        "message_type": "FLOWS", "message": flow_message}}},
              "metadata": metadata, "processing_mode": "CONVERSATION"}  # fmt: skip
    bodies = [
        envelope("message_submit_notification", submit, sent),
        report("QUEUED_ON_CHANNEL", sent + timedelta(milliseconds=300)),
    ]
    completed = False
    roll = rng.random()
    if roll < cfg.failure_rate:
        code, channel_code, description = rng.choice(FAILURE_REASONS)
        reason = {"code": code, "description": f"The underlying channel reported: {description}",
                  "sub_code": "UNSPECIFIED_SUB_CODE", "channel_code": channel_code}  # fmt: skip
        bodies.append(report("FAILED", sent + timedelta(seconds=1), reason))
        outcome = "failed"
    else:
        delivered_at = sent + timedelta(seconds=1 + rng.random() * 3)
        skip_delivered = rng.random() < cfg.skip_delivered_rate
        if not skip_delivered:
            bodies.append(report("DELIVERED", delivered_at))
        outcome = "delivered"
        if skip_delivered or rng.random() < cfg.read_rate:
            read_at = delivered_at + timedelta(seconds=5 + rng.random() * 120)
            bodies.append(report("READ", read_at))
            outcome = "read"
            if rng.random() < cfg.completion_rate:
                completed = True
                done_at = read_at + timedelta(seconds=20 + rng.random() * 600)
                answers = {"flow_token": flow_token, "full_name": f"Contact {contact_n}",
                           "appointment_date": (done_at + timedelta(days=7)).date().isoformat(),
                           "slot": rng.choice(["09:00", "10:30", "14:00", "16:30"]),
                           "symptoms": rng.sample(["fever", "cough", "headache", "rash"], 2),
                           "consent": True}  # fmt: skip
                response_json = json.dumps(answers, separators=(",", ":"), ensure_ascii=False)
                if rng.random() < cfg.broken_response_rate:
                    response_json = response_json[:-7]
                inbound = {"id": ulid(rng, done_at), "direction": "TO_APP",
                           "contact_message": {
                               "channel_specific_message": {"message_type": "nfm_reply",
                                   "message": {"type": "nfm_reply", "nfm_reply": {
                                       "name": "flow", "body": "Sent",
                                       "response_json": response_json}}},
                               "reply_to": {"message_id": message_id}},
                           "channel_identity": ci, "conversation_id": conversation_id,
                           "contact_id": contact_id, "metadata": metadata,
                           "accept_time": _ts(done_at), "sender_id": "5511300012345",
                           "processing_mode": "CONVERSATION", "injected": False}  # fmt: skip
                bodies.append(envelope("message", inbound, done_at))
    return SimulatedMessage(
        message_id, flow_id, flow_token, contact_id, identity, outcome, completed, tuple(bodies)
    )


def simulate(cfg: SimulationConfig) -> tuple[list[SimulatedMessage], list[bytes]]:
    """The simulated messages and the callback bodies in delivery order."""
    rng = random.Random(cfg.seed)
    messages = [simulate_message(cfg, rng, i) for i in range(cfg.messages)]
    stream = [body for m in messages for body in m.bodies]
    if cfg.shuffle == "all":
        rng.shuffle(stream)
    elif cfg.shuffle == "window" and cfg.window > 1:
        # Local reordering: each body moves at most about `window` places.
        keyed = [(i + rng.random() * cfg.window, body) for i, body in enumerate(stream)]
        stream = [body for _, body in sorted(keyed, key=lambda kv: kv[0])]
    if cfg.duplicate_rate > 0:
        out: list[bytes] = []
        for body in stream:
            out.append(body)
            if rng.random() < cfg.duplicate_rate:
                out.append(body)
        stream = out
    return messages, stream


def iter_bodies(cfg: SimulationConfig) -> Iterator[bytes]:
    yield from simulate(cfg)[1]
