"""Helpers for the Flows data-endpoint tests: the shared vectors and posting."""

from __future__ import annotations

import base64
import json
from typing import Any

from flask.testing import FlaskClient

from tests.helpers import SPEC, rows
from webhook.flows.recording import flush_all

VECTORS = SPEC / "flows-vectors"
KEYS = json.loads((VECTORS / "keys_and_secrets.json").read_text())
PASSPHRASE: str = KEYS["passphrase_for_encrypted_keys"]
APP_SECRET: str = KEYS["app_secret_for_signatures"]
KEY_FILES = sorted(name for name in KEYS["key_files"] if name.startswith("private_key"))
VECTOR_NAMES = sorted(p.stem for p in VECTORS.glob("0*.json"))
NEGATIVE_CASES: list[dict[str, Any]] = json.loads((VECTORS / "negative_cases.json").read_text())[
    "cases"
]
EXAMPLE_HANDLER = "webhook.flows.example_booking:make_handler()"


def key_path(name: str = "private_key.pem") -> str:
    return str(VECTORS / name)


def vector(name: str) -> dict[str, Any]:
    value = json.loads((VECTORS / f"{name}.json").read_text())
    assert isinstance(value, dict)
    return value


def aes_key_iv(v: dict[str, Any]) -> tuple[bytes, bytes]:
    req = v["request"]
    return base64.b64decode(req["aes_key_b64"]), base64.b64decode(req["iv_b64"])


def post_flow(client: FlaskClient, body: bytes | str, signature: str | None = None) -> Any:
    """POST to /flows/data (signed when ``signature`` is given)."""
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    data = body.encode("utf-8") if isinstance(body, str) else body
    return client.post("/flows/data", data=data, headers=headers)


def post_vector(client: FlaskClient, v: dict[str, Any]) -> Any:
    return post_flow(client, v["request"]["http_body"], v["request"]["x_hub_signature_256"])


def flows_settings(*key_files: str, **overrides: Any) -> dict[str, Any]:
    """Settings overrides for an app serving the example handler with the vector keys."""
    settings: dict[str, Any] = {
        "flows_private_key": tuple(key_path(f) for f in key_files or ("private_key.pem",)),
        "flows_private_key_passphrase": (PASSPHRASE,),
        "flows_handler": EXAMPLE_HANDLER,
        "meta_app_secret": (APP_SECRET,),
    }
    settings.update(overrides)
    return settings


def recorded(engine: Any) -> list[dict[str, Any]]:
    """The flow_exchanges rows, once the background recorders have written them."""
    flush_all()
    return rows(engine, "flow_exchanges")
