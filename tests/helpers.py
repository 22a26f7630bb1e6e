"""Helpers for tests: signing, posting, fixtures."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from webhook.ingest.signing import sign_headers

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Test vectors copied from the specs (sinch-signing-vector.json, flows-vectors/).
SPEC = Path(__file__).resolve().parent / "vectors"
SECRET = "test-webhook-secret"


def sign(body: bytes, secret: str = SECRET, nonce: str | None = None) -> dict[str, str]:
    """Signature headers for ``body``, as Sinch would send them."""
    return sign_headers(secret, body, nonce or uuid.uuid4().hex)


def post_callback(client: FlaskClient, body: bytes, secret: str = SECRET, wait: bool = True) -> Any:
    """POST a signed callback; with ``wait``, return once the projector has projected
    what is pending (tests that read typed rows need them)."""
    headers = {"Content-Type": "application/json", **sign(body, secret)}
    response = client.post("/sinch/callbacks", data=body, headers=headers)
    if wait:
        project(client.application)
    return response


def project(target: Any) -> None:
    """Project every pending event now (an app or an engine): what a test that needs
    the typed rows waits for, with no sleep. Safe beside the app's projector thread."""
    from webhook.projection.projector import drain
    from webhook.projection.thread import wait_projected

    engine = target.extensions["webhook"].engine if hasattr(target, "extensions") else target
    drain(engine)
    wait_projected(engine, timeout=30)  # events another projector claimed are committed


def fixture_bytes(name: str) -> bytes:
    """The exact bytes of tests/fixtures/<name>.json."""
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    value = json.loads(fixture_bytes(name))
    assert isinstance(value, dict)
    return value


def rows(engine: Any, table: str, order_by: str = "id") -> list[dict[str, Any]]:
    """Every row of ``table`` as a dict (test inspection only)."""
    from sqlalchemy import select

    from webhook.db.models import Base

    t = Base.metadata.tables[table]
    with engine.connect() as conn:
        result = conn.execute(select(t).order_by(t.c[order_by]))
        return [dict(row._mapping) for row in result]


def count(engine: Any, table: str) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
