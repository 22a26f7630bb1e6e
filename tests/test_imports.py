"""What a serving process imports: only what serving needs (memory per gunicorn worker).

A fresh interpreter builds the app as wsgi.py does, answers /healthz, /readyz,
/metrics, a callback and /flows/data, and reports sys.modules. Alembic, the command
modules with httpx and tenacity, cryptography without Flows keys, psycopg on SQLite
and SQLite's dialect on PostgreSQL would each cost megabytes in every worker
(docs/performance.md "Memory").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import Engine

from tests.flows_helpers import APP_SECRET, EXAMPLE_HANDLER, PASSPHRASE, key_path, vector
from tests.helpers import FIXTURES, ROOT, SECRET

pytestmark = pytest.mark.slow

SERVE = """
import json, sys
from webhook.ingest.signing import sign_headers
import wsgi

client = wsgi.app.test_client()
body = open(sys.argv[1], "rb").read()
headers = {"Content-Type": "application/json", **sign_headers(sys.argv[2], body, "n1")}
flows = json.loads(sys.argv[3])
statuses = {
    "healthz": client.get("/healthz").status_code,
    "readyz": client.get("/readyz").status_code,
    "metrics": client.get("/metrics").status_code,
    "callback": client.post("/sinch/callbacks", data=body, headers=headers).status_code,
    "flows": client.post(
        "/flows/data", data=flows["body"], headers={"X-Hub-Signature-256": flows["signature"]}
    ).status_code,
}
print(json.dumps({"statuses": statuses, "modules": sorted(sys.modules)}))
"""

NEVER = (
    "alembic",
    "mako",
    "pygments",
    "httpx",
    "tenacity",
    "webhook.flows.client",
    "webhook.replay.forward",
    "webhook.replay.cli",
    "webhook.rebuild",
    "webhook.reports.cli",
    "webhook.reports.queries",
)


def serve(database_url: str, **env: str) -> tuple[dict[str, int], set[str]]:
    ping = vector("01_ping")["request"]
    flows = {"body": ping["http_body"], "signature": ping["x_hub_signature_256"]}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWS_", "META_"))}
    out = subprocess.run(
        [sys.executable, "-c", SERVE, str(FIXTURES / "message_inbound__text.json"), SECRET,
         json.dumps(flows)],
        cwd=ROOT,
        env={**base, "DATABASE_URL": database_url, "SINCH_WEBHOOK_SECRETS": SECRET,
             "LOG_LEVEL": "warning", **env},
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["statuses"], set(result["modules"])


def loaded(modules: set[str], *names: str) -> list[str]:
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


def test_serving_imports_only_what_it_needs(database_url: str, engine: Engine) -> None:
    statuses, modules = serve(database_url)
    assert statuses == {
        "healthz": 200,
        "readyz": 200,
        "metrics": 200,
        "callback": 200,
        "flows": 503,  # not configured
    }
    assert loaded(modules, *NEVER, "cryptography") == []
    if engine.dialect.name == "sqlite":
        assert loaded(modules, "psycopg") == []
    else:
        assert loaded(modules, "sqlalchemy.dialects.sqlite") == []


def test_serving_with_flows_keys_loads_cryptography_only(database_url: str, engine: Engine) -> None:
    statuses, modules = serve(
        database_url,
        FLOWS_PRIVATE_KEY=key_path(),
        FLOWS_PRIVATE_KEY_PASSPHRASE=PASSPHRASE,
        FLOWS_HANDLER=EXAMPLE_HANDLER,
        META_APP_SECRET=APP_SECRET,
    )
    assert statuses["flows"] == 200 and statuses["callback"] == 200
    assert loaded(modules, "cryptography") == ["cryptography"]
    assert loaded(modules, *NEVER) == []
