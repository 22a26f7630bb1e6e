"""Sinch callback signatures: the shared vector and every failure mode."""

from __future__ import annotations

import base64
import json

import pytest

from tests.helpers import SPEC
from webhook.ingest.signing import SignatureError, compute_signature, sign_headers, verify

VECTOR = json.loads((SPEC / "sinch-signing-vector.json").read_text())
BODY = base64.b64decode(VECTOR["body_base64"])


def test_vector_body_is_the_utf8_text() -> None:
    assert VECTOR["body_utf8"].encode("utf-8") == BODY


def test_vector_signature() -> None:
    h = VECTOR["headers"]
    sig = compute_signature(
        VECTOR["secret"],
        BODY,
        h["x-sinch-webhook-signature-nonce"],
        h["x-sinch-webhook-signature-timestamp"],
    )
    assert sig == VECTOR["expected_signature"]


def test_vector_verifies_with_its_headers() -> None:
    verify(BODY, VECTOR["headers"], [VECTOR["secret"]])


def test_reserialised_body_does_not_verify() -> None:
    reserialised = json.dumps(json.loads(BODY)).encode()
    with pytest.raises(SignatureError) as err:
        verify(reserialised, VECTOR["headers"], [VECTOR["secret"]])
    assert err.value.reason == "mismatch"
    neg = VECTOR["negative_cases"]["body_reserialized_with_json_dumps_default_ascii_escaping_gives"]
    h = VECTOR["headers"]
    assert (
        compute_signature(
            VECTOR["secret"],
            json.dumps(json.loads(BODY), separators=(",", ":")).encode(),
            h["x-sinch-webhook-signature-nonce"],
            h["x-sinch-webhook-signature-timestamp"],
        )
        == neg
    )


def test_timestamp_plus_one_changes_signature() -> None:
    h = VECTOR["headers"]
    ts, expected = VECTOR["negative_cases"]["timestamp_plus_one_gives"].split(" -> ")
    assert compute_signature(VECTOR["secret"], BODY, h["x-sinch-webhook-signature-nonce"], ts) == (
        expected
    )
    with pytest.raises(SignatureError):
        verify(BODY, {**h, "x-sinch-webhook-signature-timestamp": ts}, [VECTOR["secret"]])


@pytest.mark.parametrize(
    "drop",
    [
        "x-sinch-webhook-signature",
        "x-sinch-webhook-signature-nonce",
        "x-sinch-webhook-signature-timestamp",
    ],
)
def test_missing_header(drop: str) -> None:
    headers = {k: v for k, v in VECTOR["headers"].items() if k != drop}
    with pytest.raises(SignatureError) as err:
        verify(BODY, headers, [VECTOR["secret"]])
    assert err.value.reason == "missing"


def test_wrong_secret() -> None:
    with pytest.raises(SignatureError) as err:
        verify(BODY, VECTOR["headers"], ["not-the-secret"])
    assert err.value.reason == "mismatch"


def test_rotation_any_secret_matches() -> None:
    verify(BODY, VECTOR["headers"], ["old-secret", VECTOR["secret"]])
    verify(BODY, VECTOR["headers"], [VECTOR["secret"], "new-secret"])


def test_garbage_signature_is_a_mismatch_not_a_crash() -> None:
    headers = {**VECTOR["headers"], "x-sinch-webhook-signature": "ü not base64 ü"}
    with pytest.raises(SignatureError) as err:
        verify(BODY, headers, [VECTOR["secret"]])
    assert err.value.reason == "mismatch"


def test_unsupported_algorithm() -> None:
    headers = {**VECTOR["headers"], "x-sinch-webhook-signature-algorithm": "HmacMD5"}
    with pytest.raises(SignatureError) as err:
        verify(BODY, headers, [VECTOR["secret"]])
    assert err.value.reason == "malformed"


def test_max_age() -> None:
    headers = sign_headers("s", b"{}", "n", timestamp=1_000_000)
    verify(b"{}", headers, ["s"], max_age_seconds=60, now=1_000_059)
    with pytest.raises(SignatureError) as err:
        verify(b"{}", headers, ["s"], max_age_seconds=60, now=1_000_061)
    assert err.value.reason == "stale"
    # Without a limit an old signature is accepted (retries may carry old timestamps).
    verify(b"{}", headers, ["s"], now=9_999_999_999)


def test_max_age_with_non_integer_timestamp() -> None:
    headers = {**sign_headers("s", b"{}", "n", timestamp="yesterday")}
    with pytest.raises(SignatureError) as err:
        verify(b"{}", headers, ["s"], max_age_seconds=60)
    assert err.value.reason == "malformed"
