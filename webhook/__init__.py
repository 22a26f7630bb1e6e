"""Receiver for Sinch Conversation API callbacks and WhatsApp Flows."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from webhook.config import Settings
from webhook.db import make_engine
from webhook.errors import register_error_handlers
from webhook.migrate import head_revision
from webhook.state import EXTENSION_KEY, AppState

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; nothing connects to the database until a request or command needs it."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.config["JSON_SORT_KEYS"] = False
    if config:
        app.config.update(config)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    app.extensions[EXTENSION_KEY] = AppState(settings, engine, head_revision())

    from webhook import cli, routes

    app.register_blueprint(routes.bp)
    cli.register(app)
    register_error_handlers(app)

    if not settings.webhook_secrets:
        log.warning(
            "SINCH_WEBHOOK_SECRETS is not set: callbacks are accepted WITHOUT signature "
            "verification. Set it to the webhook secret configured in Sinch."
        )
    return app
