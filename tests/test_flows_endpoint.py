"""POST /flows/data: the shared vectors, signatures, tokens, handlers, keys, recording."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Flask
from sqlalchemy import Engine, text

from tests.flows_helpers import (
    APP_SECRET,
    KEY_FILES,
    NEGATIVE_CASES,
    PASSPHRASE,
    aes_key_iv,
    flows_settings,
    key_path,
    post_flow,
    post_vector,
    recorded,
    vector,
)
from tests.helpers import SECRET, count, fixture_json, post_callback
from webhook import create_app
from webhook.core.logs import token_ref
from webhook.core.settings import ConfigError, Settings
from webhook.flows import crypto
from webhook.flows.handlers import FlowRequest, NextScreen, Result
from webhook.flows.recording import flush_all

MakeApp = Callable[..., Flask]
VECTOR_TOKEN = "ft_7f3c1e9a2b4d4c58a1e0d6b9c2f4a871"
SENT_TOKEN = "ftk_7QmZ3xRk2vN8pL4sW9aB"  # in message_submit__flows and the nfm_reply fixture
PUBLIC_KEY = crypto.load_private_key(key_path(), None).public_key()


@pytest.fixture
def make_app(make_app: MakeApp) -> Iterator[MakeApp]:
    """conftest's make_app, with every queued flow_exchanges row written before cleanup."""
    yield make_app
    flush_all()


def encrypted(payload: dict[str, Any], public_key: rsa.RSAPublicKey = PUBLIC_KEY) -> Any:
    """A signed request body for ``payload``: (body bytes, signature, aes_key, iv)."""
    fields, aes_key, iv = crypto.encrypt_request(payload, public_key)
    body = json.dumps(fields).encode()
    return body, crypto.signature_for(body, APP_SECRET), aes_key, iv


def exchange(client: Any, payload: dict[str, Any], **kw: Any) -> tuple[int, Any]:
    """Post ``payload`` encrypted; return (status, decrypted answer or None when empty)."""
    body, signature, aes_key, iv = encrypted(payload, **kw)
    response = post_flow(client, body, signature)
    raw = response.get_data(as_text=True)
    return response.status_code, crypto.decrypt_response(raw, aes_key, iv) if raw else None


def summary(token: str) -> dict[str, Any]:
    data = {"slot": "2024-01-01T10:30", "name": "Ana", "email": "ana@example.com", "terms": True}
    return {"version": "3.0", "action": "data_exchange", "screen": "SUMMARY", "data": data,
            "flow_token": token}  # fmt: skip


# --- the shared vectors ---------------------------------------------------------------


@pytest.mark.parametrize("key_file", KEY_FILES)
def test_vectors_in_order_with_every_key_file(
    make_app: MakeApp, engine: Engine, key_file: str
) -> None:
    client = make_app(**flows_settings(key_file)).test_client()
    names = ["01_ping", "02_init", "03_data_exchange_complete", "04_back",
             "05_error_notification", "06_data_exchange_invalid_input"]  # fmt: skip
    for name in names:
        v = vector(name)
        response = post_vector(client, v)
        expected = v["response"]
        assert response.status_code == expected["http_status"], name
        assert response.mimetype == expected["content_type"]
        body = response.get_data(as_text=True)
        aes_key, iv = aes_key_iv(v)
        assert crypto.decrypt_response(body, aes_key, iv) == expected["plaintext"], name
        # The example handler returns the documented objects, so the bytes match too.
        assert body == expected["encrypted_body_b64"], name
    # 03 again: the example handler knows the booking is done and answers 427.
    v = vector("03_data_exchange_complete")
    response = post_vector(client, v)
    alternate = v["alternate_response"]
    assert response.status_code == alternate["http_status"] == 427
    assert response.mimetype == "text/plain"
    aes_key, iv = aes_key_iv(v)
    assert crypto.decrypt_response(response.get_data(), aes_key, iv) == alternate["plaintext"]
    assert response.get_data(as_text=True) == alternate["encrypted_body_b64"]
    written = recorded(engine)
    assert [(r["action"], r["screen"], r["answer_screen"], r["http_status"]) for r in written] == [
        ("ping", None, None, 200),
        ("INIT", None, "APPOINTMENT", 200),
        ("data_exchange", "SUMMARY", "SUCCESS", 200),
        ("BACK", "DETAILS", "APPOINTMENT", 200),
        ("data_exchange", None, None, 200),
        ("data_exchange", "DETAILS", "DETAILS", 200),
        ("data_exchange", "SUMMARY", None, 427),
    ]
    assert [r["flow_token"] for r in written[1:]] == [VECTOR_TOKEN] * 6
    assert written[4]["error"].startswith("client error invalid-screen-transition: Screen SUMMRY")
    assert all(r["latency_ms"] is not None and r["latency_ms"] >= 0 for r in written)
    assert all(r["data"] is None for r in written)  # FLOWS_STORE_DATA is off
    assert all(r["received_at"].tzinfo is not None for r in written)


@pytest.mark.parametrize("case", NEGATIVE_CASES, ids=lambda c: c["name"])
def test_negative_cases_are_refused_with_an_empty_body(
    make_app: MakeApp, engine: Engine, case: dict[str, Any]
) -> None:
    client = make_app(**flows_settings()).test_client()
    response = post_flow(client, case["http_body"], case["x_hub_signature_256"])
    assert response.status_code == case["expected_http_status"]
    assert response.get_data() == b""
    [row] = recorded(engine)
    assert row["http_status"] == case["expected_http_status"]
    assert row["action"] is None
    assert row["error"].startswith("signature" if row["http_status"] == 432 else "cannot decrypt")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"encrypted_flow_data": "x"}',
        b'{"encrypted_flow_data": "%%%", "encrypted_aes_key": "AA==", "initial_vector": "AA=="}',
        b"[" * 100_000 + b"]" * 100_000,  # nested past any parser: 421, not 500
    ],
)
def test_malformed_bodies_answer_421(make_app: MakeApp, body: bytes) -> None:
    client = make_app(**flows_settings(meta_app_secret=())).test_client()
    response = post_flow(client, body)
    assert response.status_code == 421
    assert response.get_data() == b""


# --- signature ------------------------------------------------------------------------


def test_signature_off_accepts_unsigned_and_wrongly_signed_requests(make_app: MakeApp) -> None:
    client = make_app(**flows_settings(meta_app_secret=())).test_client()
    v = vector("01_ping")
    assert post_flow(client, v["request"]["http_body"]).status_code == 200
    [bad] = [c for c in NEGATIVE_CASES if c["name"] == "bad_signature"]
    response = post_flow(client, bad["http_body"], bad["x_hub_signature_256"])
    assert response.status_code == 200
    assert response.mimetype == "text/plain"


def test_signature_on_refuses_a_missing_header(make_app: MakeApp, engine: Engine) -> None:
    client = make_app(**flows_settings()).test_client()
    response = post_flow(client, vector("01_ping")["request"]["http_body"])
    assert response.status_code == 432
    assert response.get_data() == b""
    assert recorded(engine)[0]["error"] == "signature missing"


def test_any_configured_app_secret_matches(make_app: MakeApp) -> None:
    client = make_app(**flows_settings(meta_app_secret=("new-secret", APP_SECRET))).test_client()
    assert post_vector(client, vector("01_ping")).status_code == 200
    only_new = make_app(**flows_settings(meta_app_secret=("new-secret",))).test_client()
    assert post_vector(only_new, vector("01_ping")).status_code == 432


# --- flow tokens ----------------------------------------------------------------------


def test_unknown_token_with_the_check_off_reaches_the_handler(make_app: MakeApp) -> None:
    client = make_app(**flows_settings(flows_require_known_token=False)).test_client()
    status, answer = exchange(client, {"version": "3.0", "action": "INIT", "flow_token": "nope"})
    assert status == 200
    assert answer["screen"] == "APPOINTMENT"


def test_unknown_token_with_the_check_on_answers_427_encrypted(
    make_app: MakeApp, engine: Engine
) -> None:
    client = make_app(**flows_settings(flows_require_known_token=True)).test_client()
    v = vector("02_init")
    response = post_vector(client, v)
    assert response.status_code == 427
    assert response.mimetype == "text/plain"
    aes_key, iv = aes_key_iv(v)
    answer = crypto.decrypt_response(response.get_data(), aes_key, iv)
    assert set(answer) == {"error_msg"}
    assert answer["error_msg"]
    status, answer = exchange(client, {"version": "3.0", "action": "INIT"})  # no token at all
    assert status == 427
    assert "error_msg" in answer
    assert [r["error"] for r in recorded(engine)] == [
        "flow token unknown",
        "flow token missing",
    ]


def test_ping_and_error_notifications_need_no_known_token(make_app: MakeApp) -> None:
    client = make_app(**flows_settings(flows_require_known_token=True)).test_client()
    for name in ("01_ping", "05_error_notification"):
        v = vector(name)
        response = post_vector(client, v)
        assert response.status_code == 200
        assert response.get_data(as_text=True) == v["response"]["encrypted_body_b64"]


def test_error_key_notification_is_acknowledged(make_app: MakeApp, engine: Engine) -> None:
    client = make_app(**flows_settings()).test_client()
    payload = {"version": "3.0", "action": "INIT", "screen": "DETAILS", "flow_token": "t",
               "data": {"error_key": "payload-schema-error", "error_message": "bad"}}  # fmt: skip
    assert exchange(client, payload) == (200, {"data": {"acknowledged": True}})
    [row] = recorded(engine)
    assert row["error"] == "client error payload-schema-error: bad"
    assert row["answer_screen"] is None


def test_known_token_passes_until_the_flow_is_completed(make_app: MakeApp, engine: Engine) -> None:
    app = make_app(
        **flows_settings(flows_require_known_token=True, sinch_webhook_secrets=(SECRET,))
    )
    client = app.test_client()
    submit = json.dumps(fixture_json("message_submit__flows")).encode()
    assert post_callback(client, submit).status_code == 200
    assert count(engine, "flow_sends") == 1
    status, answer = exchange(
        client, {"version": "3.0", "action": "INIT", "flow_token": SENT_TOKEN}
    )
    assert (status, answer["screen"]) == (200, "APPOINTMENT")
    status, answer = exchange(client, summary(SENT_TOKEN))
    assert (status, answer["screen"]) == (200, "SUCCESS")
    # An exchange answered SUCCESS completes the token for the endpoint's own check
    # (once its row is written: a few milliseconds after the answer).
    flush_all()
    status, answer = exchange(
        client, {"version": "3.0", "action": "BACK", "flow_token": SENT_TOKEN}
    )
    assert status == 427
    assert answer == {"error_msg": "This flow was already completed."}
    assert recorded(engine)[-1]["error"] == "flow token already completed"


def test_a_flow_response_row_completes_the_token(make_app: MakeApp) -> None:
    app = make_app(
        **flows_settings(flows_require_known_token=True, sinch_webhook_secrets=(SECRET,))
    )
    client = app.test_client()
    post_callback(client, json.dumps(fixture_json("message_submit__flows")).encode())
    post_callback(client, json.dumps(fixture_json("message_inbound__flow_nfm_reply")).encode())
    status, answer = exchange(
        client, {"version": "3.0", "action": "INIT", "flow_token": SENT_TOKEN}
    )
    assert status == 427
    assert answer == {"error_msg": "This flow was already completed."}


def test_token_check_without_a_database_answers_503(
    make_app: MakeApp, new_database_url: Callable[[str], str], backend: str
) -> None:
    empty = new_database_url(backend)  # no tables: the check cannot run
    client = make_app(**flows_settings(flows_require_known_token=True, database_url=empty))
    status, answer = exchange(
        client.test_client(), {"version": "3.0", "action": "INIT", "flow_token": "t"}
    )
    assert (status, answer) == (503, None)


def test_completion_here_joins_its_flow_response_by_token(
    make_app: MakeApp, engine: Engine
) -> None:
    client = make_app(**flows_settings(sinch_webhook_secrets=(SECRET,))).test_client()
    status, answer = exchange(client, summary(SENT_TOKEN))
    assert status == 200
    params = answer["data"]["extension_message_response"]["params"]
    assert params == {"flow_token": SENT_TOKEN, "booking_id": "BK-1042"}
    # WhatsApp then delivers the nfm_reply carrying those params through Sinch.
    inbound = fixture_json("message_inbound__flow_nfm_reply")
    reply = inbound["message"]["contact_message"]["channel_specific_message"]["message"]
    reply["nfm_reply"]["response_json"] = json.dumps(params)
    assert post_callback(client, json.dumps(inbound).encode()).status_code == 200
    flush_all()
    with engine.connect() as conn:
        joined = conn.execute(
            text(
                "SELECT e.flow_token, e.received_at, r.message_id, r.response "
                "FROM flow_exchanges e JOIN flow_responses r ON r.flow_token = e.flow_token "
                "WHERE e.answer_screen = 'SUCCESS' AND e.http_status = 200"
            )
        ).all()
    assert len(joined) == 1
    token, _, message_id, response = joined[0]
    assert (token, message_id) == (SENT_TOKEN, "01KKBFV7F08WHK09EY397B72HT")
    response = json.loads(response) if isinstance(response, str) else response
    assert response["booking_id"] == "BK-1042"


# --- handlers -------------------------------------------------------------------------


def failing_handler(req: FlowRequest) -> Result:
    raise RuntimeError("the booking system is down")


def slow_handler(req: FlowRequest) -> Result:
    time.sleep(0.02)
    return NextScreen("DONE", {"ok": True})


def wrong_result_handler(req: FlowRequest) -> Result:
    return {"screen": "X"}  # type: ignore[return-value]


def unserializable_handler(req: FlowRequest) -> Result:
    return NextScreen("X", {"when": object()})


SECRET_DATA = {"email": "private@example.com"}


def test_handler_error_answers_500_and_logs_the_token_not_the_data(
    make_app: MakeApp, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    handler = f"{__name__}:failing_handler"
    client = make_app(**flows_settings(flows_handler=handler)).test_client()
    payload = {"version": "3.0", "action": "data_exchange", "screen": "DETAILS",
               "data": SECRET_DATA, "flow_token": "tok-500"}  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="webhook.flows.endpoint"):
        assert exchange(client, payload) == (500, None)
    [record] = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert f"token {token_ref('tok-500')}" in record.getMessage()
    assert "tok-500" not in record.getMessage()  # the token itself is never logged
    assert record.exc_info is not None
    assert "private@example.com" not in caplog.text
    [row] = recorded(engine)
    assert (row["http_status"], row["error"]) == (500, "handler failed: RuntimeError")


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        ("wrong_result_handler", "handler failed: handler returned dict, not a Result"),
        ("unserializable_handler", "handler failed: TypeError"),
    ],
)
def test_unusable_handler_results_answer_500(
    make_app: MakeApp, engine: Engine, handler: str, error: str
) -> None:
    client = make_app(**flows_settings(flows_handler=f"{__name__}:{handler}")).test_client()
    assert exchange(client, {"action": "INIT", "flow_token": "t"}) == (500, None)
    assert recorded(engine)[0]["error"] == error


def test_slow_handler_is_logged(make_app: MakeApp, caplog: pytest.LogCaptureFixture) -> None:
    settings = flows_settings(flows_handler=f"{__name__}:slow_handler", flows_handler_budget_ms=1)
    client = make_app(**settings).test_client()
    with caplog.at_level(logging.WARNING, logger="webhook.flows.endpoint"):
        status, answer = exchange(client, {"action": "INIT", "flow_token": "slow-tok"})
    assert (status, answer) == (200, {"screen": "DONE", "data": {"ok": True}})
    assert "budget 1 ms" in caplog.text
    assert f"token {token_ref('slow-tok')}" in caplog.text and "slow-tok" not in caplog.text


def test_fast_handler_is_not_logged(make_app: MakeApp, caplog: pytest.LogCaptureFixture) -> None:
    client = make_app(**flows_settings()).test_client()
    with caplog.at_level(logging.WARNING, logger="webhook.flows.endpoint"):
        assert exchange(client, {"action": "INIT", "flow_token": "t"})[0] == 200
    assert "budget" not in caplog.text


def test_without_a_handler_only_pings_are_answered(make_app: MakeApp) -> None:
    client = make_app(**flows_settings(flows_handler="")).test_client()
    assert post_vector(client, vector("01_ping")).status_code == 200
    assert post_vector(client, vector("02_init")).status_code == 500


def test_payload_with_bad_shapes_answers_400(make_app: MakeApp) -> None:
    client = make_app(**flows_settings()).test_client()
    assert exchange(client, {"action": "INIT", "data": [1]}) == (400, None)
    assert exchange(client, {"action": 5, "flow_token": "t"}) == (400, None)
    assert exchange(client, {"action": "INIT", "screen": 7}) == (400, None)


# --- keys -----------------------------------------------------------------------------


def test_key_rotation_decrypts_requests_for_either_key(make_app: MakeApp, engine: Engine) -> None:
    new_pem, _ = crypto.generate_key_pair("rotation passphrase")
    new_key = crypto.load_private_key(new_pem, "rotation passphrase")
    settings = flows_settings(
        meta_app_secret=(),
        flows_private_key=(new_pem.decode(), key_path("private_key_encrypted_pkcs1_des3.pem")),
        flows_private_key_passphrase=("rotation passphrase", PASSPHRASE),
    )
    client = make_app(**settings).test_client()
    # Old key (second in the list): the vectors still decrypt.
    assert post_vector(client, vector("01_ping")).status_code == 200
    # New key: a request encrypted for the freshly uploaded public key.
    status, answer = exchange(
        client, {"action": "INIT", "flow_token": "t"}, public_key=new_key.public_key()
    )
    assert (status, answer["screen"]) == (200, "APPOINTMENT")
    # A key neither of them holds still answers 421.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert exchange(client, {"action": "ping"}, public_key=other.public_key()) == (421, None)
    assert [r["http_status"] for r in recorded(engine)] == [200, 200, 421]


def test_round_trip_encrypted_as_whatsapp_does(make_app: MakeApp, tmp_path: Any) -> None:
    """Independent of webhook.flows.crypto: the test does WhatsApp's half by hand."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"round trip"),
    )
    (tmp_path / "key.pem").write_bytes(pem)
    settings = flows_settings(
        meta_app_secret=("s3cret",),
        flows_private_key=(str(tmp_path / "key.pem"),),
        flows_private_key_passphrase=("round trip",),
    )
    client = make_app(**settings).test_client()
    aes_key, iv = os.urandom(16), os.urandom(16)
    request = {
        "version": "3.0",
        "action": "data_exchange",
        "screen": "DETAILS",
        "data": {"name": "Zoë", "email": "bad"},
        "flow_token": "rt",
    }
    plaintext = json.dumps(request)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    body = json.dumps(
        {
            "encrypted_flow_data": base64.b64encode(
                AESGCM(aes_key).encrypt(iv, plaintext.encode(), None)
            ).decode(),
            "encrypted_aes_key": base64.b64encode(
                private.public_key().encrypt(aes_key, oaep)
            ).decode(),
            "initial_vector": base64.b64encode(iv).decode(),
        }
    ).encode()
    signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    response = post_flow(client, body, signature)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    flipped = bytes(b ^ 0xFF for b in iv)
    sealed = base64.b64decode(response.get_data())
    answer = json.loads(AESGCM(aes_key).decrypt(flipped, sealed, None))
    assert answer["screen"] == "DETAILS"
    assert answer["data"]["name"] == "Zoë"
    assert "valid e-mail" in answer["data"]["error_message"]


# --- recording ------------------------------------------------------------------------


def test_submitted_data_is_stored_only_when_enabled(make_app: MakeApp, engine: Engine) -> None:
    payload = {"action": "data_exchange", "screen": "DETAILS", "flow_token": "t",
               "data": {"name": "Ana", "email": "ana@example.com"}}  # fmt: skip
    exchange(make_app(**flows_settings()).test_client(), payload)
    flush_all()  # two apps, two writers: keep the rows in request order
    exchange(make_app(**flows_settings(flows_store_data=True)).test_client(), payload)
    stored = [r["data"] for r in recorded(engine)]
    assert stored[0] is None
    assert (json.loads(stored[1]) if isinstance(stored[1], str) else stored[1]) == payload["data"]


def test_long_values_are_clipped_to_their_columns(make_app: MakeApp, engine: Engine) -> None:
    client = make_app(**flows_settings()).test_client()
    payload = {"action": "INIT", "screen": "S" * 300, "flow_token": "t" * 400}
    status, answer = exchange(client, payload)
    assert (status, answer["screen"]) == (200, "APPOINTMENT")
    [written] = recorded(engine)
    assert (written["flow_token"], written["screen"]) == ("t" * 255, "S" * 128)


def test_a_failed_insert_does_not_change_the_answer(
    make_app: MakeApp,
    new_database_url: Callable[[str], str],
    backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    empty = new_database_url(backend)  # no tables: the flow_exchanges insert fails
    client = make_app(**flows_settings(database_url=empty)).test_client()
    v = vector("02_init")
    with caplog.at_level(logging.ERROR, logger="webhook.flows.recording"):
        response = post_vector(client, v)
        assert response.status_code == 200
        assert response.get_data(as_text=True) == v["response"]["encrypted_body_b64"]
        flush_all()
    assert f"could not record 1 flow exchange(s) (tokens {token_ref(VECTOR_TOKEN)})" in caplog.text
    assert VECTOR_TOKEN not in caplog.text


# --- configuration --------------------------------------------------------------------


def test_without_keys_the_endpoint_says_it_is_not_configured(client: Any, engine: Engine) -> None:
    response = post_vector(client, vector("01_ping"))
    assert response.status_code == 503
    assert response.get_json() == {
        "error": "flows_not_configured",
        "message": "the Flows data endpoint is not configured (set FLOWS_PRIVATE_KEY)",
    }
    # The callback endpoint works without any Flows setting.
    body = json.dumps(fixture_json("message_inbound__text")).encode()
    assert post_callback(client, body).status_code == 200
    assert recorded(engine) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"flows_private_key_passphrase": ("wrong",)},
         "FLOWS_PRIVATE_KEY_PASSPHRASE: key 1 of 1: the passphrase does not decrypt the key"),
        ({"flows_private_key_passphrase": ()},
         "FLOWS_PRIVATE_KEY_PASSPHRASE: key 1 of 1: the key is encrypted and no passphrase is set"),
        ({"flows_private_key": ("/nonexistent/key.pem",)},
         "FLOWS_PRIVATE_KEY: key 1 of 1: cannot read key file '/nonexistent/key.pem'"),
        ({"flows_handler": "webhook.flows.example_booking:missing"},
         "FLOWS_HANDLER: 'webhook.flows.example_booking' has no attribute 'missing'"),
    ],
)  # fmt: skip
def test_bad_flows_settings_fail_at_start_up(
    tmp_path: Any, overrides: dict[str, Any], message: str
) -> None:
    settings = Settings().with_overrides(
        database_url=f"sqlite:///{tmp_path}/x.db",
        **{**flows_settings("private_key_encrypted_pkcs8.pem"), **overrides},
    )
    with pytest.raises(ConfigError) as err:
        create_app(settings)
    assert str(err.value).startswith(message)


# --- metrics and the request log (see webhook/observe.py) -----------------------------


def test_each_request_is_counted_and_logged_with_a_short_code(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    from prometheus_client import REGISTRY

    def count_of(action: str, status: str) -> float:
        labels = {"action": action, "status": status}
        return REGISTRY.get_sample_value("flowhooks_flow_requests_total", labels) or 0.0

    client = make_app(**flows_settings(log_format="json")).test_client()
    before = count_of("INIT", "427"), count_of("ping", "200"), count_of("other", "432")
    capsys.readouterr()
    post_vector(client, vector("01_ping"))
    post_flow(client, vector("01_ping")["request"]["http_body"], "sha256=00")
    refused = make_app(**flows_settings(flows_require_known_token=True, log_format="json"))
    post_vector(refused.test_client(), vector("02_init"))
    after = count_of("INIT", "427"), count_of("ping", "200"), count_of("other", "432")
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    logged = capsys.readouterr().err
    lines = [json.loads(line) for line in logged.splitlines() if '"flow_exchange"' in line]
    assert [(r["action"], r["http_status"], r.get("error")) for r in lines] == [
        ("ping", 200, None),
        ("other", 432, "signature_mismatch"),
        ("INIT", 427, "token_unknown"),
    ]
    assert VECTOR_TOKEN not in "".join(json.dumps(r) for r in lines)
