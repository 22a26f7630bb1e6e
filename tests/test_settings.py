"""Settings (webhook.core.settings): grouped per feature, every invalid value reported at
once in one ConfigError, nothing coerced, secrets never shown."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from tests.helpers import ROOT
from webhook import create_app
from webhook.core.settings import ConfigError, Secret, Settings, default_database_url

# Invalid values of every variable the service reads: wrong type, 0 or negative where
# that makes no sense, unknown choices, blank or empty entries in secrets.
INVALID: dict[str, list[str]] = {
    "DATABASE_URL": ["not a url", "postgres://u:pw@host/db name"],
    "DATABASE_TIMEOUT_SECONDS": ["0", "-1", "ten", "nan", "inf"],
    "DATABASE_POOL_SIZE": ["0", "-3", "many", "1.5"],
    "SQLITE_SYNCHRONOUS": ["OFF", "EXTRA"],
    "MAX_CONTENT_LENGTH": ["0", "-1", "1MB", "1.5"],
    "RETRY_AFTER_SECONDS": ["0", "-1", "soon"],
    "BODY_READ_TIMEOUT_SECONDS": ["0", "-1", "ten", "inf"],
    "BODY_MIN_BYTES_PER_SECOND": ["0", "-5", "fast", "1.5"],
    "SINCH_WEBHOOK_SECRETS": ["", " ", " , ", "a,,b", "a,"],
    "SIGNATURE_MAX_AGE_SECONDS": ["0", "-5", "an hour", "1.5"],
    "PROJECTOR": ["maybe", "2"],
    "SINCH_PROJECT_ID": ["my project"],
    "SINCH_APP_ID": ["an app"],
    "SINCH_KEY_ID": ["key\tid"],
    "SINCH_KEY_SECRET": ["", "   "],
    "SINCH_REGION": ["ap", "us-east"],
    "SINCH_API_BASE_URL": ["proxy.local", "ftp://proxy.local"],
    "SINCH_AUTH_URL": ["auth.sinch.com/oauth2/token"],
    "SINCH_TIMEOUT_SECONDS": ["0", "-1", "2.5"],
    "SINCH_MAX_ATTEMPTS": ["0", "-1", "four"],
    "SINCH_BACKOFF_MS": ["-1", "fast"],
    "FLOWS_PRIVATE_KEY": ["", "a.pem,,b.pem", "a.pem,"],
    "FLOWS_PRIVATE_KEY_PASSPHRASE": ["", " , ", "one,,two"],
    "FLOWS_HANDLER": ["nocolon", "module:", "a module:handler"],
    "META_APP_SECRET": ["", " , ", "a,,b"],
    "FLOWS_REQUIRE_KNOWN_TOKEN": ["sometimes"],
    "FLOWS_STORE_DATA": ["2"],
    "FLOWS_HANDLER_BUDGET_MS": ["0", "-1", "1s"],
    "LOG_LEVEL": ["LOUD", "TRACE"],
    "LOG_FORMAT": ["xml"],
    "METRICS_TOKEN": ["", "  ", " token "],
    "ERASURE_KEY": ["", "   "],
}

# One known value per secret, to look for in every repr, str and message.
SECRETS = {
    "SINCH_WEBHOOK_SECRETS": "webhook-secret-1f3a, webhook-secret-9c2e",
    "SINCH_KEY_SECRET": "sinch-key-secret-77d1",
    "ERASURE_KEY": "erasure-key-4b0c",
    "META_APP_SECRET": "meta-app-secret-a1,meta-app-secret-b2",
    "METRICS_TOKEN": "metrics-token-e5f6",
    "FLOWS_PRIVATE_KEY": "/keys/flows-key-path-0a9b.pem",
    "FLOWS_PRIVATE_KEY_PASSPHRASE": "flows-passphrase-3c8d",
    "DATABASE_URL": "postgresql://flows:db-password-6e2f@db.internal:5432/flowhooks",
}
KNOWN = [
    "webhook-secret-1f3a", "webhook-secret-9c2e", "sinch-key-secret-77d1", "erasure-key-4b0c",
    "meta-app-secret-a1", "meta-app-secret-b2", "metrics-token-e5f6", "flows-key-path-0a9b",
    "flows-passphrase-3c8d", "db-password-6e2f",
]  # fmt: skip


def variables() -> list[str]:
    """Every variable Settings reads, from the fields' declarations."""
    return [
        f.metadata["var"].name
        for group in fields(Settings)
        for f in fields(getattr(Settings(), group.name))
    ]


def groups(settings: Settings) -> list[Any]:
    return [getattr(settings, group.name) for group in fields(Settings)]


def assert_hidden(*texts: str) -> None:
    for text in texts:
        shown = [secret for secret in KNOWN if secret in text]
        assert shown == [], f"{shown} appear in {text!r}"


# --- defaults and values ----------------------------------------------------------------


def test_every_variable_has_invalid_values_here() -> None:
    assert sorted(INVALID) == sorted(variables())
    assert len(variables()) == 32


def test_defaults_are_unchanged() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    db, http, cb = s.database, s.http, s.callbacks
    assert (db.url, db.timeout_seconds, db.pool_size, db.sqlite_synchronous) == (
        default_database_url(), 10.0, 16, "FULL",
    )  # fmt: skip
    assert (http.max_content_length, http.retry_after_seconds) == (1024 * 1024, 5)
    assert (cb.secrets, cb.signature_max_age_seconds) == ((), None)
    assert s.projection.in_process is True
    sinch = s.sinch
    assert (sinch.project_id, sinch.app_id, sinch.key_id, sinch.key_secret) == ("", "", "", None)
    assert (sinch.region, sinch.api_base_url, sinch.auth_url) == (
        "us", "", "https://auth.sinch.com/oauth2/token",
    )  # fmt: skip
    assert (sinch.timeout_seconds, sinch.max_attempts, sinch.backoff_ms) == (10, 4, 500)
    flows = s.flows
    assert (flows.private_keys, flows.passphrases, flows.handler, flows.app_secrets) == (
        (), (), "", (),
    )  # fmt: skip
    assert (flows.require_known_token, flows.store_data, flows.handler_budget_ms) == (
        False, False, 1000,
    )  # fmt: skip
    assert (s.ops.log_level, s.ops.log_format, s.ops.metrics_token) == ("INFO", "auto", None)
    assert s.privacy.erasure_key is None


def test_blank_values_are_unset_except_secrets() -> None:
    blank = {name: "  " for name in variables() if name not in SECRETS}
    assert Settings.from_env(blank) == Settings()


def test_values_are_read_into_their_groups() -> None:
    s = Settings.from_env({
        "DATABASE_URL": "postgres://u@h/db", "DATABASE_TIMEOUT_SECONDS": "2.5",
        "DATABASE_POOL_SIZE": "4", "SQLITE_SYNCHRONOUS": "normal", "MAX_CONTENT_LENGTH": "100",
        "RETRY_AFTER_SECONDS": "1", "SINCH_WEBHOOK_SECRETS": "old, new",
        "SIGNATURE_MAX_AGE_SECONDS": "300", "PROJECTOR": "off", "SINCH_REGION": "EU",
        "SINCH_KEY_SECRET": "k", "SINCH_API_BASE_URL": "http://proxy.local/sinch/",
        "SINCH_MAX_ATTEMPTS": "1", "SINCH_BACKOFF_MS": "0", "META_APP_SECRET": "a,b",
        "FLOWS_PRIVATE_KEY": "new.pem, old.pem", "FLOWS_PRIVATE_KEY_PASSPHRASE": "p1,p2",
        "FLOWS_HANDLER": " webhook.flows.example_booking:handler ",
        "FLOWS_REQUIRE_KNOWN_TOKEN": "yes", "FLOWS_HANDLER_BUDGET_MS": "1",
        "LOG_LEVEL": "warning", "LOG_FORMAT": "JSON", "METRICS_TOKEN": "t", "ERASURE_KEY": " k ",
    })  # fmt: skip
    assert s.database.url == "postgresql+psycopg://u@h/db"
    assert (s.database.timeout_seconds, s.database.pool_size) == (2.5, 4)
    assert s.database.sqlite_synchronous == "NORMAL"
    assert (s.http.max_content_length, s.http.retry_after_seconds) == (100, 1)
    assert [x.reveal() for x in s.callbacks.secrets] == ["old", "new"]
    assert s.callbacks.signature_max_age_seconds == 300
    assert s.projection.in_process is False
    assert (s.sinch.region, s.sinch.api_base_url) == ("eu", "http://proxy.local/sinch")
    assert (s.sinch.max_attempts, s.sinch.backoff_ms) == (1, 0)
    assert [x.reveal() for x in s.flows.app_secrets] == ["a", "b"]
    assert [x.reveal() for x in s.flows.private_keys] == ["new.pem", "old.pem"]
    assert [x.reveal() for x in s.flows.passphrases] == ["p1", "p2"]
    assert s.flows.handler == "webhook.flows.example_booking:handler"
    assert (s.flows.require_known_token, s.flows.handler_budget_ms) == (True, 1)
    assert (s.ops.log_level, s.ops.log_format) == ("WARNING", "json")
    assert s.ops.metrics_token == Secret("t")
    assert s.privacy.erasure_key == Secret(" k ")  # a key is used exactly as given


def test_pem_blocks_split_into_keys() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----"
    s = Settings.from_env({"FLOWS_PRIVATE_KEY": f"{pem}\\n{pem}"})
    assert [k.reveal() for k in s.flows.private_keys] == [
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    ] * 2
    with pytest.raises(ConfigError, match=r"^FLOWS_PRIVATE_KEY: "):
        Settings.from_env({"FLOWS_PRIVATE_KEY": f"{pem},old.pem"})  # a path mixed in


# --- invalid values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, values in INVALID.items() for value in values]
)
def test_an_invalid_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert len(err.value.problems) == 1
    assert str(err.value).startswith(f"{name}: must be ")


def test_every_invalid_value_is_reported_at_once() -> None:
    env = {name: values[0] for name, values in INVALID.items()}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    named = [problem.split(":", 1)[0] for problem in err.value.problems]
    assert sorted(named) == sorted(INVALID)
    message = str(err.value)
    assert message.startswith(f"{len(INVALID)} settings are invalid:\n")
    assert all(f"\n  {name}: must be " in message for name in INVALID)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_CONTENT_LENGTH", "0",
         "MAX_CONTENT_LENGTH: must be a whole number of bytes, 1 or more; got 0"),
        ("SINCH_MAX_ATTEMPTS", "0",
         "SINCH_MAX_ATTEMPTS: must be a whole number of attempts, 1 or more; got 0"),
        ("SIGNATURE_MAX_AGE_SECONDS", "0",
         "SIGNATURE_MAX_AGE_SECONDS: must be a whole number of seconds, 1 or more "
         "(unset: no age check); got 0"),
        ("DATABASE_POOL_SIZE", "0",
         "DATABASE_POOL_SIZE: must be a whole number of connections, 1 or more; got 0"),
        ("PROJECTOR", "maybe",
         "PROJECTOR: must be on or off (1/0, true/false, yes/no, on/off); got 'maybe'"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT: must be one of json, text, auto; got 'xml'"),
    ],
)  # fmt: skip
def test_zero_is_an_error_not_a_default(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["SINCH_WEBHOOK_SECRETS", "META_APP_SECRET"])
@pytest.mark.parametrize("value", ["", " , ", "a,,b", ",a"])
def test_a_secret_list_without_a_usable_secret_is_refused(name: str, value: str) -> None:
    """Set but empty, or with an empty entry: refused, never "verification off"."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert str(err.value).startswith(f"{name}: must be one or more comma-separated ")
    assert "none of them empty" in str(err.value)


def test_passphrases_must_match_the_keys() -> None:
    env = {"FLOWS_PRIVATE_KEY": "a.pem,b.pem", "FLOWS_PRIVATE_KEY_PASSPHRASE": "x,y,z"}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value) == (
        "FLOWS_PRIVATE_KEY_PASSPHRASE: must be one passphrase for every key, or one per key "
        "of FLOWS_PRIVATE_KEY, in order; got 3 for 2 keys"
    )
    for passphrases in ("x", "x,y"):
        Settings.from_env({**env, "FLOWS_PRIVATE_KEY_PASSPHRASE": passphrases})


def test_the_app_refuses_to_start_listing_every_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "0")
    monkeypatch.setenv("SINCH_MAX_ATTEMPTS", "0")
    monkeypatch.setenv("SINCH_WEBHOOK_SECRETS", " , ")
    with pytest.raises(ConfigError) as err:
        create_app()
    assert [p.split(":", 1)[0] for p in err.value.problems] == [
        "MAX_CONTENT_LENGTH", "SINCH_WEBHOOK_SECRETS", "SINCH_MAX_ATTEMPTS",
    ]  # fmt: skip


# --- secrets ----------------------------------------------------------------------------


def test_secret_is_masked_and_revealed_on_request() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('***')"
    assert str(secret) == f"{secret}" == "***"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2") and secret != Secret("other")


def test_repr_and_str_show_no_secret() -> None:
    settings = Settings.from_env(SECRETS)
    assert settings.flows.passphrases[0].reveal() == "flows-passphrase-3c8d"  # read, not lost
    assert "db.internal" in repr(settings.database)  # the URL is shown, its password is not
    assert_hidden(repr(settings), str(settings))
    for group in groups(settings):
        assert_hidden(repr(group), str(group))


def test_overrides_take_plain_strings_for_secrets_and_still_hide_them() -> None:
    settings = Settings().with_overrides(
        database_url="postgresql+psycopg://flows:db-password-6e2f@db.internal/flowhooks",
        sinch_webhook_secrets=("webhook-secret-1f3a",),
        sinch_key_secret="sinch-key-secret-77d1",
        erasure_key="erasure-key-4b0c",
        meta_app_secret=("meta-app-secret-a1",),
        metrics_token="metrics-token-e5f6",
        flows_private_key=("/keys/flows-key-path-0a9b.pem",),
        flows_private_key_passphrase=("flows-passphrase-3c8d",),
    )
    assert settings.callbacks.secrets == (Secret("webhook-secret-1f3a"),)
    assert settings.privacy.erasure_key == Secret("erasure-key-4b0c")
    assert_hidden(repr(settings), str(settings), *map(repr, groups(settings)))


def test_error_messages_show_no_secret() -> None:
    env = {
        "SINCH_WEBHOOK_SECRETS": "webhook-secret-1f3a,,webhook-secret-9c2e",
        "META_APP_SECRET": "meta-app-secret-a1,",
        "METRICS_TOKEN": " metrics-token-e5f6 ",
        "FLOWS_PRIVATE_KEY": "/keys/flows-key-path-0a9b.pem,",
        "FLOWS_PRIVATE_KEY_PASSPHRASE": "flows-passphrase-3c8d,,",
        "DATABASE_URL": "postgresql://flows:db-password-6e2f@db.internal/flow hooks",
    }
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert len(err.value.problems) == len(env)
    assert_hidden(str(err.value), repr(err.value))
    assert "postgresql+psycopg://flows:***@db.internal/flow hooks" in str(err.value)


def test_overrides_follow_the_same_rules() -> None:
    settings = Settings().with_overrides(max_content_length=100, projector=False)
    assert (settings.http.max_content_length, settings.projection.in_process) == (100, False)
    with pytest.raises(ConfigError, match=r"^MAX_CONTENT_LENGTH: .*; got 0$"):
        Settings().with_overrides(max_content_length=0)
    with pytest.raises(ConfigError, match=r"^SINCH_WEBHOOK_SECRETS: "):
        Settings().with_overrides(sinch_webhook_secrets=("a", ""))
    with pytest.raises(TypeError, match="unknown setting 'webhook_secrets'"):
        Settings().with_overrides(webhook_secrets=())


def test_every_variable_is_documented() -> None:
    docs = ROOT / "README.md", ROOT / "docs" / "flows-endpoint.md", ROOT / "docs" / "sending.md"
    text = "".join(path.read_text() for path in docs)
    assert [name for name in variables() if f"`{name}`" not in text] == []
