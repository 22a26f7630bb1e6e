"""A database nobody migrated: callbacks are answered 503 schema_out_of_date (Sinch retries
later), /readyz says so, and the log line names the cause; never a 500."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask import Flask

from tests.helpers import SECRET, fixture_bytes, post_callback
from webhook import create_app
from webhook.core.settings import Settings


@pytest.fixture
def unmigrated_app(backend: str, new_database_url: Callable[[str], str]) -> Flask:
    url = new_database_url(backend)
    settings = Settings().with_overrides(
        database_url=url, sinch_webhook_secrets=(SECRET,), log_format="json"
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def test_callbacks_on_an_unmigrated_database_are_503(
    unmigrated_app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    client = unmigrated_app.test_client()
    response = post_callback(client, fixture_bytes("message_inbound__text"), wait=False)
    assert response.status_code == 503
    assert response.get_json()["error"] == "schema_out_of_date"
    assert "flowhooks db upgrade" in response.get_json()["message"]
    assert response.headers["Retry-After"] == "5"
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
             if line.startswith("{") and '"webhook.callback"' in line]  # fmt: skip
    assert [(line["http_status"], line["error"], line["cause"]) for line in lines] == [
        (503, "schema_out_of_date", "schema")
    ]


def test_readyz_says_the_database_has_no_schema(unmigrated_app: Flask) -> None:
    response = unmigrated_app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["error"] == "schema_out_of_date"
    assert "has no schema" in response.get_json()["message"]
