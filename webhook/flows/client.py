"""A small Sinch Conversation API client: OAuth2 token, messages:send, retries.

- Token: client-credentials grant against SINCH_AUTH_URL with HTTP Basic
  key_id:key_secret; cached until shortly before ``expires_in`` runs out, and fetched
  again once when the API answers 401 (a revoked or expired token).
- Retries (webhook.core.outbound.RetryPolicy): 429 (waiting what ``Retry-After`` asks,
  in seconds or as an HTTP date), 5xx and connection failures, with exponential
  backoff and jitter.
  A send whose request may have reached Sinch (a read timeout, a dropped connection)
  is NOT retried: it could deliver the message twice. Token requests are always
  safe to retry.
- A 4xx answer becomes SinchRejected carrying Sinch's own error text.
The client is thread-safe: one token is shared by every thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from webhook.core.outbound import NOT_SENT, GaveUp, RetryPolicy, first_line
from webhook.core.outbound import retry_after_seconds as retry_after_seconds  # re-exported
from webhook.core.settings import DEFAULT_AUTH_URL, SINCH_REGIONS, Settings

USER_AGENT = "flowhooks/0.1"
# Tokens are refreshed this long before Sinch says they expire (at most 10 % of the life).
TOKEN_MARGIN_SECONDS = 60.0


class SinchError(Exception):
    """A call to Sinch did not succeed; ``str()`` is one line fit for an operator."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SinchConfigError(SinchError):
    """The client is not configured well enough to call Sinch (nothing was sent)."""


class SinchAuthError(SinchError):
    """Sinch refused the credentials (token endpoint, or 401 even with a fresh token)."""


class SinchRejected(SinchError):
    """Sinch answered 4xx: the request itself is wrong; retrying will not help."""


class SinchUnavailable(SinchError):
    """No usable answer after every attempt (429, 5xx or network); the send was not accepted."""


class SinchOutcomeUnknown(SinchError):
    """The request may have reached Sinch but no answer came back; it may have been sent."""


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str
    accepted_time: str | None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    project_id: str
    app_id: str
    key_id: str
    key_secret: str = field(repr=False)
    region: str = "us"
    api_base_url: str = ""
    auth_url: str = DEFAULT_AUTH_URL
    timeout_seconds: float = 10.0
    max_attempts: int = 4
    backoff_seconds: float = 0.5
    backoff_max_seconds: float = 8.0
    # A Retry-After longer than this is not waited for: the call gives up instead.
    max_retry_after_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientConfig:
        s = settings.sinch
        return cls(
            project_id=s.project_id,
            app_id=s.app_id,
            key_id=s.key_id,
            key_secret=s.key_secret.reveal() if s.key_secret else "",
            region=s.region,
            api_base_url=s.api_base_url,
            auth_url=s.auth_url,
            timeout_seconds=float(s.timeout_seconds),
            max_attempts=s.max_attempts,
            backoff_seconds=s.backoff_ms / 1000,
        )

    def missing(self) -> list[str]:
        """Names of the required settings that are empty."""
        required = {
            "SINCH_PROJECT_ID": self.project_id,
            "SINCH_APP_ID": self.app_id,
            "SINCH_KEY_ID": self.key_id,
            "SINCH_KEY_SECRET": self.key_secret,
        }
        return [name for name, value in required.items() if not value.strip()]

    def base_url(self) -> str:
        """SINCH_API_BASE_URL, or the regional Conversation API host."""
        if self.api_base_url:
            return self.api_base_url.rstrip("/")
        region = self.region.strip().lower()
        if region not in SINCH_REGIONS:
            raise SinchConfigError(
                f"SINCH_REGION must be one of {', '.join(SINCH_REGIONS)}; got {self.region!r}"
            )
        return f"https://{region}.conversation.api.sinch.com"

    def send_url(self) -> str:
        return f"{self.base_url()}/v1/projects/{quote(self.project_id, safe='')}/messages:send"

    def check(self) -> None:
        """Raise SinchConfigError naming every missing setting, or a bad region."""
        missing = self.missing()
        if missing:
            raise SinchConfigError(f"missing settings for sending: {', '.join(missing)}")
        self.base_url()


def sinch_error_text(response: httpx.Response) -> str:
    """Sinch's own words for an error answer, on one line.

    API errors look like ``{"error": {"code": 400, "message": "...", "status":
    "INVALID_ARGUMENT", "details": [...]}}``; the token endpoint answers OAuth2 style,
    ``{"error": "invalid_client", "error_description": "..."}``.
    """
    try:
        payload: Any = response.json()
    except ValueError:
        payload = None
    parts: list[str] = []
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            if err.get("status"):
                parts.append(str(err["status"]))
            if err.get("message"):
                parts.append(str(err["message"]))
            parts.extend(_violations(err.get("details")))
        elif isinstance(err, str):
            parts.append(err)
            if payload.get("error_description"):
                parts.append(str(payload["error_description"]))
        elif payload.get("message"):
            parts.append(str(payload["message"]))
    if not parts:
        text = " ".join(response.text.split())
        parts.append(text[:300] if text else response.reason_phrase or "no error text")
    return f"{response.status_code} " + ": ".join(parts)


def _violations(details: object) -> list[str]:
    """Field violations from google.rpc.BadRequest-style details, if any."""
    found: list[str] = []
    if not isinstance(details, list):
        return found
    for detail in details:
        if not isinstance(detail, dict):
            continue
        for violation in detail.get("field_violations") or detail.get("fieldViolations") or []:
            if isinstance(violation, dict):
                field, desc = violation.get("field"), violation.get("description")
                found.append(f"{field}: {desc}" if field else str(desc))
    return found


class ConversationClient:
    """Calls the Conversation API; see the module docstring for the retry rules."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config.check()
        self.config = config
        self._own_http = http is None
        self._http = http or httpx.Client(
            timeout=httpx.Timeout(config.timeout_seconds),
            headers={"User-Agent": USER_AGENT},
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_deadline = 0.0
        self._policy = RetryPolicy(
            attempts=config.max_attempts,
            backoff=config.backoff_seconds,
            max_backoff=config.backoff_max_seconds,
            jitter=config.backoff_seconds,
            max_retry_after=config.max_retry_after_seconds,
            long_retry_after="give up",  # Sinch said how long: wait exactly that, or not at all
            sleep=sleep,
        )
        self.token_requests = 0

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> ConversationClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ sending

    def send_message(self, body: bytes) -> SendResult:
        """POST one messages:send body (JSON bytes); return Sinch's message id."""
        url = self.config.send_url()
        token = self.access_token()
        response = self._call(url, body, token)
        if response.status_code == 401:
            # The token may have been revoked or expired early: fetch a new one, once.
            self._forget(token)
            response = self._call(url, body, self.access_token())
            if response.status_code == 401:
                raise SinchAuthError(
                    f"Sinch refused the access token: {sinch_error_text(response)}", 401
                )
        if response.status_code >= 400:
            raise SinchRejected(
                f"Sinch rejected the message: {sinch_error_text(response)}", response.status_code
            )
        try:
            answer = response.json()
            message_id = answer["message_id"]
        except (ValueError, KeyError, TypeError):
            raise SinchOutcomeUnknown(
                f"Sinch answered {response.status_code} without a message_id", response.status_code
            ) from None
        if not isinstance(message_id, str) or not message_id:
            raise SinchOutcomeUnknown("Sinch answered with an empty message_id", 200)
        accepted = answer.get("accepted_time")
        return SendResult(message_id, accepted if isinstance(accepted, str) else None)

    def _call(self, url: str, body: bytes, token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return self._with_retries(
            lambda: self._http.post(url, content=body, headers=headers), idempotent=False
        )

    # ------------------------------------------------------------ token

    def access_token(self) -> str:
        """A valid OAuth2 access token, from the cache when it is still fresh."""
        with self._lock:
            if self._token is not None and self._clock() < self._token_deadline:
                return self._token
            token, lifetime = self._fetch_token()
            margin = min(TOKEN_MARGIN_SECONDS, lifetime / 10)
            self._token, self._token_deadline = token, self._clock() + lifetime - margin
            return token

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token == token:  # another thread may have refreshed it already
                self._token = None

    def _fetch_token(self) -> tuple[str, float]:
        cfg = self.config
        self.token_requests += 1
        response = self._with_retries(
            lambda: self._http.post(
                cfg.auth_url,
                data={"grant_type": "client_credentials"},
                auth=(cfg.key_id, cfg.key_secret),
            ),
            idempotent=True,
        )
        if response.status_code >= 400:
            raise SinchAuthError(
                f"Sinch did not issue an access token: {sinch_error_text(response)}",
                response.status_code,
            )
        try:
            answer = response.json()
            token = answer["access_token"]
            lifetime = float(answer.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError):
            raise SinchAuthError("the token endpoint answered without an access_token") from None
        if not isinstance(token, str) or not token:
            raise SinchAuthError("the token endpoint answered with an empty access_token")
        return token, max(lifetime, 1.0)

    # ------------------------------------------------------------ retries

    def _with_retries(
        self, request: Callable[[], httpx.Response], *, idempotent: bool
    ) -> httpx.Response:
        try:
            return self._policy.send(request, idempotent=idempotent)
        except httpx.TransportError as err:  # only when not idempotent: it may have been sent
            raise SinchOutcomeUnknown(
                f"no answer from Sinch ({type(err).__name__}); the message may or may not "
                "have been sent: check for its MESSAGE_SUBMIT callback before resending"
            ) from err
        except GaveUp as err:
            if err.response is not None:
                reason = sinch_error_text(err.response)
            else:
                kind = "could not connect" if isinstance(err.error, NOT_SENT) else "no answer"
                cause = err.error or err
                reason = f"{kind} ({type(cause).__name__}: {first_line(cause)})"
            if err.too_long:
                raise SinchUnavailable(
                    f"Sinch asked to wait {err.retry_after:.0f} s before retrying (more than "
                    f"{self.config.max_retry_after_seconds:.0f} s): {reason}"
                ) from err
            tries = f"{err.attempts} attempt{'s' if err.attempts != 1 else ''}"
            raise SinchUnavailable(f"gave up after {tries}: {reason}") from err
