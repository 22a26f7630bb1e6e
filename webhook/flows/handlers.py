"""The screen-handler interface of the Flows data endpoint (pure; no Flask, no database).

A handler is any callable ``(FlowRequest) -> NextScreen | ErrorMessage | Complete |
InvalidToken``. Register one function per screen on a FlowRouter, or write one
function for the whole flow; point FLOWS_HANDLER at it as ``module:object`` (or
``module:factory()`` to build it at start-up).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

INIT, BACK, DATA_EXCHANGE, PING = "INIT", "BACK", "data_exchange", "ping"
SUCCESS_SCREEN = "SUCCESS"


@dataclass(frozen=True, slots=True)
class FlowRequest:
    """One decrypted request routed to a handler."""

    action: str  # INIT, BACK or data_exchange
    screen: str | None  # the screen that sent it; often None (or "") for INIT and BACK
    data: Mapping[str, Any]
    flow_token: str | None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class NextScreen:
    """Show ``screen`` with ``data`` (keys must match that screen's data schema)."""

    screen: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Stay on the requesting screen (or ``screen``) and show ``message`` in a snackbar."""

    message: str
    data: Mapping[str, Any] = field(default_factory=dict)
    screen: str | None = None


@dataclass(frozen=True, slots=True)
class Complete:
    """Close the flow; ``params`` (plus the flow token) come back in the completion message."""

    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InvalidToken:
    """The flow token is no longer valid: HTTP 427, the flow closes showing ``message``."""

    message: str


Result: TypeAlias = NextScreen | ErrorMessage | Complete | InvalidToken
Handler: TypeAlias = Callable[[FlowRequest], Result]


class HandlerError(Exception):
    """A handler is missing for a request, or returned something unusable."""


class HandlerConfigError(ValueError):
    """FLOWS_HANDLER does not name a usable handler."""


def response_payload(result: Result, request: FlowRequest) -> dict[str, Any]:
    """The JSON object answering ``request`` (HTTP 200), in the documented key order."""
    if isinstance(result, NextScreen):
        return {"screen": result.screen, "data": dict(result.data)}
    if isinstance(result, ErrorMessage):
        screen = result.screen or request.screen
        if not screen:
            raise HandlerError("ErrorMessage needs a screen when the request names none")
        return {"screen": screen, "data": {**result.data, "error_message": result.message}}
    if isinstance(result, Complete):
        params = {"flow_token": request.flow_token}
        params.update((k, v) for k, v in result.params.items() if k != "flow_token")
        return {
            "screen": SUCCESS_SCREEN,
            "data": {"extension_message_response": {"params": params}},
        }
    raise HandlerError(f"handler returned {type(result).__name__}, not a Result")


class FlowRouter:
    """Handlers registered per action and screen; the router itself is a Handler.

    Lookup order: (action, screen), then (action, any screen), then the fallback.
    """

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str | None], Handler] = {}
        self._fallback: Handler | None = None

    def on(self, action: str, screen: str | None = None) -> Callable[[Handler], Handler]:
        """Register a handler for ``action`` from ``screen`` (None: from any screen)."""

        def register(fn: Handler) -> Handler:
            key = (action, screen)
            if key in self._routes:
                raise ValueError(f"a handler for {action} on {screen or 'any screen'} exists")
            self._routes[key] = fn
            return fn

        return register

    def init(self, fn: Handler) -> Handler:
        """Register the handler that answers INIT (the flow opens)."""
        return self.on(INIT)(fn)

    def back(self, fn: Handler) -> Handler:
        """Register the handler that answers BACK from any screen."""
        return self.on(BACK)(fn)

    def screen(self, name: str) -> Callable[[Handler], Handler]:
        """Register the handler for data_exchange submitted from screen ``name``."""
        return self.on(DATA_EXCHANGE, name)

    def fallback(self, fn: Handler) -> Handler:
        """Register the handler for anything no other route matches."""
        self._fallback = fn
        return fn

    def __call__(self, request: FlowRequest) -> Result:
        fn = (
            self._routes.get((request.action, request.screen or None))
            or self._routes.get((request.action, None))
            or self._fallback
        )
        if fn is None:
            raise HandlerError(
                f"no handler for action {request.action!r} on screen {request.screen!r}"
            )
        return fn(request)


def load_handler(spec: str) -> Handler:
    """Resolve ``module:object`` or ``module:factory()`` to a handler callable."""
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise HandlerConfigError(f"expected 'module:object', got {spec!r}")
    call = attr.endswith("()")
    attr = attr.removesuffix("()")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise HandlerConfigError(f"cannot import {module_name!r}: {err}") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerConfigError(f"{module_name!r} has no attribute {attr!r}") from None
    if call:
        try:
            target = target()
        except Exception as err:
            raise HandlerConfigError(f"{attr}() failed: {type(err).__name__}: {err}") from None
    if not callable(target):
        raise HandlerConfigError(f"{spec!r} is not callable")
    handler: Handler = target
    return handler
