"""What the app holds for the life of the process: settings, the engine, the projector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flask import Flask, current_app
from sqlalchemy import Engine

from webhook.core.settings import Settings


class BackgroundWorker(Protocol):
    """A thread of the process the app starts and tests stop (the projector)."""

    def stop(self, timeout: float = ...) -> None: ...


EXTENSION_KEY = "webhook"


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    head_revision: str | None
    # The background projector of this process, when it runs here (see create_app).
    projector: BackgroundWorker | None = None


def state(app: Flask | None = None) -> AppState:
    found = (app or current_app).extensions[EXTENSION_KEY]
    assert isinstance(found, AppState)
    return found
