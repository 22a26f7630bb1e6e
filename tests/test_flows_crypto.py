"""Flows crypto against the shared vectors: keys, decryption, responses, signatures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.flows_helpers import (
    APP_SECRET,
    KEY_FILES,
    NEGATIVE_CASES,
    PASSPHRASE,
    VECTOR_NAMES,
    VECTORS,
    aes_key_iv,
    key_path,
    vector,
)
from webhook.flows import crypto
from webhook.flows.crypto import DecryptionError, KeyLoadError


def test_vectors_and_key_files_are_all_there() -> None:
    assert len(VECTOR_NAMES) == 6
    assert len(KEY_FILES) == 4
    assert {c["name"] for c in NEGATIVE_CASES} >= {"bad_signature", "ciphertext_tampered"}


@pytest.mark.parametrize("key_file", KEY_FILES)
def test_every_key_file_loads_with_the_passphrase(key_file: str) -> None:
    key = crypto.load_private_key(key_path(key_file), PASSPHRASE)
    public = (VECTORS / "public_key.pem").read_bytes()
    assert crypto.public_key_pem(key) == public


@pytest.mark.parametrize("key_file", KEY_FILES)
def test_key_loads_from_pem_text_too(key_file: str) -> None:
    text = Path(key_path(key_file)).read_text()
    assert crypto.load_private_key(text, PASSPHRASE).key_size == 2048


@pytest.mark.parametrize(
    "key_file", ["private_key_encrypted_pkcs8.pem", "private_key_encrypted_pkcs1_des3.pem"]
)
def test_encrypted_key_needs_the_right_passphrase(key_file: str) -> None:
    with pytest.raises(KeyLoadError, match="no passphrase"):
        crypto.load_private_key(key_path(key_file))
    with pytest.raises(KeyLoadError, match="passphrase does not decrypt"):
        crypto.load_private_key(key_path(key_file), "wrong passphrase")


def test_unreadable_keys_say_why(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError, match="cannot read key file"):
        crypto.load_private_key(str(tmp_path / "missing.pem"))
    with pytest.raises(KeyLoadError, match="not a readable PEM private key"):
        crypto.load_private_key(str(VECTORS / "public_key.pem"))
    (tmp_path / "garbage.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(KeyLoadError, match="not a readable PEM private key"):
        crypto.load_private_key(str(tmp_path / "garbage.pem"))


def test_passphrases_are_none_one_for_all_or_one_per_key() -> None:
    plain, encrypted = key_path("private_key.pem"), key_path("private_key_encrypted_pkcs8.pem")
    assert len(crypto.load_private_keys([plain, encrypted], [PASSPHRASE])) == 2
    assert len(crypto.load_private_keys([encrypted, plain], [PASSPHRASE, "ignored"])) == 2
    assert len(crypto.load_private_keys([plain, plain], [])) == 2
    with pytest.raises(KeyLoadError, match="3 keys but 2 passphrases"):
        crypto.load_private_keys([plain, plain, plain], ["a", "b"])
    with pytest.raises(KeyLoadError, match=r"key 2 of 2: .*passphrase does not decrypt"):
        crypto.load_private_keys([plain, encrypted], ["x", "wrong"])


@pytest.mark.parametrize("key_file", KEY_FILES)
@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_request_decrypts(key_file: str, name: str) -> None:
    v = vector(name)
    key = crypto.load_private_key(key_path(key_file), PASSPHRASE)
    got = crypto.decrypt_request(v["request"]["http_body"].encode(), [key])
    assert got.payload == v["request"]["plaintext"]
    assert (got.aes_key, got.iv) == aes_key_iv(v)
    assert got.key_index == 0


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_response_is_reproduced_byte_for_byte(name: str) -> None:
    v = vector(name)
    aes_key, iv = aes_key_iv(v)
    assert crypto.flip_iv(iv).hex() == v["response"]["flipped_iv_hex"]
    assert crypto.serialize(v["response"]["plaintext"]).decode() == v["response"]["plaintext_utf8"]
    body = crypto.encrypt_response(v["response"]["plaintext"], aes_key, iv)
    assert body == v["response"]["encrypted_body_b64"]
    assert crypto.decrypt_response(body, aes_key, iv) == v["response"]["plaintext"]


def test_response_does_not_decrypt_with_the_unflipped_iv() -> None:
    v = vector("01_ping")
    aes_key, iv = aes_key_iv(v)
    with pytest.raises(InvalidTag):
        crypto.decrypt_response(v["response"]["encrypted_body_b64"], aes_key, crypto.flip_iv(iv))


@pytest.mark.parametrize("case", NEGATIVE_CASES, ids=lambda c: c["name"])
def test_negative_cases(case: dict[str, object]) -> None:
    body = str(case["http_body"]).encode()
    key = crypto.load_private_key(key_path(), None)
    signed = crypto.signature_matches(body, str(case["x_hub_signature_256"]), [APP_SECRET])
    if case["expected_http_status"] == 432:
        assert not signed
        crypto.decrypt_request(body, [key])  # the body itself is a valid ping
    else:
        assert signed
        with pytest.raises(DecryptionError):
            crypto.decrypt_request(body, [key])


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"encrypted_flow_data": "x"}',
        b'{"encrypted_flow_data": 1, "encrypted_aes_key": "", "initial_vector": ""}',
        b'{"encrypted_flow_data": "!!!", "encrypted_aes_key": "AA==", "initial_vector": "AA=="}',
        b'{"encrypted_flow_data": "AAAA", "encrypted_aes_key": "AA==", "initial_vector": "AA=="}',
    ],
)
def test_malformed_bodies_fail_to_decrypt(body: bytes) -> None:
    key = crypto.load_private_key(key_path(), None)
    with pytest.raises(DecryptionError):
        crypto.decrypt_request(body, [key])


def test_second_key_decrypts_after_the_first_fails() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = crypto.load_private_key(key_path(), None)
    v = vector("02_init")
    got = crypto.decrypt_request(v["request"]["http_body"].encode(), [other, key])
    assert got.key_index == 1
    assert got.payload["action"] == "INIT"


def test_plaintext_that_is_not_an_object_is_refused() -> None:
    key = crypto.load_private_key(key_path(), None)
    aes_key, iv = b"k" * 16, b"i" * 16
    fields, _, _ = crypto.encrypt_request({}, key.public_key(), aes_key, iv)
    sealed = AESGCM(aes_key).encrypt(iv, b"[1]", None)
    fields["encrypted_flow_data"] = base64.b64encode(sealed).decode()
    with pytest.raises(DecryptionError, match="not a JSON object"):
        crypto.decrypt_request(json.dumps(fields).encode(), [key])


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_signature(name: str) -> None:
    v = vector(name)
    body = v["request"]["http_body"].encode()
    header = v["request"]["x_hub_signature_256"]
    assert crypto.signature_for(body, APP_SECRET) == header
    assert crypto.signature_matches(body, header, ["old-secret", APP_SECRET])
    assert crypto.signature_matches(
        body, header.upper().replace("SHA256=", "sha256="), [APP_SECRET]
    )
    assert not crypto.signature_matches(body, header, ["another-secret"])
    assert not crypto.signature_matches(body + b" ", header, [APP_SECRET])
    assert not crypto.signature_matches(body, None, [APP_SECRET])
    assert not crypto.signature_matches(body, header.removeprefix("sha256="), [APP_SECRET])


def test_generated_key_pair_round_trips() -> None:
    private_pem, public_pem = crypto.generate_key_pair("a passphrase")
    assert b"ENCRYPTED PRIVATE KEY" in private_pem
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    key = crypto.load_private_key(private_pem, "a passphrase")
    assert crypto.public_key_pem(key) == public_pem
    body, aes_key, iv = crypto.encrypt_request({"action": "ping"}, key.public_key())
    got = crypto.decrypt_request(body, [key])
    assert got.payload == {"action": "ping"}
    answer = crypto.encrypt_response({"ok": "ü"}, got.aes_key, got.iv)
    assert crypto.decrypt_response(answer, aes_key, iv) == {"ok": "ü"}
