"""Redaction of one person's data inside values and callback documents (pure).

A person is a set of identities (phone numbers, normalised as stored) and contact
ids. Their identities and contact ids are replaced by a pseudonym, ``erased_`` plus
the first 32 hex digits of HMAC-SHA256(ERASURE_KEY, kind:value): the same person
always gets the same pseudonym, so their rows still group and count together, and
without the key the pseudonym cannot be traced back to the number.

Everything else a person wrote or that describes them (texts, answers, names, media
links, metadata, locations) is removed (set to null). In a raw callback document
only structural fields are kept (ids, statuses, times, channels, flow ids and tokens,
reason codes), which is all the projections, funnels and dedupe need; a document
rewritten here still parses to the same message ids, statuses and flow tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from webhook.ingest.body import JSONError, loads_json
from webhook.ingest.fields import normalize_identity

PSEUDONYM_PREFIX = "erased_"
IDENTITY, CONTACT, WAMID = "identity", "contact", "wamid"
WAMID_PREFIX = "wamid."

# Keys whose values are structure, not personal content: kept unless they hold one of
# the person's identities or contact ids (then pseudonymised).
KEEP_KEYS = frozenset({
    # envelope
    "app_id", "project_id", "accepted_time", "event_time", "correlation_id",
    # ids (message ids are not personal data)
    "id", "message_id", "event_id", "request_id", "entity_id", "conversation_id",
    "contact_id", "contact_ids", "phone_number_id",
    # channels and identities (the person's own are pseudonymised)
    "channel", "identity", "channel_identity", "channel_priority", "active_channel",
    "sender_id", "display_phone_number",
    # states, kinds, times
    "status", "record_status", "capability_status", "direction", "processing_mode",
    "injected", "active", "event_type", "quality_rating", "type", "message_type",
    "accept_time", "last_received", "timestamp", "object", "field", "messaging_product",
    # flows
    "flow_id", "flow_token", "flow_mode", "flow_cta", "flow_action", "screen",
    "flow_message_version",
    # failure reasons (the description is scrubbed of the person's keys)
    "code", "sub_code", "channel_code", "description",
})  # fmt: skip
# Keys kept only under a given parent key: {"nfm_reply": {"name": "flow"}} marks a flow
# completion, but "name" elsewhere (a WhatsApp profile) is a person's name.
KEEP_UNDER = {"name": frozenset({"nfm_reply"})}
# Strings that hold a JSON document of their own (WhatsApp payloads, flow answers).
JSON_STRING_KEYS = frozenset({"payload", "raw_message", "response_json"})
# Free-form subtrees whose keys are chosen by the business or the flow: every value
# inside is removed, whatever its key (an answer field may well be called "id").
OPAQUE_KEYS = frozenset({"response_json", "data", "metadata_json", "analysis_results"})

_PHONE_LIKE = re.compile(r"^[\d\s\-().+]{5,}$")
_MIN_SCRUB_LENGTH = 6


def keyed_hash(key: str, kind: str, value: str) -> str:
    """HMAC-SHA256 of ``kind:value`` under ``key``, as 64 hex digits."""
    return hmac.new(key.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def pseudonym(key: str, kind: str, value: str) -> str:
    """The value that replaces one identity or contact id (39 characters)."""
    return PSEUDONYM_PREFIX + keyed_hash(key, kind, value)[:32]


def normalize_number(value: str) -> str:
    """An identity as the projections store it: phone numbers as bare digits."""
    value = value.strip()
    if _PHONE_LIKE.match(value):
        return normalize_identity("WHATSAPP", value) or value
    return value


def redact_answers(response: Any) -> Any:
    """Flow answers with every value removed; the field names and flow_token stay."""
    if not isinstance(response, dict):
        return None
    return {
        k: (v if k == "flow_token" and isinstance(v, str) else None) for k, v in response.items()
    }


WALK_RECURSION_LIMIT = 3_500


class Redactor:
    """Replaces one person's identities and contact ids, and removes their content."""

    def __init__(self, key: str, identities: Iterable[str], contact_ids: Iterable[str]) -> None:
        self.key = key
        self.replacements: dict[str, str] = {}
        identities = list(identities)
        self._numbers = [i.encode() for i in identities if len(i) >= _MIN_SCRUB_LENGTH]
        for value in identities:
            self.replacements[value] = pseudonym(key, IDENTITY, value)
        for value in contact_ids:
            self.replacements[value] = pseudonym(key, CONTACT, value)
        self._scrub = [
            (v, p)
            for v, p in sorted(self.replacements.items(), key=lambda kv: -len(kv[0]))
            if len(v) >= _MIN_SCRUB_LENGTH
        ]

    def match(self, value: object) -> str | None:
        """The pseudonym for ``value`` if it is one of the person's keys, else None."""
        if not isinstance(value, str) or not value:
            return None
        found = self.replacements.get(value)
        if found is None and _PHONE_LIKE.match(value):
            found = self.replacements.get(normalize_number(value))
        if found is None and value.startswith(WAMID_PREFIX) and self._wamid_of_person(value):
            found = self.replacements[value] = pseudonym(self.key, WAMID, value)
        return found

    def _wamid_of_person(self, wamid: str) -> bool:
        # A WhatsApp message id is base64 around the user's phone number.
        encoded = wamid[len(WAMID_PREFIX) :]
        try:
            raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_")
        except (binascii.Error, ValueError):
            return False
        return any(number in raw for number in self._numbers)

    def replace(self, value: Any) -> Any:
        """The pseudonym if ``value`` is one of the person's keys, else ``value``."""
        return self.match(value) or value

    def scrub(self, text: str | None) -> str | None:
        """Free text with every occurrence of the person's keys replaced."""
        if not text:
            return text
        for value, replacement in self._scrub:
            if value in text:
                text = text.replace(value, replacement)
        return text

    def mentions_bytes(self, raw: bytes) -> bool:
        """True if raw bytes (a stored body) contain one of the person's keys verbatim."""
        return any(value.encode() in raw for value, _ in self._scrub)

    def mentions(self, text: str) -> bool:
        """True if ``text`` is, or contains, one of the person's keys."""
        return self.match(text) is not None or any(value in text for value, _ in self._scrub)

    def document(self, doc: Any) -> tuple[Any, bool]:
        """A callback document with the person redacted; True if it mentioned them.

        The walk recurses once or twice per level; ingestion accepts documents as deep
        as its parser reads (orjson: 1024 levels), so the interpreter's limit is raised
        for the walk to match (about 3,000 frames, a few hundred kB of stack).
        """
        walker = _Walk(self)
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, WALK_RECURSION_LIMIT))
        try:
            return walker.value(doc, None, None, opaque=False), walker.hit
        finally:
            sys.setrecursionlimit(limit)


class _Walk:
    def __init__(self, redactor: Redactor) -> None:
        self.r = redactor
        self.hit = False

    def value(self, v: Any, key: str | None, parent: str | None, opaque: bool) -> Any:
        if key == "response_json" and isinstance(v, dict | list):
            self.value(v, None, None, opaque=True)  # only to notice a mention
            return redact_answers(v)
        if isinstance(v, dict):
            inner = opaque or key in OPAQUE_KEYS
            return {k: self.value(x, k, key, inner) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x, key, parent, opaque) for x in v]
        if isinstance(v, str):
            if key in JSON_STRING_KEYS:
                return self._json_string(v, key)
            if self.r.mentions(v):
                self.hit = True
        found = self.r.match(v)
        if found is not None:
            return None if opaque else found
        if opaque or v is None or not self._kept(key, parent):
            return None
        return self.r.scrub(v) if isinstance(v, str) else v

    def _kept(self, key: str | None, parent: str | None) -> bool:
        if key in KEEP_KEYS:
            return True
        allowed = KEEP_UNDER.get(key or "")
        return allowed is not None and parent in allowed

    def _json_string(self, text: str, key: str) -> str | None:
        if self.r.mentions(text):
            self.hit = True
        try:
            inner = loads_json(text)
        except JSONError:
            return None
        if not isinstance(inner, dict | list):
            return None
        return orjson.dumps(self.value(inner, key if key == "response_json" else None, None,
                                       opaque=False)).decode()  # fmt: skip
