"""The Conversation API client against a real loopback stand-in for Sinch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tests.sinch_stub import (
    APP_ID,
    KEY_ID,
    KEY_SECRET,
    PROJECT,
    Reply,
    SinchStub,
    closed_port_url,
    dropping_server,
    running_stub,
    sinch_error,
)
from webhook.core.settings import Settings
from webhook.flows.client import (
    ClientConfig,
    ConversationClient,
    SinchAuthError,
    SinchConfigError,
    SinchOutcomeUnknown,
    SinchRejected,
    SinchUnavailable,
    retry_after_seconds,
)

BODY = json.dumps({"app_id": APP_ID, "recipient": {"contact_id": "C1"}, "message": {}}).encode()


@pytest.fixture
def sinch() -> Iterator[SinchStub]:
    with running_stub() as stub:
        yield stub


def config_for(stub_url: str, **overrides: object) -> ClientConfig:
    base = ClientConfig(
        project_id=PROJECT,
        app_id=APP_ID,
        key_id=KEY_ID,
        key_secret=KEY_SECRET,
        api_base_url=stub_url,
        auth_url=f"{stub_url}/oauth2/token",
        timeout_seconds=5,
        max_attempts=3,
        backoff_seconds=0.01,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sinch: SinchStub, sleeps: list[float]) -> Iterator[ConversationClient]:
    with ConversationClient(config_for(sinch.url), sleep=sleeps.append) as c:
        yield c


def test_send_posts_the_exact_body_with_a_bearer_token(
    sinch: SinchStub, client: ConversationClient
) -> None:
    result = client.send_message(BODY)
    assert result.message_id == "01STUBMSG00000000000000001"
    assert result.accepted_time == "2026-03-10T09:00:00.412Z"
    [token_req] = sinch.token_requests()
    assert token_req.form() == {"grant_type": ["client_credentials"]}
    assert token_req.headers["authorization"].startswith("Basic ")
    [send] = sinch.send_requests()
    assert send.path == f"/v1/projects/{PROJECT}/messages:send"
    assert send.body == BODY
    assert send.headers["authorization"] == "Bearer tok-1"
    assert send.headers["content-type"] == "application/json"


def test_token_is_cached_across_sends(sinch: SinchStub, client: ConversationClient) -> None:
    for _ in range(3):
        client.send_message(BODY)
    assert len(sinch.token_requests()) == 1
    assert {s.headers["authorization"] for s in sinch.send_requests()} == {"Bearer tok-1"}


def test_token_is_refreshed_shortly_before_it_expires(sinch: SinchStub) -> None:
    sinch.expires_in = 600  # refreshed 60 s early
    clock = Clock()
    with ConversationClient(config_for(sinch.url), clock=clock) as client:
        client.send_message(BODY)
        clock.now += 539
        client.send_message(BODY)
        assert len(sinch.token_requests()) == 1
        clock.now += 2
        client.send_message(BODY)
    assert len(sinch.token_requests()) == 2
    assert [s.headers["authorization"] for s in sinch.send_requests()] == [
        "Bearer tok-1", "Bearer tok-1", "Bearer tok-2",
    ]  # fmt: skip


def test_short_lived_token_keeps_most_of_its_life(sinch: SinchStub) -> None:
    sinch.expires_in = 30  # margin is 10 % of the life: refreshed after 27 s
    clock = Clock()
    with ConversationClient(config_for(sinch.url), clock=clock) as client:
        client.send_message(BODY)
        clock.now += 26.5
        client.send_message(BODY)
        assert len(sinch.token_requests()) == 1
        clock.now += 1
        client.send_message(BODY)
    assert len(sinch.token_requests()) == 2


def test_401_refreshes_the_token_once(sinch: SinchStub, client: ConversationClient) -> None:
    client.send_message(BODY)
    sinch.revoke_tokens()
    result = client.send_message(BODY)
    assert result.message_id.endswith("2")
    assert [s.headers["authorization"] for s in sinch.send_requests()] == [
        "Bearer tok-1", "Bearer tok-1", "Bearer tok-2",
    ]  # fmt: skip
    assert len(sinch.token_requests()) == 2


def test_401_after_a_fresh_token_is_an_auth_error(
    sinch: SinchStub, client: ConversationClient
) -> None:
    unauth = Reply(401, sinch_error(401, "UNAUTHENTICATED", "Project not allowed"))
    sinch.send_script.extend([unauth, unauth])
    with pytest.raises(SinchAuthError, match="401 UNAUTHENTICATED: Project not allowed"):
        client.send_message(BODY)
    assert len(sinch.send_requests()) == 2
    assert len(sinch.token_requests()) == 2


def test_429_honours_retry_after_seconds(
    sinch: SinchStub, client: ConversationClient, sleeps: list[float]
) -> None:
    busy = Reply(429, sinch_error(429, "RESOURCE_EXHAUSTED", "Too many requests"),
                 {"Retry-After": "2"})  # fmt: skip
    sinch.send_script.append(busy)
    result = client.send_message(BODY)
    assert result.message_id
    assert sleeps == [2.0]
    assert len(sinch.send_requests()) == 2


def test_429_honours_retry_after_http_date(sinch: SinchStub, sleeps: list[float]) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=300), usegmt=True)
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    sinch.send_script.extend(
        [Reply(429, None, {"Retry-After": when}), Reply(429, None, {"Retry-After": past})]
    )
    cfg = config_for(sinch.url, max_retry_after_seconds=600)
    with ConversationClient(cfg, sleep=sleeps.append) as patient:
        patient.send_message(BODY)
    assert len(sleeps) == 2
    assert 200 < sleeps[0] <= 300  # the date's own value, less the time the test took
    assert sleeps[1] == 0.0


def test_429_asking_too_long_a_wait_gives_up_at_once(
    sinch: SinchStub, client: ConversationClient, sleeps: list[float]
) -> None:
    sinch.send_script.append(Reply(429, sinch_error(429, "RESOURCE_EXHAUSTED", "Slow down"),
                                   {"Retry-After": "3600"}))  # fmt: skip
    with pytest.raises(SinchUnavailable, match="asked to wait 3600 s"):
        client.send_message(BODY)
    assert sleeps == []
    assert len(sinch.send_requests()) == 1


def test_5xx_is_retried_then_given_up(
    sinch: SinchStub, client: ConversationClient, sleeps: list[float]
) -> None:
    down = Reply(503, sinch_error(503, "UNAVAILABLE", "Backend unavailable"))
    sinch.send_script.extend([down, down, down, down])
    with pytest.raises(SinchUnavailable) as info:
        client.send_message(BODY)
    assert str(info.value) == "gave up after 3 attempts: 503 UNAVAILABLE: Backend unavailable"
    assert len(sinch.send_requests()) == 3
    assert len(sleeps) == 2
    assert all(0 < s < 1 for s in sleeps)


def test_5xx_then_success(sinch: SinchStub, client: ConversationClient) -> None:
    sinch.send_script.extend([Reply(500, "oops"), Reply(502, "<html>Bad gateway</html>")])
    assert client.send_message(BODY).message_id
    assert len(sinch.send_requests()) == 3


def test_400_surfaces_sinch_error_text(
    sinch: SinchStub, client: ConversationClient, sleeps: list[float]
) -> None:
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [
                {"field": "message.channel_specific_message", "description": "Invalid flow_id"}
            ],
        }
    ]
    sinch.send_script.append(
        Reply(400, sinch_error(400, "INVALID_ARGUMENT", "Invalid argument", details))
    )  # fmt: skip
    with pytest.raises(SinchRejected) as info:
        client.send_message(BODY)
    assert str(info.value) == (
        "Sinch rejected the message: 400 INVALID_ARGUMENT: Invalid argument: "
        "message.channel_specific_message: Invalid flow_id"
    )
    assert info.value.status == 400
    assert len(sinch.send_requests()) == 1 and sleeps == []


def test_404_without_json_body(sinch: SinchStub, client: ConversationClient) -> None:
    sinch.send_script.append(Reply(404, "Not Found"))
    with pytest.raises(SinchRejected, match="rejected the message: 404 Not Found"):
        client.send_message(BODY)


def test_token_endpoint_refusing_the_key(sinch: SinchStub) -> None:
    with (
        ConversationClient(config_for(sinch.url, key_secret="wrong")) as client,
        pytest.raises(SinchAuthError, match="401 invalid_client: Bad credentials"),
    ):
        client.send_message(BODY)
    assert sinch.send_requests() == []


def test_token_endpoint_5xx_is_retried(sinch: SinchStub, client: ConversationClient) -> None:
    sinch.token_script.append(Reply(503, "busy"))
    assert client.send_message(BODY).message_id
    assert len(sinch.token_requests()) == 2


def test_connection_refused_is_retried_then_given_up(sleeps: list[float]) -> None:
    url = closed_port_url()
    with (
        ConversationClient(config_for(url), sleep=sleeps.append) as client,
        pytest.raises(SinchUnavailable, match="gave up after 3 attempts: could not connect"),
    ):
        client.send_message(BODY)
    assert len(sleeps) == 2


def test_dropped_send_is_not_retried(sinch: SinchStub, sleeps: list[float]) -> None:
    with dropping_server() as (url, connections):
        cfg = config_for(url, auth_url=sinch.token_url)
        with (
            ConversationClient(cfg, sleep=sleeps.append) as client,
            pytest.raises(SinchOutcomeUnknown, match="may or may not have been sent"),
        ):
            client.send_message(BODY)
    assert len(connections) == 1
    assert sleeps == []


def test_dropped_token_request_is_retried(sinch: SinchStub, sleeps: list[float]) -> None:
    with dropping_server() as (url, connections):
        cfg = config_for(sinch.url, auth_url=f"{url}/oauth2/token")
        with (
            ConversationClient(cfg, sleep=sleeps.append) as client,
            pytest.raises(SinchUnavailable, match="gave up after 3 attempts: no answer"),
        ):
            client.send_message(BODY)
    assert len(connections) == 3


def test_missing_settings_are_named() -> None:
    cfg = ClientConfig(project_id="p", app_id="", key_id="", key_secret="s")
    with pytest.raises(SinchConfigError) as info:
        ConversationClient(cfg)
    assert str(info.value) == "missing settings for sending: SINCH_APP_ID, SINCH_KEY_ID"


@pytest.mark.parametrize("region", ["us", "eu", "br", "EU"])
def test_regional_hosts(region: str) -> None:
    cfg = ClientConfig(project_id="p 1", app_id="a", key_id="k", key_secret="s", region=region)
    assert cfg.send_url() == (
        f"https://{region.lower()}.conversation.api.sinch.com/v1/projects/p%201/messages:send"
    )


def test_unknown_region_is_a_config_error() -> None:
    cfg = ClientConfig(project_id="p", app_id="a", key_id="k", key_secret="s", region="ap")
    with pytest.raises(SinchConfigError, match="SINCH_REGION must be one of us, eu, br; got 'ap'"):
        ConversationClient(cfg)


def test_base_url_override_keeps_the_path() -> None:
    cfg = ClientConfig(project_id="p", app_id="a", key_id="k", key_secret="s", region="nowhere",
                       api_base_url="http://proxy.local:8080/sinch/")  # fmt: skip
    assert cfg.send_url() == "http://proxy.local:8080/sinch/v1/projects/p/messages:send"


def test_config_from_settings() -> None:
    settings = Settings.from_env(
        {"SINCH_PROJECT_ID": "p", "SINCH_APP_ID": "a", "SINCH_KEY_ID": "k",
         "SINCH_KEY_SECRET": "s", "SINCH_REGION": "EU", "SINCH_MAX_ATTEMPTS": "2",
         "SINCH_BACKOFF_MS": "0", "SINCH_TIMEOUT_SECONDS": "3"}
    )  # fmt: skip
    cfg = ClientConfig.from_settings(settings)
    assert (cfg.region, cfg.max_attempts, cfg.backoff_seconds, cfg.timeout_seconds) == (
        "eu", 2, 0.0, 3.0,
    )  # fmt: skip
    assert cfg.auth_url == "https://auth.sinch.com/oauth2/token"
    assert cfg.send_url() == "https://eu.conversation.api.sinch.com/v1/projects/p/messages:send"


def test_retry_after_parsing() -> None:
    now = datetime(2026, 3, 10, 9, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Tue, 10 Mar 2026 09:00:12 GMT", now) == 12.0
    assert retry_after_seconds("Tue, 10 Mar 2026 08:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("", now) is None
    assert retry_after_seconds(None, now) is None
