"""WhatsApp Flows data-endpoint cryptography (pure; no Flask, no database).

Request:  aes_key = RSA-OAEP(SHA-256, MGF1-SHA-256, no label)^-1(encrypted_aes_key);
          payload = AES-GCM(aes_key, initial_vector)^-1(encrypted_flow_data = ct || tag).
Response: base64(AES-GCM(aes_key, initial_vector with every bit flipped)(JSON) || tag).
Signature: X-Hub-Signature-256 = "sha256=" + hex HMAC-SHA256(app secret, raw body).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from webhook.core.errors import first_line

SIGNATURE_HEADER = "X-Hub-Signature-256"
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_TAG_BYTES = 16
_BODY_FIELDS = ("encrypted_flow_data", "encrypted_aes_key", "initial_vector")


class KeyLoadError(ValueError):
    """A configured private key cannot be read, decrypted or used."""


class DecryptionError(Exception):
    """A request cannot be decrypted with any configured key (answer 421)."""


@dataclass(frozen=True, slots=True)
class DecryptedRequest:
    """The decrypted payload and what is needed to encrypt the answer."""

    payload: dict[str, Any]
    aes_key: bytes
    iv: bytes
    key_index: int  # which configured key worked (0 = the first)


# --- keys -----------------------------------------------------------------------------


def load_private_key(source: str | bytes, passphrase: str | None = None) -> rsa.RSAPrivateKey:
    """Load an RSA private key from PEM text or a file path (PKCS#1/PKCS#8, encrypted or not).

    A passphrase given for an unencrypted key is ignored, so one passphrase can serve a
    mix of encrypted and plain keys.
    """
    pem = _pem_bytes(source)
    password = passphrase.encode("utf-8") if passphrase else None
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except TypeError as err:
        if password is None:
            raise KeyLoadError("the key is encrypted and no passphrase is set") from None
        if "not encrypted" not in str(err):
            raise KeyLoadError(f"the key cannot be loaded: {err}") from None
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as err:
        if password is not None and b"ENCRYPTED" in pem:
            raise KeyLoadError("the passphrase does not decrypt the key") from None
        raise KeyLoadError(f"not a readable PEM private key ({first_line(err)})") from None
    except Exception as err:  # unsupported cipher, bad encoding: never a traceback
        raise KeyLoadError(f"the key cannot be loaded: {first_line(err)}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyLoadError(f"expected an RSA key, got {type(key).__name__}")
    return key


def load_private_keys(
    sources: Sequence[str], passphrases: Sequence[str] = ()
) -> tuple[rsa.RSAPrivateKey, ...]:
    """Load every configured key; passphrases are none, one for all, or one per key."""
    if len(passphrases) not in (0, 1, len(sources)):
        raise KeyLoadError(
            f"{len(sources)} keys but {len(passphrases)} passphrases: give one passphrase "
            "for all keys or one per key, in the same order"
        )
    keys = []
    for index, source in enumerate(sources):
        if len(passphrases) == 0:
            passphrase = None
        elif len(passphrases) == 1:
            passphrase = passphrases[0]
        else:
            passphrase = passphrases[index]
        try:
            keys.append(load_private_key(source, passphrase))
        except KeyLoadError as err:
            raise KeyLoadError(f"key {index + 1} of {len(sources)}: {err}") from None
    return tuple(keys)


def generate_key_pair(passphrase: str, bits: int = 2048) -> tuple[bytes, bytes]:
    """A new RSA key pair: (private PEM, PKCS#8 encrypted with passphrase; public PEM)."""
    if not passphrase:
        raise ValueError("a passphrase is required")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")),
    )
    return private_pem, public_key_pem(key)


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The public half as SubjectPublicKeyInfo PEM: the form uploaded to Meta."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pem_bytes(source: str | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    if "-----BEGIN" in source:
        return source.encode("utf-8")
    path = Path(source).expanduser()
    try:
        return path.read_bytes()
    except OSError as err:
        raise KeyLoadError(f"cannot read key file {str(path)!r}: {err.strerror}") from None


# --- signature ------------------------------------------------------------------------


def signature_for(body: bytes, secret: str) -> str:
    """The X-Hub-Signature-256 value Meta sends for these exact bytes."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signature_matches(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """True when one of ``secrets`` signed ``body``; a missing header never matches."""
    if not header:
        return False
    given = header.strip().lower().encode("ascii", "replace")
    matched = False
    for secret in secrets:
        # Check every secret (no early exit) so timing does not reveal which one matched.
        matched |= hmac.compare_digest(signature_for(body, secret).encode("ascii"), given)
    return matched


# --- requests and responses -----------------------------------------------------------


def decrypt_request(
    body: bytes | Mapping[str, Any], keys: Sequence[rsa.RSAPrivateKey]
) -> DecryptedRequest:
    """Decrypt a data-endpoint request with the first key that works; DecryptionError if none."""
    fields = _request_fields(body)
    encrypted_data = _b64("encrypted_flow_data", fields["encrypted_flow_data"])
    wrapped_key = _b64("encrypted_aes_key", fields["encrypted_aes_key"])
    iv = _b64("initial_vector", fields["initial_vector"])
    if len(encrypted_data) <= _TAG_BYTES:
        raise DecryptionError("encrypted_flow_data is too short")
    for index, key in enumerate(keys):
        try:
            aes_key = key.decrypt(wrapped_key, _OAEP)
            plaintext = AESGCM(aes_key).decrypt(iv, encrypted_data, None)
        except (ValueError, InvalidTag):
            continue  # not this key (or tampered); try the next one
        try:
            payload = json.loads(plaintext.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # nested past the parser
            raise DecryptionError("decrypted payload is not UTF-8 JSON") from None
        if not isinstance(payload, dict):
            raise DecryptionError("decrypted payload is not a JSON object")
        return DecryptedRequest(payload, aes_key, iv, index)
    raise DecryptionError("no configured key decrypts the request")


def serialize(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, keys in insertion order (what the vectors encrypt)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def flip_iv(iv: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in iv)


def encrypt_response(payload: Mapping[str, Any], aes_key: bytes, iv: bytes) -> str:
    """The HTTP body answering a request: base64 of AES-GCM under the flipped IV."""
    sealed = AESGCM(aes_key).encrypt(flip_iv(iv), serialize(payload), None)
    return base64.b64encode(sealed).decode("ascii")


def _request_fields(body: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, bytes | bytearray):
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):  # nested past the parser
            raise DecryptionError("body is not JSON") from None
    else:
        parsed = body
    if not isinstance(parsed, Mapping):
        raise DecryptionError("body is not a JSON object")
    for name in _BODY_FIELDS:
        if not isinstance(parsed.get(name), str):
            raise DecryptionError(f"{name} is missing or not a string")
    return parsed


def _b64(name: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError(f"{name} is not valid base64") from None


# --- the client side (what WhatsApp does): for tests, benchmarks and tools ---------------


def encrypt_request(
    payload: Mapping[str, Any],
    public_key: rsa.RSAPublicKey,
    aes_key: bytes | None = None,
    iv: bytes | None = None,
) -> tuple[dict[str, str], bytes, bytes]:
    """Encrypt a payload as WhatsApp does; returns (body fields, aes_key, iv)."""
    aes_key = aes_key or os.urandom(16)
    iv = iv or os.urandom(16)
    sealed = AESGCM(aes_key).encrypt(iv, serialize(payload), None)
    body = {
        "encrypted_flow_data": base64.b64encode(sealed).decode("ascii"),
        "encrypted_aes_key": base64.b64encode(public_key.encrypt(aes_key, _OAEP)).decode("ascii"),
        "initial_vector": base64.b64encode(iv).decode("ascii"),
    }
    return body, aes_key, iv


def decrypt_response(body: str | bytes, aes_key: bytes, iv: bytes) -> Any:
    """Decrypt an endpoint's answer with the request's AES key and IV (flipped here)."""
    sealed = base64.b64decode(body, validate=True)
    return json.loads(AESGCM(aes_key).decrypt(flip_iv(iv), sealed, None).decode("utf-8"))
