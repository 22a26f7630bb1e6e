"""Receiver for Sinch Conversation API callbacks and WhatsApp Flows."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask

from webhook.core.envvars import mask_url
from webhook.core.logs import configure_logging
from webhook.core.settings import Settings
from webhook.core.state import EXTENSION_KEY, AppState
from webhook.db.engine import make_engine
from webhook.db.migrate import head_revision
from webhook.http.errors import register_error_handlers

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; nothing connects to the database until a request or command needs it."""
    settings = settings or Settings.from_env()
    configure_logging(settings.ops.log_level, settings.ops.log_format)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.http.max_content_length
    app.config["JSON_SORT_KEYS"] = False
    if config:
        app.config.update(config)
    engine = make_engine(
        settings.database.url,
        sqlite_synchronous=settings.database.sqlite_synchronous,
        pool_size=settings.database.pool_size,
    )
    app_state = app.extensions[EXTENSION_KEY] = AppState(settings, engine, head_revision())

    from webhook.core import cli
    from webhook.flows import endpoint as flows_endpoint
    from webhook.http import metrics, observe, routes

    app.register_blueprint(routes.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(flows_endpoint.bp)  # loads the Flows keys and handler (start-up)
    observe.init_app(app)
    cli.register(app)
    register_error_handlers(app)

    serving = _serving()
    if serving:
        shown = settings.database.url
        log.info("database: %s", mask_url(shown) if "@" in shown else shown)
    if settings.projection.in_process and serving:
        _start_projector(app_state)
    if not settings.callbacks.secrets and serving:
        log.warning(
            "SINCH_WEBHOOK_SECRETS is not set: callbacks are accepted WITHOUT signature "
            "verification. Set it to the webhook secret configured in Sinch."
        )
    return app


def _start_projector(app_state: AppState) -> None:
    """Project in a thread of this process, woken after each committed append."""
    from webhook.ingest.append import on_append
    from webhook.projection.thread import projector_thread

    thread = projector_thread(app_state.engine)
    on_append(app_state.engine, thread.notify)
    thread.start()
    app_state.projector = thread


def _serving() -> bool:
    """True unless loaded for a `flask` command other than `run` (the warning is noise there)."""
    if click.get_current_context(silent=True) is None:
        return True
    return sys.argv[1:2] == ["run"]
