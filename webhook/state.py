"""What the app holds for the life of the process: settings and the engine."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app
from sqlalchemy import Engine

from webhook.config import Settings

EXTENSION_KEY = "webhook"


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    head_revision: str | None


def state(app: Flask | None = None) -> AppState:
    found = (app or current_app).extensions[EXTENSION_KEY]
    assert isinstance(found, AppState)
    return found
