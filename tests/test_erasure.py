"""`flask contacts erase`: one person's data leaves every table (raw bodies included),
while counts, statuses, funnels and dedupe give the same answers."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, insert

from tests.helpers import FIXTURES, project, rows
from tests.queries import funnel, snapshot, status_counts, table_counts
from webhook.db.models import FlowExchange, FlowSend
from webhook.ingest.body import load_body
from webhook.ingest.parsers import parse_callback
from webhook.privacy.redact import Redactor, normalize_number, pseudonym, redact_answers
from webhook.replay.simulate import SimulationConfig, simulate

KEY = "test-erasure-key"
ANA_NUMBER = "5511987654321"
ANA_CONTACT = "01KHXP7M58J3HH8VCFWTFRQFVX"
ANA_TRACES = [ANA_NUMBER, ANA_CONTACT, "Ana Souza", "Ana S. Souza", "Oi, quero marcar",
              "1988-04-02", "confirm_appointment_yes", "example-cdn", "apt_2026_03_17",
              "My card is", "great", "HBgNNTUxMTk4NzY1NDMyMR"]  # fmt: skip
SIM = SimulationConfig(messages=24, contacts=4, seed=9, failure_rate=0.15, completion_rate=0.6)
UNSUPPORTED_FLOW = json.dumps({
    "app_id": "A", "unsupported_callback": {"channel": "WHATSAPP", "payload": json.dumps({
        "entry": [{"changes": [{"value": {
            "contacts": [{"profile": {"name": "Ana Souza"}, "wa_id": ANA_NUMBER}],
            "messages": [{
                "from": "+55 11 98765-4321",
                "id": "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBDMEJBQzY0RkU5QjE5NTY0RDAA",
                "context": {"id": "wamid.MT"}, "type": "interactive",
                "interactive": {"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent",
                    "response_json": '{"flow_token":"t-ana","id":"doc 123","a":"great"}'}}}]}}]}],
    })},
}).encode()  # fmt: skip


@pytest.fixture
def erasing_app(make_app: Any) -> Flask:
    app: Flask = make_app(erasure_key=KEY, sinch_webhook_secrets=(), log_format="json")
    return app


def fixture_bodies() -> list[bytes]:
    return [p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))] + [UNSUPPORTED_FLOW]


def load_everything(client: FlaskClient, engine: Engine) -> list[bytes]:
    """Every fixture (mostly Ana) plus simulated traffic of four other people."""
    _, stream = simulate(SIM)
    bodies = fixture_bodies() + stream
    for body in bodies:
        assert client.post("/sinch/callbacks", data=body).status_code == 200
    project(engine)
    with engine.begin() as conn:
        conn.execute(insert(FlowSend).values(
            message_id="01KKOWNSEND00000000000001", flow_id="1187345529063321",
            flow_token="ftk_own_send", send_status="accepted", identity=ANA_NUMBER,
            contact_id=ANA_CONTACT,
            request_body={"recipient": {"contact_id": ANA_CONTACT}, "message": {
                "channel_specific_message": {"WHATSAPP": {"message": {
                    "flow_token": "ftk_own_send", "flow_action_payload": {
                        "screen": "WELCOME", "data": {"name": "Ana Souza"}}}}}}},
        ))  # fmt: skip
        received = datetime.now(UTC)
        conn.execute(insert(FlowExchange), [
            {"flow_token": "ftk_7QmZ3xRk2vN8pL4sW9aB", "action": "data_exchange",
             "http_status": 200, "data": {"birth_date": "1988-04-02"}, "received_at": received},
            {"flow_token": "ftk_somebody_else", "action": "data_exchange",
             "http_status": 200, "data": {"birth": "2001-01-01"}, "received_at": received},
        ])  # fmt: skip
    return bodies


def dump(engine: Engine) -> str:
    """Every value of every row, raw bodies decoded, as one searchable text."""
    return json.dumps(
        snapshot(engine), default=lambda v: v.decode() if isinstance(v, bytes) else str(v)
    )


def erase(app: Flask, *args: str) -> Any:
    """`contacts erase ARGS`, confirmed (--yes) unless it is a dry run."""
    confirm = [] if "--dry-run" in args or "--yes" in args else ["--yes"]
    return app.test_cli_runner().invoke(args=["contacts", "erase", *args, *confirm])


def test_erasing_a_number_removes_every_trace_and_keeps_the_answers(
    erasing_app: Flask, engine: Engine
) -> None:
    client = erasing_app.test_client()
    bodies = load_everything(client, engine)
    before_counts, before_funnel, before_status = (
        table_counts(engine), funnel(engine), status_counts(engine))  # fmt: skip
    before = snapshot(engine)
    assert all(trace in dump(engine) for trace in ANA_TRACES)

    result = erase(erasing_app, "--identity", "+55 (11) 98765-4321")
    assert result.exit_code == 0, result.output
    assert "(1 identities, 1 contact ids linked)" in result.output

    text = dump(engine)
    for trace in ANA_TRACES:
        assert trace not in text, trace
    assert "5531988887777" in text  # another person's number: untouched
    # Counts, funnels and statuses are unchanged; the other people's rows untouched.
    assert table_counts(engine) == {**before_counts, "erasures": 1}
    assert (funnel(engine), status_counts(engine)) == (before_funnel, before_status)
    after = snapshot(engine)
    for table in ("flow_sends", "message_status", "delivery_reports", "flow_responses"):
        others_before = [
            r
            for r in before[table]
            if {r["contact_id"], r.get("identity")}.isdisjoint({ANA_CONTACT, ANA_NUMBER})
        ]
        others_after = [
            r
            for r in after[table]
            if not any(str(r.get(k)).startswith("erased_") for k in ("contact_id", "identity"))
        ]
        assert others_after == others_before, table
    # Ana's rows still group together under one pseudonym per key.
    ana = pseudonym(KEY, "contact", ANA_CONTACT)
    assert {r["identity"] for r in after["flow_sends"] if r["contact_id"] == ana} == {
        pseudonym(KEY, "identity", ANA_NUMBER)
    }
    [completion] = [
        r for r in after["flow_responses"] if r["message_id"] == "01KKBFV7F08WHK09EY397B72HT"
    ]
    assert completion["response"] == {"flow_token": "ftk_7QmZ3xRk2vN8pL4sW9aB", "full_name": None,
                                      "birth_date": None, "appointment_date": None,
                                      "symptoms": None, "consent": None}  # fmt: skip
    [theirs, others] = after["flow_exchanges"]
    assert theirs["data"] is None and others["data"] == {"birth": "2001-01-01"}
    # Dedupe: every original body is still recognised.
    for body in bodies:
        assert client.post("/sinch/callbacks", data=body).get_json()["outcome"] == "duplicate"
    # The record: when, which key (hashed), how many rows; never the data.
    [record] = rows(engine, "erasures")
    expected_hash = hmac.new(KEY.encode(), f"identity:{ANA_NUMBER}".encode(),
                             hashlib.sha256).hexdigest()  # fmt: skip
    assert (record["key_kind"], record["key_hash"]) == ("identity", expected_hash)
    affected = record["rows_affected"]
    assert affected["callback_events"] >= 20 and affected["flow_exchanges"] == 1
    projections = ("inbound_messages", "flow_responses", "delivery_reports", "message_status",
                   "flow_sends")  # fmt: skip
    assert all(affected[t] > 0 for t in projections)
    assert ANA_NUMBER not in json.dumps(record, default=str)


def test_rewritten_bodies_still_parse_to_the_same_records(
    erasing_app: Flask, engine: Engine
) -> None:
    load_everything(erasing_app.test_client(), engine)
    originals = {e["id"]: bytes(e["body"]) for e in rows(engine, "callback_events")}
    assert erase(erasing_app, "--contact-id", ANA_CONTACT).exit_code == 0
    changed = 0
    for event in rows(engine, "callback_events"):
        body = bytes(event["body"])
        if body == originals[event["id"]]:
            assert event["erased_at"] is None
            continue
        changed += 1
        assert event["erased_at"] is not None
        assert event["body_sha256"] == hashlib.sha256(originals[event["id"]]).hexdigest()
        old, new = (parse_callback(load_body(b)) for b in (originals[event["id"]], body))
        assert new.trigger == old.trigger
        assert [shape(r) for r in new.records] == [shape(r) for r in old.records]
    assert changed >= 20


def shape(record: Any) -> tuple[Any, ...]:
    """What funnels and dedupe use from a record (message ids may be pseudonymised wamids)."""
    mid = record.message_id
    return (type(record).__name__, "wamid" if mid.startswith(("wamid.", "erased_")) else mid,
            getattr(record, "status", None), getattr(record, "flow_token", None),
            getattr(record, "kind", None))  # fmt: skip


def test_erasing_twice_changes_nothing_more(erasing_app: Flask, engine: Engine) -> None:
    load_everything(erasing_app.test_client(), engine)
    assert erase(erasing_app, "--identity", ANA_NUMBER).exit_code == 0
    first = snapshot(engine)
    again = erase(erasing_app, "--identity", ANA_NUMBER)
    assert again.exit_code == 0, again.output
    assert "0 rows changed" in again.output
    second = snapshot(engine)
    assert {k: v for k, v in second.items() if k != "erasures"} == {
        k: v for k, v in first.items() if k != "erasures"}  # fmt: skip
    records = rows(engine, "erasures")
    assert len(records) == 2 and set(records[1]["rows_affected"].values()) == {0}
    # By contact id afterwards: also nothing left to find.
    assert "0 rows changed" in erase(erasing_app, "--contact-id", ANA_CONTACT).output


def test_erasing_by_contact_id_also_catches_rows_with_only_the_number(
    erasing_app: Flask, engine: Engine
) -> None:
    client = erasing_app.test_client()
    assert client.post("/sinch/callbacks", data=UNSUPPORTED_FLOW).status_code == 200
    no_contact = json.dumps({"message_delivery_report": {
        "message_id": "01KKNOCONTACT000000000001", "status": "DELIVERED",
        "channel_identity": {"channel": "WHATSAPP", "identity": ANA_NUMBER}}}).encode()  # fmt: skip
    with_contact = json.dumps({"message_delivery_report": {
        "message_id": "01KKWITHCONTACT0000000001", "status": "READ", "contact_id": ANA_CONTACT,
        "channel_identity": {"channel": "WHATSAPP", "identity": ANA_NUMBER}}}).encode()  # fmt: skip
    for body in (no_contact, with_contact):
        assert client.post("/sinch/callbacks", data=body).status_code == 200
    project(engine)
    result = erase(erasing_app, "--contact-id", ANA_CONTACT)
    assert result.exit_code == 0, result.output
    assert ANA_NUMBER not in dump(engine) and "Ana Souza" not in dump(engine)
    identities = {r["identity"] for r in rows(engine, "delivery_reports")}
    assert identities == {pseudonym(KEY, "identity", ANA_NUMBER)}


def test_dry_run_counts_and_changes_nothing(erasing_app: Flask, engine: Engine) -> None:
    load_everything(erasing_app.test_client(), engine)
    before = snapshot(engine)
    result = erase(erasing_app, "--identity", ANA_NUMBER, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run:" in result.output and "nothing changed" in result.output
    theirs = [
        r
        for r in before["flow_responses"]
        if r["identity"] == ANA_NUMBER or r["contact_id"] == ANA_CONTACT
    ]
    assert len(theirs) >= 4
    assert f"flow_responses: {len(theirs)} rows would change" in result.output
    assert snapshot(engine) == before


def test_refuses_without_a_key(make_app: Any, engine: Engine) -> None:
    result = erase(make_app(erasure_key=None), "--identity", ANA_NUMBER)
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: ERASURE_KEY is not set")


@pytest.mark.parametrize("args", [[], ["--identity", "1", "--contact-id", "2"]])
def test_exactly_one_key(erasing_app: Flask, engine: Engine, args: list[str]) -> None:
    result = erase(erasing_app, *args)
    assert result.exit_code == 2  # a usage error
    assert "exactly one of --identity or --contact-id" in result.output


# ---------------------------------------------------------------- pure parts


def test_numbers_are_normalised_like_the_projections() -> None:
    for given in ("+55 11 98765-4321", "005511987654321", "(55) 11 98765 4321", ANA_NUMBER):
        assert normalize_number(given) == ANA_NUMBER
    assert normalize_number(" psid-abc ") == "psid-abc"


def test_pseudonyms_are_keyed_and_stable() -> None:
    a = pseudonym(KEY, "identity", ANA_NUMBER)
    assert a == pseudonym(KEY, "identity", ANA_NUMBER) and a.startswith("erased_")
    assert len(a) == 39 and a != pseudonym("other-key", "identity", ANA_NUMBER)
    assert a != pseudonym(KEY, "contact", ANA_NUMBER)


def test_whatsapp_message_ids_that_encode_the_number_are_replaced() -> None:
    r = Redactor(KEY, [ANA_NUMBER], [])
    mine = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBDMEJBQzY0RkU5QjE5NTY0RDAA"
    someone_else = "wamid.HBgNNTUxMTk4NzY1NDMyMxUCABIYFjNFQjBDMEJBQzY0RkU5QjE5NTY0RDAA"
    assert r.replace(mine).startswith("erased_")
    assert r.replace(someone_else) == someone_else
    assert r.replace("wamid.$$$not-base64") == "wamid.$$$not-base64"


def test_answers_keep_their_names_and_token_only() -> None:
    assert redact_answers({"flow_token": "t", "id": "123", "n": {"x": 1}}) == {
        "flow_token": "t", "id": None, "n": None}  # fmt: skip
    assert redact_answers(["a"]) is None and redact_answers(None) is None


def test_documents_that_do_not_mention_the_person_are_left_alone() -> None:
    r = Redactor(KEY, [ANA_NUMBER], [ANA_CONTACT])
    doc = {"message": {"id": "x", "contact_id": "someone", "contact_message": {
        "text_message": {"text": "hello"}}}}  # fmt: skip
    new, mentioned = r.document(doc)
    assert not mentioned
    assert new["message"]["contact_message"]["text_message"]["text"] is None  # if forced
    _, mentioned = r.document({"x": {"text": f"call me on +{ANA_NUMBER}"}})
    assert mentioned


def test_erasure_asks_first_and_stops_on_no(erasing_app: Flask, engine: Engine) -> None:
    load_everything(erasing_app.test_client(), engine)
    before = dump(engine)
    runner = erasing_app.test_cli_runner()
    refused = runner.invoke(args=["contacts", "erase", "--identity", ANA_NUMBER], input="n\n")
    assert refused.exit_code == 1 and "cannot be undone" in refused.output
    assert dump(engine) == before
    agreed = runner.invoke(args=["contacts", "erase", "--identity", ANA_NUMBER], input="y\n")
    assert agreed.exit_code == 0, agreed.output
    assert ANA_NUMBER not in dump(engine)
