"""POST /flows/data: the WhatsApp Flows data endpoint.

Order (spec §3.4): signature (432) -> decrypt with each key (421) -> ping -> error
notification (acknowledged) -> flow token check (427, when FLOWS_REQUIRE_KNOWN_TOKEN)
-> handler -> encrypted answer (200, text/plain base64). Every request is recorded in
flow_exchanges by a background writer (see recording.py), so recording can neither
slow down nor fail an answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy import Engine, exists, select

from webhook.core.errors import first_line
from webhook.core.logs import token_ref
from webhook.core.settings import ConfigError, Settings
from webhook.core.state import state
from webhook.db.models import FlowExchange, FlowResponse, FlowSend
from webhook.flows.handlers import (
    PING,
    FlowRequest,
    Handler,
    HandlerConfigError,
    HandlerError,
    InvalidToken,
    load_handler,
    response_payload,
)
from webhook.flows.recording import ExchangeRecorder
from webhook.http.body import request_body
from webhook.http.errors import error_response
from webhook.http.observe import record_flow_exchange

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

# webhook.flows.crypto (and so cryptography, about 9 MB per process) is imported only
# where keys are loaded or used: a service without FLOWS_PRIVATE_KEY never loads it.

log = logging.getLogger(__name__)

bp = Blueprint("flows_data", __name__)
EXTENSION_KEY = "flows_endpoint"

PING_ANSWER = {"data": {"status": "active"}}
ACK_ANSWER = {"data": {"acknowledged": True}}
UNKNOWN_TOKEN_MESSAGE = "This flow is no longer available. Please ask us for a new one."
COMPLETED_TOKEN_MESSAGE = "This flow was already completed."
SUCCESS = "SUCCESS"


@dataclass(frozen=True)
class EndpointConfig:
    """What the endpoint needs, loaded and checked once at start-up."""

    keys: tuple[RSAPrivateKey, ...]
    app_secrets: tuple[str, ...] = field(repr=False)
    handler: Handler | None
    require_known_token: bool
    store_data: bool
    budget_ms: int


@dataclass(frozen=True)
class Endpoint:
    """The loaded configuration and the recorder of one app."""

    config: EndpointConfig
    recorder: ExchangeRecorder


@dataclass
class Exchange:
    """One flow_exchanges row, filled in while the request is handled."""

    received_at: datetime
    http_status: int = 0
    flow_token: str | None = None
    action: str | None = None
    screen: str | None = None
    answer_screen: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    data: Any = None
    code: str | None = field(default=None, repr=False)  # for logs and metrics, not stored

    def fail(self, code: str, detail: str) -> None:
        """Say why the request was refused or failed: a short code and the row's text."""
        self.code, self.error = code, detail

    def row(self) -> dict[str, Any]:
        """The flow_exchanges columns."""
        values = asdict(self)
        del values["code"]
        return values


def configure(settings: Settings) -> EndpointConfig | None:
    """Load keys and the handler; None when no key is set. ConfigError names the setting."""
    flows = settings.flows
    if not flows.private_keys:
        return None
    from webhook.flows.crypto import KeyLoadError, load_private_keys

    try:
        keys = load_private_keys(
            [k.reveal() for k in flows.private_keys], [p.reveal() for p in flows.passphrases]
        )
    except KeyLoadError as err:
        setting = "FLOWS_PRIVATE_KEY"
        if "passphrase" in str(err):
            setting = "FLOWS_PRIVATE_KEY_PASSPHRASE"
        raise ConfigError(f"{setting}: {err}") from None
    handler = None
    if flows.handler:
        try:
            handler = load_handler(flows.handler)
        except HandlerConfigError as err:
            raise ConfigError(f"FLOWS_HANDLER: {err}") from None
    return EndpointConfig(
        keys=keys,
        app_secrets=tuple(s.reveal() for s in flows.app_secrets),
        handler=handler,
        require_known_token=flows.require_known_token,
        store_data=flows.store_data,
        budget_ms=flows.handler_budget_ms,
    )


@bp.record_once
def _load_at_start_up(setup: BlueprintSetupState) -> None:
    app = setup.app
    assert isinstance(app, Flask)
    config = configure(state(app).settings)
    if config is None:
        app.extensions[EXTENSION_KEY] = None
        return
    app.extensions[EXTENSION_KEY] = Endpoint(config, ExchangeRecorder(state(app).engine))
    if not config.app_secrets:
        log.warning(
            "META_APP_SECRET is not set: /flows/data accepts requests WITHOUT checking "
            "X-Hub-Signature-256. Set it to the Meta app secret."
        )
    if config.handler is None:
        log.warning(
            "FLOWS_HANDLER is not set: /flows/data answers pings and error notifications "
            "only (500 otherwise)"
        )


@bp.post("/flows/data")
def flows_data() -> Response:
    """Answer one encrypted WhatsApp Flows data-exchange request."""
    started = time.perf_counter()
    endpoint: Endpoint | None = current_app.extensions.get(EXTENSION_KEY)
    if endpoint is None:
        return error_response(
            503,
            "flows_not_configured",
            "the Flows data endpoint is not configured (set FLOWS_PRIVATE_KEY)",
        )
    from webhook.flows.crypto import SIGNATURE_HEADER

    exchange = Exchange(received_at=datetime.now(UTC))
    body = request_body()  # 413 past MAX_CONTENT_LENGTH, 408 when it comes too slowly
    signature = request.headers.get(SIGNATURE_HEADER)
    status, text = answer(endpoint.config, state().engine, body, signature, exchange)
    seconds = time.perf_counter() - started
    exchange.http_status = status
    exchange.latency_ms = round(seconds * 1000, 3)
    endpoint.recorder.submit(exchange.row())
    record_flow_exchange(exchange.action, status, seconds, exchange.screen, exchange.code)
    return Response(text, status=status, mimetype="text/plain")


def answer(
    config: EndpointConfig,
    engine: Engine,
    body: bytes,
    signature: str | None,
    exchange: Exchange,
) -> tuple[int, str]:
    """Decide the HTTP status and body for one request, filling in ``exchange``."""
    from webhook.flows.crypto import (
        DecryptionError,
        decrypt_request,
        encrypt_response,
        signature_matches,
    )

    if config.app_secrets and not signature_matches(body, signature, config.app_secrets):
        reason = "signature_missing" if not signature else "signature_mismatch"
        exchange.fail(reason, reason.replace("_", " "))
        return 432, ""
    try:
        decrypted = decrypt_request(body, config.keys)
    except DecryptionError as err:
        exchange.fail("decryption_failed", f"cannot decrypt: {err}")
        log.warning("flows request answered 421: %s", err)
        return 421, ""

    def seal(payload: dict[str, Any]) -> str:
        return encrypt_response(payload, decrypted.aes_key, decrypted.iv)

    payload = decrypted.payload
    action, screen, token = payload.get("action"), payload.get("screen"), payload.get("flow_token")
    data = payload.get("data")
    data = {} if data is None else data
    # Clipped to the column sizes, so an oversized value cannot fail the row's insert.
    exchange.action = action[:32] if isinstance(action, str) else None
    exchange.screen = screen[:128] if isinstance(screen, str) else None
    exchange.flow_token = token[:255] if isinstance(token, str) else None
    if config.store_data and payload.get("data") is not None:
        exchange.data = data
    if action == PING:
        return 200, seal(PING_ANSWER)
    if not isinstance(data, dict):
        exchange.fail("invalid_payload", "data is not an object")
        return 400, ""
    if "error" in data or "error_key" in data:
        key = data.get("error", data.get("error_key"))
        exchange.fail("client_error", f"client error {key}: {data.get('error_message', '')}"[:1000])
        log.warning("flows client error %s for token %s", key, token_ref(exchange.flow_token))
        return 200, seal(ACK_ANSWER)
    if not isinstance(action, str) or not isinstance(screen, str | None):
        exchange.fail("invalid_payload", "action or screen is missing or not a string")
        return 400, ""
    if config.require_known_token:
        refused = check_token(engine, exchange.flow_token, exchange)
        if refused is not None:
            status, message = refused
            return status, seal({"error_msg": message}) if message else ""
    version = _str_or_none(payload.get("version"))
    req = FlowRequest(action, screen, data, token if isinstance(token, str) else None, version)
    return run_handler(config, req, exchange, seal)


def run_handler(
    config: EndpointConfig,
    req: FlowRequest,
    exchange: Exchange,
    seal: Callable[[dict[str, Any]], str],
) -> tuple[int, str]:
    """Call the configured handler and encrypt what it answers."""
    if config.handler is None:
        exchange.fail("handler_missing", "FLOWS_HANDLER is not set")
        log.error("flows request for token %s: FLOWS_HANDLER is not set", token_ref(req.flow_token))
        return 500, ""
    started = time.perf_counter()
    try:
        result = config.handler(req)
        if isinstance(result, InvalidToken):
            exchange.fail("token_refused", "handler: flow token no longer valid")
            return 427, seal({"error_msg": result.message})
        payload = response_payload(result, req)
        text = seal(payload)
    except Exception as err:
        # The traceback names the handler's line; the request data is never logged here.
        detail = str(err) if isinstance(err, HandlerError) else type(err).__name__
        exchange.fail("handler_error", f"handler failed: {detail}")
        log.error(
            "flows handler failed for token %s action=%s screen=%s",
            token_ref(req.flow_token),
            req.action,
            req.screen,
            exc_info=True,
        )
        return 500, ""
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        if elapsed_ms > config.budget_ms:
            log.warning(
                "flows handler took %.0f ms (budget %d ms) for token %s screen=%s",
                elapsed_ms,
                config.budget_ms,
                token_ref(req.flow_token),
                req.screen,
            )
    answer_screen = payload.get("screen")
    exchange.answer_screen = answer_screen[:128] if isinstance(answer_screen, str) else None
    return 200, text


def check_token(engine: Engine, token: str | None, exchange: Exchange) -> tuple[int, str] | None:
    """Refuse a token that no flow send knows or that already completed; None to go on."""
    if not token:
        exchange.fail("token_missing", "flow token missing")
        return 427, UNKNOWN_TOKEN_MESSAGE
    query = select(
        exists().where(FlowSend.flow_token == token),
        exists().where(FlowResponse.flow_token == token),
        exists().where(
            FlowExchange.flow_token == token,
            FlowExchange.answer_screen == SUCCESS,
            FlowExchange.http_status == 200,
        ),
    )
    try:
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            known, responded, answered = conn.execute(query).one()
    except Exception as err:
        exchange.fail("token_check_failed", f"token check failed: {type(err).__name__}")
        log.error("flows token check failed (database): %s", first_line(err))
        return 503, ""
    if not known:
        exchange.fail("token_unknown", "flow token unknown")
        return 427, UNKNOWN_TOKEN_MESSAGE
    if responded or answered:
        exchange.fail("token_completed", "flow token already completed")
        return 427, COMPLETED_TOKEN_MESSAGE
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
