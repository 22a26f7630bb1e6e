"""`flask flows send` against a loopback stand-in for Sinch, recording into flow_sends."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from sqlalchemy import Engine

from tests.helpers import SECRET, fixture_json, rows
from tests.sinch_stub import (
    APP_ID,
    KEY_ID,
    KEY_SECRET,
    PROJECT,
    Reply,
    SinchStub,
    running_stub,
    sinch_error,
)
from webhook.core.settings import ConfigError, Settings
from webhook.flows.batch import Pacer

SEED_OPTIONS = [
    "--contact-id", "01KHXP7M58J3HH8VCFWTFRQFVX",
    "--flow-id", "1187345529063321",
    "--cta", "Open form",
    "--body", "Please fill in a few details before your appointment.",
    "--header", "Pre-visit form",
    "--footer", "Takes about 2 minutes",
    "--screen", "WELCOME",
    "--data", '{"clinic_name": "Clinica Exemplo"}',
    "--mode", "published",
    "--action", "navigate",
    "--token", "ftk_7QmZ3xRk2vN8pL4sW9aB",
    "--fallback-text", "Please update WhatsApp to open the pre-visit form.",
    "--metadata", "flow=intake_v3;session=ftk_7QmZ3xRk2vN8pL4sW9aB",
    "--correlation-id", "intake-session-8841",
]  # fmt: skip
BASIC = ["--flow-id", "1187", "--cta", "Open", "--body", "Hi", "--screen", "WELCOME"]


@pytest.fixture
def sinch() -> Iterator[SinchStub]:
    with running_stub() as stub:
        yield stub


@pytest.fixture
def send_app(make_app: Callable[..., Flask], sinch: SinchStub) -> Flask:
    return make_app(
        sinch_webhook_secrets=(SECRET,),
        sinch_project_id=PROJECT,
        sinch_app_id=APP_ID,
        sinch_key_id=KEY_ID,
        sinch_key_secret=KEY_SECRET,
        sinch_api_base_url=sinch.url,
        sinch_auth_url=sinch.token_url,
        sinch_max_attempts=2,
        sinch_backoff_ms=0,
    )


@pytest.fixture
def invoke(send_app: Flask) -> Callable[..., Result]:
    def run(*args: str) -> Result:
        return send_app.test_cli_runner().invoke(args=["flows", "send", *args])

    return run


def test_seed_options_send_the_seed_message(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine
) -> None:
    result = invoke(*SEED_OPTIONS)
    assert result.exit_code == 0, result.output
    [sent] = sinch.send_requests()
    body = sent.json()
    submitted = fixture_json("message_submit__flows")["message_submit_notification"]
    assert body["message"] == submitted["submitted_message"]
    assert json.dumps(body["message"]) == json.dumps(submitted["submitted_message"])
    assert body == {
        "app_id": APP_ID,
        "recipient": {"contact_id": "01KHXP7M58J3HH8VCFWTFRQFVX"},
        "message": submitted["submitted_message"],
        "message_metadata": submitted["metadata"],
        "correlation_id": "intake-session-8841",
        "channel_priority_order": ["WHATSAPP"],
    }
    message_id = "01STUBMSG00000000000000001"
    assert result.stdout.strip() == (
        f"accepted: message_id={message_id} flow_token=ftk_7QmZ3xRk2vN8pL4sW9aB"
    )
    [row] = rows(engine, "flow_sends")
    assert row["message_id"] == message_id
    assert row["send_status"] == "accepted"
    assert (row["flow_id"], row["flow_token"], row["flow_mode"], row["flow_cta"]) == (
        "1187345529063321", "ftk_7QmZ3xRk2vN8pL4sW9aB", "published", "Open form",
    )  # fmt: skip
    assert (row["flow_action"], row["screen"], row["channel"]) == (
        "navigate",
        "WELCOME",
        "WHATSAPP",
    )
    assert row["contact_id"] == "01KHXP7M58J3HH8VCFWTFRQFVX" and row["identity"] is None
    assert row["correlation_id"] == "intake-session-8841"
    assert row["request_body"] == body
    assert row["sent_at"] is not None and row["error"] is None


def test_dry_run_prints_the_exact_bytes_that_are_sent(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine
) -> None:
    dry = invoke(*SEED_OPTIONS, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert sinch.seen == [] and rows(engine, "flow_sends") == []
    assert invoke(*SEED_OPTIONS).exit_code == 0
    [sent] = sinch.send_requests()
    assert dry.stdout.rstrip("\n").encode() == sent.body


def test_dry_run_needs_no_credentials(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    result = app.test_cli_runner().invoke(
        args=["flows", "send", "--to", "+5511987654321", *BASIC, "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["app_id"] == ""
    assert "SINCH_APP_ID is not set" in result.stderr


@pytest.mark.parametrize(
    ("options", "expected_flow", "top"),
    [
        (["--header-type", "image", "--header-url", "https://cdn.example.com/a.jpg"],
         {"header": {"type": "image", "image": {"link": "https://cdn.example.com/a.jpg"}}}, {}),
        (["--header-type", "document", "--header-url", "https://cdn.example.com/d.pdf",
          "--footer", "Bye"],
         {"header": {"type": "document", "document": {"link": "https://cdn.example.com/d.pdf"}},
          "footer": {"text": "Bye"}}, {}),
        (["--mode", "draft", "--ttl", "600", "--correlation-id", "c-1"],
         {"flow_mode": "draft"}, {"ttl": "600s", "correlation_id": "c-1"}),
        (["--data", '{"n": 1, "tags": ["a"]}', "--metadata", "m=1"],
         {"flow_action_payload": {"screen": "WELCOME", "data": {"n": 1, "tags": ["a"]}}},
         {"message_metadata": "m=1"}),
    ],
)  # fmt: skip
def test_option_combinations(
    invoke: Callable[..., Result],
    sinch: SinchStub,
    options: list[str],
    expected_flow: dict[str, Any],
    top: dict[str, Any],
) -> None:
    result = invoke("--to", "+55 11 98765-4321", *BASIC, *options)
    assert result.exit_code == 0, result.output
    [sent] = sinch.send_requests()
    body = sent.json()
    flow = body["message"]["channel_specific_message"]["WHATSAPP"]["message"]
    for key, value in expected_flow.items():
        assert flow[key] == value
    for key, value in top.items():
        assert body[key] == value
    assert body["recipient"]["identified_by"]["channel_identities"] == [
        {"channel": "WHATSAPP", "identity": "5511987654321"}
    ]
    assert flow["flow_token"].startswith("ftk_")
    assert body["message"]["text_message"] == {"text": "Hi"}


def test_data_exchange_without_screen(invoke: Callable[..., Result], sinch: SinchStub) -> None:
    result = invoke("--to", "5511987654321", "--flow-id", "9", "--cta", "Go", "--body", "B",
                    "--action", "data_exchange", "--fallback-text", "")  # fmt: skip
    assert result.exit_code == 0, result.output
    message = sinch.send_requests()[0].json()["message"]
    assert list(message) == ["channel_specific_message"]
    flow = message["channel_specific_message"]["WHATSAPP"]["message"]
    assert flow["flow_action"] == "data_exchange" and "flow_action_payload" not in flow


def test_every_problem_is_listed_and_nothing_is_sent(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine
) -> None:
    result = invoke("--to", "12", "--contact-id", "C", "--cta", "Book now 📅 please!!!!",
                    "--header-type", "image", "--data", "[1]", "--mode", "live")  # fmt: skip
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "--to/--contact-id: recipient: give exactly one of a WhatsApp number or a contact id "
        "(both given)",
        "--header-url: header type image needs a link",
        "--body: body text is required",
        "--flow-id: flow_id is required",
        "--mode: flow_mode must be draft or published; got 'live'",
        "--cta: flow_cta is 21 characters; at most 20 allowed",
        "--cta: flow_cta must not contain emoji; found '📅' (U+1F4C5)",
        "--screen: flow_action navigate needs the first screen's id",
        "--data: data must be a JSON object; got list",
        "Error: 9 problems with the message; nothing sent",
    ]
    assert sinch.seen == [] and rows(engine, "flow_sends") == []


def test_invalid_data_json(invoke: Callable[..., Result]) -> None:
    result = invoke("--to", "5511987654321", *BASIC, "--data", "{oops")
    assert result.exit_code == 1
    assert result.stderr.startswith("--data: data is not valid JSON (")


def test_missing_credentials_is_one_line(make_app: Callable[..., Flask], engine: Engine) -> None:
    app = make_app(sinch_project_id="p")
    result = app.test_cli_runner().invoke(args=["flows", "send", "--to", "5511987654321", *BASIC])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: missing settings for sending: SINCH_APP_ID, SINCH_KEY_ID, SINCH_KEY_SECRET\n"
    )
    assert rows(engine, "flow_sends") == []


def test_bad_region_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"SINCH_PROJECT_ID": "p", "SINCH_REGION": "ap"})
    assert str(err.value) == "SINCH_REGION: must be one of us, eu, br; got 'ap'"


def test_unusable_database_stops_before_sending(
    make_app: Callable[..., Flask], sinch: SinchStub, new_database_url: Callable[[str], str]
) -> None:
    url = new_database_url("sqlite")
    app = make_app(database_url=url, sinch_project_id=PROJECT,
                   sinch_app_id=APP_ID, sinch_key_id=KEY_ID, sinch_key_secret=KEY_SECRET,
                   sinch_api_base_url=sinch.url, sinch_auth_url=sinch.token_url)  # fmt: skip
    result = app.test_cli_runner().invoke(args=["flows", "send", "--to", "5511987654321", *BASIC])
    assert result.exit_code == 1
    assert result.stderr == f"Error: database {url} has no schema: run `flowhooks db upgrade`\n"
    assert sinch.send_requests() == []


def test_rejected_send_is_recorded_with_sinch_error(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine
) -> None:
    sinch.send_script.append(
        Reply(400, sinch_error(400, "INVALID_ARGUMENT", "flow_id 1187 is not provisioned"))
    )
    result = invoke("--to", "5511987654321", *BASIC, "--token", "tok-A")
    assert result.exit_code == 1
    expected_error = (
        "Sinch rejected the message: 400 INVALID_ARGUMENT: flow_id 1187 is not provisioned"
    )
    assert expected_error in result.stderr
    [row] = rows(engine, "flow_sends")
    assert row["send_status"] == "rejected"
    assert row["message_id"] is None
    assert row["error"] == expected_error
    assert row["flow_token"] == "tok-A"
    assert row["identity"] == "5511987654321"
    # A rejected token never reached anyone: it may be used again.
    assert invoke("--to", "5511987654321", *BASIC, "--token", "tok-A").exit_code == 0
    assert [r["send_status"] for r in rows(engine, "flow_sends")] == ["rejected", "accepted"]


def test_failed_send_is_recorded(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine
) -> None:
    down = Reply(503, sinch_error(503, "UNAVAILABLE", "try later"))
    sinch.send_script.extend([down, down])
    result = invoke("--to", "5511987654321", *BASIC)
    assert result.exit_code == 1
    assert "not sent (failed): gave up after 2 attempts: 503 UNAVAILABLE: try later" in (
        result.stderr
    )
    [row] = rows(engine, "flow_sends")
    assert (row["send_status"], row["message_id"]) == ("failed", None)


def test_a_used_token_is_refused(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine
) -> None:
    assert invoke("--to", "5511987654321", *BASIC, "--token", "tok-once").exit_code == 0
    again = invoke("--contact-id", "C2", *BASIC, "--token", "tok-once")
    assert again.exit_code == 1
    assert again.stderr == (
        "Error: flow token 'tok-once' was already used by an earlier send; flow tokens must be "
        "unique (leave the token out to generate one)\n"
    )
    assert len(sinch.send_requests()) == 1
    assert len(rows(engine, "flow_sends")) == 1


def test_generated_tokens_differ_per_send(invoke: Callable[..., Result], engine: Engine) -> None:
    for _ in range(3):
        assert invoke("--to", "5511987654321", *BASIC).exit_code == 0
    tokens = [r["flow_token"] for r in rows(engine, "flow_sends")]
    assert len(set(tokens)) == 3


CSV = """to,contact_id,token,data,data.name,correlation_id
+55 11 90000-0001,,,,Ana,corr-1
,01CONTACT000000000000002,tok-row-3,"{""plan"": ""gold"", ""n"": 2}",,
5511900000400,,,,Rui,
12,,,,,
5511900000005,,,{broken,,
5511900000006,,tok-row-3,,,
,,,,Zed,
5511900000008,01CONTACT8,,,,
5511900000009,,,,,
,,,,,
"""


def test_batch_csv_with_good_and_bad_rows(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine, tmp_path: Path
) -> None:
    sinch.replies_for_identity["5511900000400"] = Reply(
        400, sinch_error(400, "INVALID_ARGUMENT", "Recipient is not on WhatsApp")
    )
    path = tmp_path / "recipients.csv"
    path.write_text(CSV, encoding="utf-8")
    result = invoke("--csv", str(path), *BASIC, "--data", '{"clinic": "X", "n": 1}',
                    "--rate", "1000")  # fmt: skip
    assert result.exit_code == 1, result.output
    # The last line has only empty cells: a blank line, not a row.
    assert result.stdout.strip().splitlines()[-1] == (
        "sent 3, rejected 1, failed 0, unknown 0, invalid 5 (9 rows)"
    )
    err = result.stderr
    assert "line 5: WhatsApp number '12' is not an international phone number" in err
    assert "line 6: data column is not valid JSON" in err
    assert "line 7: flow token 'tok-row-3' is also on line 3" in err
    assert (
        "line 8: recipient: give exactly one of a WhatsApp number or a contact id (neither" in err
    )
    assert "line 9: recipient: give exactly one" in err and "(both given)" in err
    assert "line 4: rejected: Sinch rejected the message: 400 INVALID_ARGUMENT: Recipient is" in err

    bodies = {
        s.json()["recipient"].get("contact_id")
        or s.json()["recipient"]["identified_by"]["channel_identities"][0]["identity"]: s.json()
        for s in sinch.send_requests()
    }
    assert set(bodies) == {"5511900000001", "01CONTACT000000000000002", "5511900000400",
                           "5511900000009"}  # fmt: skip

    def flow(key: str) -> dict[str, Any]:
        value = bodies[key]["message"]["channel_specific_message"]["WHATSAPP"]["message"]
        assert isinstance(value, dict)
        return value

    assert flow("5511900000001")["flow_action_payload"]["data"] == {
        "clinic": "X", "n": 1, "name": "Ana",
    }  # fmt: skip
    assert bodies["5511900000001"]["correlation_id"] == "corr-1"
    assert flow("01CONTACT000000000000002")["flow_action_payload"]["data"] == {
        "clinic": "X", "n": 2, "plan": "gold",
    }  # fmt: skip
    assert flow("01CONTACT000000000000002")["flow_token"] == "tok-row-3"
    assert flow("5511900000009")["flow_action_payload"]["data"] == {"clinic": "X", "n": 1}

    sends = rows(engine, "flow_sends")
    assert sorted(r["send_status"] for r in sends) == ["accepted"] * 3 + ["rejected"]
    assert len({r["flow_token"] for r in sends}) == 4
    assert {r["message_id"] for r in sends if r["send_status"] == "accepted"} == {
        f"01STUBMSG{n:017d}" for n in (1, 2, 3)
    }


def test_batch_dry_run_prints_one_body_per_valid_row(
    invoke: Callable[..., Result], sinch: SinchStub, tmp_path: Path
) -> None:
    path = tmp_path / "r.csv"
    path.write_text("contact_id,data.city\nC1,Recife\nC2,\n", encoding="utf-8")
    result = invoke("--csv", str(path), *BASIC, "--dry-run")
    assert result.exit_code == 0, result.output
    bodies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [b["recipient"] for b in bodies] == [{"contact_id": "C1"}, {"contact_id": "C2"}]
    payloads = [
        b["message"]["channel_specific_message"]["WHATSAPP"]["message"]["flow_action_payload"]
        for b in bodies
    ]
    assert payloads == [{"screen": "WELCOME", "data": {"city": "Recife"}}, {"screen": "WELCOME"}]
    assert "dry run: 2 valid, 0 invalid rows; nothing sent" in result.stderr
    assert sinch.seen == []


def test_batch_refuses_a_token_already_used(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine, tmp_path: Path
) -> None:
    assert invoke("--contact-id", "C0", *BASIC, "--token", "used-1").exit_code == 0
    path = tmp_path / "r.csv"
    path.write_text("contact_id,token\nC1,used-1\nC2,fresh-2\n", encoding="utf-8")
    result = invoke("--csv", str(path), *BASIC, "--workers", "1")
    assert result.exit_code == 1
    assert "line 2: flow token 'used-1' was already used by an earlier send" in result.stderr
    assert result.stdout.strip() == "sent 1, rejected 0, failed 0, unknown 0, invalid 1 (2 rows)"
    assert len(sinch.send_requests()) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the CSV file is empty"),
        ("phone,name\n1,2\n", "unknown CSV column 'phone'"),
        ("data.x\n1\n", "needs a 'to' or a 'contact_id' column"),
        ("to,TO\n1,2\n", "CSV column 'TO' appears twice"),
    ],
)
def test_batch_file_problems(
    invoke: Callable[..., Result], tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    result = invoke("--csv", str(path), *BASIC)
    assert result.exit_code == 1
    assert message in result.stderr


def test_batch_shared_options_are_checked_once(
    invoke: Callable[..., Result], sinch: SinchStub, tmp_path: Path
) -> None:
    path = tmp_path / "r.csv"
    path.write_text("to\n5511900000001\n5511900000002\n", encoding="utf-8")
    result = invoke("--csv", str(path), "--flow-id", "1", "--cta", "x" * 25, "--body", "b")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "--cta: flow_cta is 25 characters; at most 20 allowed",
        "--screen: flow_action navigate needs the first screen's id",
        "Error: 2 problems with the options shared by every row; nothing sent",
    ]
    assert sinch.seen == []


def test_batch_refuses_per_recipient_options(invoke: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("to\n5511900000001\n", encoding="utf-8")
    result = invoke("--csv", str(path), "--to", "5511900000001", *BASIC)
    assert result.exit_code == 1
    assert "are per recipient: put them in the CSV file" in result.stderr


def test_batch_stops_when_the_key_is_refused(
    make_app: Callable[..., Flask], sinch: SinchStub, engine: Engine, tmp_path: Path
) -> None:
    app = make_app(sinch_project_id=PROJECT, sinch_app_id=APP_ID, sinch_key_id=KEY_ID,
                   sinch_key_secret="wrong", sinch_api_base_url=sinch.url,
                   sinch_auth_url=sinch.token_url)  # fmt: skip
    path = tmp_path / "r.csv"
    path.write_text("to\n5511900000001\n5511900000002\n5511900000003\n", encoding="utf-8")
    result = app.test_cli_runner().invoke(args=["flows", "send", "--csv", str(path), *BASIC])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: Sinch did not issue an access token: 401 invalid_client: Bad credentials\n"
    )
    assert sinch.send_requests() == []
    assert rows(engine, "flow_sends") == []


def test_batch_stops_when_sinch_refuses_even_a_fresh_token(
    invoke: Callable[..., Result], sinch: SinchStub, engine: Engine, tmp_path: Path
) -> None:
    unauth = Reply(401, sinch_error(401, "UNAUTHENTICATED", "Key revoked"))
    sinch.send_script.extend([unauth, unauth])
    path = tmp_path / "r.csv"
    path.write_text("to\n5511900000001\n5511900000002\n5511900000003\n", encoding="utf-8")
    result = invoke("--csv", str(path), *BASIC, "--workers", "1")
    assert result.exit_code == 1
    assert result.stderr.endswith(
        "Error: stopped: line 2: Sinch refused the access token: 401 UNAUTHENTICATED: Key revoked\n"
    )
    # Row 1 was tried twice (a fresh token in between); row 2 was queued behind it and
    # may have started before the stop; row 3 was never handed out.
    identities = [
        s.json()["recipient"]["identified_by"]["channel_identities"][0]["identity"]
        for s in sinch.send_requests()
    ]
    assert identities[:2] == ["5511900000001", "5511900000001"]
    assert "5511900000003" not in identities
    sent = len(identities) - 2
    assert result.stdout.strip() == (
        f"sent {sent}, rejected 0, failed 0, unknown 0, invalid 0 (3 rows)"
    )
    assert len(rows(engine, "flow_sends")) == sent


def test_pacer_spaces_calls() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    now[0] += 10  # idle time is not saved up into a burst
    pacer.wait()
    pacer.wait()
    assert slept[-1] == 0.25 and len(slept) == 5
