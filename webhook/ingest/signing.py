"""Sinch Conversation API callback signatures (pure; no Flask, no database).

signature = base64(HMAC-SHA256(utf8(secret), body + b"." + nonce + b"." + timestamp))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Protocol

SIGNATURE = "x-sinch-webhook-signature"
NONCE = "x-sinch-webhook-signature-nonce"
TIMESTAMP = "x-sinch-webhook-signature-timestamp"
ALGORITHM = "x-sinch-webhook-signature-algorithm"
SIGNATURE_HEADERS = (SIGNATURE, NONCE, TIMESTAMP, ALGORITHM)
SUPPORTED_ALGORITHMS = frozenset({"hmacsha256"})


class HeaderLookup(Protocol):
    """Anything with ``get(name)``: a dict with lower-case keys, or Werkzeug's Headers."""

    def get(self, key: str, /) -> str | None: ...


class SignatureError(Exception):
    """The callback's signature is missing, malformed, wrong or too old."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def compute_signature(secret: str, body: bytes, nonce: str, timestamp: str) -> str:
    """Return the base64 HMAC-SHA256 signature Sinch sends for these exact bytes."""
    message = b"".join((body, b".", nonce.encode("utf-8"), b".", timestamp.encode("utf-8")))
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign_headers(
    secret: str, body: bytes, nonce: str, timestamp: int | str | None = None
) -> dict[str, str]:
    """Build the four signature headers for ``body`` (used by forward, simulate and tests)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        SIGNATURE: compute_signature(secret, body, nonce, ts),
        NONCE: nonce,
        TIMESTAMP: ts,
        ALGORITHM: "HmacSHA256",
    }


def signature_headers(headers: HeaderLookup) -> dict[str, str]:
    """Pick the signature headers out of a request's headers (names lower-cased)."""
    found: dict[str, str] = {}
    for name in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value is not None:
            found[name] = value
    return found


def verify(
    body: bytes,
    headers: HeaderLookup,
    secrets: Iterable[str],
    *,
    max_age_seconds: int | None = None,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless one of ``secrets`` signed ``body`` with these headers.

    ``headers`` must look names up case-insensitively (Werkzeug's do), or use lower case.
    """
    signature = headers.get(SIGNATURE)
    nonce = headers.get(NONCE)
    timestamp = headers.get(TIMESTAMP)
    if not signature or nonce is None or timestamp is None:
        raise SignatureError("missing", "signature headers are missing")
    algorithm = headers.get(ALGORITHM)
    if algorithm is not None and algorithm.strip().lower() not in SUPPORTED_ALGORITHMS:
        raise SignatureError("malformed", "unsupported signature algorithm")
    if max_age_seconds is not None:
        try:
            signed_at = int(timestamp.strip())
        except ValueError:
            raise SignatureError("malformed", "signature timestamp is not an integer") from None
        current = time.time() if now is None else now
        if abs(current - signed_at) > max_age_seconds:
            raise SignatureError("stale", "signature timestamp is outside the allowed age")
    given = signature.strip().encode("ascii", "replace")
    matched = False
    for secret in secrets:
        expected = compute_signature(secret, body, nonce, timestamp).encode("ascii")
        # Check every secret (no early exit) so timing does not reveal which one matched.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureError("mismatch", "signature does not match")
