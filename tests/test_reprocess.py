"""`events reprocess`: after a parser fix, stored events project as they should."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import Engine, text, update

from tests.helpers import count, rows
from tests.replay_helpers import awkward_bodies, relax_durability, snapshot
from webhook.core.timeparse import ParseError
from webhook.db.events import EventFilter
from webhook.db.models import CallbackEvent
from webhook.ingest import parsers as callbacks
from webhook.ingest.body import load_body
from webhook.ingest.records import Envelope, Record
from webhook.projection.ingest import ingest
from webhook.projection.rules import PROJECTION_TABLES
from webhook.replay.rebuild import rebuild
from webhook.replay.reprocess import reprocess
from webhook.replay.simulate import SimulationConfig, simulate

Parser = Callable[[Mapping[str, Any], Envelope], tuple[Record, ...]]


def stream(messages: int = 60) -> list[bytes]:
    cfg = SimulationConfig(messages=messages, seed=21, shuffle="all", duplicate_rate=0.05)
    return simulate(cfg)[1]


def ingest_all(engine: Engine, bodies: list[bytes]) -> None:
    relax_durability(engine)
    for body in bodies:
        ingest(engine, body, load_body(body))


def with_ids(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row including surrogate ids: 'changes nothing' means these stay equal."""
    # Ordered by the surrogate id where there is one: rows sharing a message id (a
    # message's delivery history) have no order of their own.
    out = {name: rows(engine, name, "message_id" if name == "message_status" else "id")
           for name in PROJECTION_TABLES}  # fmt: skip
    out["callback_events"] = rows(engine, "callback_events")
    return out


def broken(parser: Parser) -> Parser:
    def parse(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
        raise ParseError("message: simulated parser bug")

    return parse


def test_failed_events_are_recovered_after_a_parser_fix(
    engine: Engine, runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setitem(callbacks.PARSERS, "MESSAGE_INBOUND", broken(callbacks.parse_message_inbound))
        ingest_all(engine, stream())
    failed = [r for r in rows(engine, "callback_events") if r["status"] == "failed"]
    assert failed and all(r["trigger"] == "MESSAGE_INBOUND" for r in failed)
    assert count(engine, "flow_responses") == 0

    preview = runner.invoke(args=["events", "reprocess", "--status", "failed", "--dry-run"])
    assert preview.exit_code == 0, preview.output
    assert f"events failed -> processed: {len(failed)}" in preview.output
    assert "dry run, nothing written" in preview.output
    assert count(engine, "flow_responses") == 0

    result = runner.invoke(args=["events", "reprocess", "--status", "failed"])
    assert result.exit_code == 0, result.output
    assert f"reprocessed {len(failed)} events" in result.output
    assert count(engine, "flow_responses") == len(failed)
    assert {r["status"] for r in rows(engine, "callback_events")} == {"processed"}
    assert all(r["error"] is None for r in rows(engine, "callback_events"))

    # The same tables a rebuild (= live ingestion with the fixed parser) gives.
    after = snapshot(engine, PROJECTION_TABLES)
    rebuild(engine)
    assert snapshot(engine, PROJECTION_TABLES) == after


def test_wrong_rows_are_corrected_in_place_and_a_second_run_changes_nothing(
    engine: Engine, runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = callbacks.PARSERS["MESSAGE_DELIVERY"]

    def misread(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
        out = []
        for r in real(payload, env):
            assert isinstance(r, callbacks.DeliveryReportRecord)
            out.append(r.__class__(**{**{f: getattr(r, f) for f in r.__slots__},
                                      "status": "DELIVERED" if r.status == "READ" else r.status,
                                      "contact_id": "WRONG"}))  # fmt: skip
        return tuple(out)

    with monkeypatch.context() as patch:
        patch.setitem(callbacks.PARSERS, "MESSAGE_DELIVERY", misread)
        ingest_all(engine, stream())
    statuses = {r["status"] for r in rows(engine, "message_status", "message_id")}
    assert "READ" not in statuses
    ids_before = {r["id"] for r in rows(engine, "delivery_reports")}

    result = runner.invoke(args=["events", "reprocess", "--trigger", "message_delivery"])
    assert result.exit_code == 0, result.output
    assert "READ" in {r["status"] for r in rows(engine, "message_status", "message_id")}
    assert "WRONG" not in {r["contact_id"] for r in rows(engine, "delivery_reports")}
    # Corrected rows kept their ids (updated, not deleted and inserted again): at
    # least the QUEUED_ON_CHANNEL row of each of the 60 messages.
    assert len(ids_before & {r["id"] for r in rows(engine, "delivery_reports")}) >= 60
    fixed = snapshot(engine, PROJECTION_TABLES)
    rebuild(engine)
    assert snapshot(engine, PROJECTION_TABLES) == fixed

    first = with_ids(engine)
    again = runner.invoke(args=["events", "reprocess", "--dry-run"])
    assert again.exit_code == 0
    for name in PROJECTION_TABLES:
        line = next(li for li in again.output.splitlines() if li.startswith(name))
        assert line.split()[1:3] == ["0", "0"] and line.split()[4] == "0", line
    runner.invoke(args=["events", "reprocess"])
    assert with_ids(engine) == first


def test_still_failing_events_keep_the_new_error(engine: Engine, runner: FlaskCliRunner) -> None:
    ingest_all(engine, awkward_bodies())
    with engine.begin() as conn:
        conn.execute(
            update(CallbackEvent)
            .where(CallbackEvent.status == "failed")
            .values(error="an old error from an older parser")
        )
    result = runner.invoke(args=["events", "reprocess", "--status", "failed"])
    assert result.exit_code == 0, result.output
    failed = [r for r in rows(engine, "callback_events") if r["status"] == "failed"]
    assert failed
    assert not any("older parser" in r["error"] for r in failed)
    assert "still failing" in result.output
    assert any("required string is missing" in r["error"] for r in failed)
    # The long message id fails alike on both databases (column lengths are checked).
    long_id = next(r for r in failed if "X" * 70 in r["body"].decode())
    assert long_id["error"] == "delivery_reports.message_id is longer than 64 characters (80)"
    # A failed event leaves no row behind.
    sources = {r["source_event_id"] for r in rows(engine, "delivery_reports")}
    assert not sources & {r["id"] for r in failed}


def test_pruned_events_are_skipped_and_reported(engine: Engine, runner: FlaskCliRunner) -> None:
    ingest_all(engine, stream(10))
    first = rows(engine, "callback_events")[0]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM flow_sends"))
        conn.execute(
            update(CallbackEvent)
            .where(CallbackEvent.id == first["id"])
            .values(body=None, pruned_at=datetime.now(UTC))
        )
    result = runner.invoke(args=["events", "reprocess"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 events whose body was pruned" in result.output
    # Every MESSAGE_SUBMIT but the pruned one wrote its flow_sends row again.
    submits = [r for r in rows(engine, "callback_events") if r["trigger"] == "MESSAGE_SUBMIT"]
    pruned = 1 if first["trigger"] == "MESSAGE_SUBMIT" else 0
    assert count(engine, "flow_sends") == len(submits) - pruned


def test_filters_choose_the_events(engine: Engine, runner: FlaskCliRunner) -> None:
    ingest_all(engine, stream(10))
    events = rows(engine, "callback_events")
    mid = events[len(events) // 2]["received_at"]
    cases: list[tuple[list[str], int]] = [
        (["--id", str(events[0]["id"]), "--id", str(events[1]["id"])], 2),
        (["--trigger", "MESSAGE_SUBMIT"], 10),
        (["--status", "failed"], 0),
        (["--since", mid.isoformat()], sum(e["received_at"] >= mid for e in events)),
        (["--until", mid.strftime("%Y-%m-%dT%H:%M:%S.%f")],
         sum(e["received_at"] < mid for e in events)),
        (["--since", "2999-01-01"], 0),
    ]  # fmt: skip
    for args, expected in cases:
        result = runner.invoke(args=["events", "reprocess", "--dry-run", *args])
        assert result.exit_code == 0, result.output
        if expected:
            assert f"reprocessed {expected} events" in result.output, (args, result.output)
        else:
            assert "no stored events match" in result.output, (args, result.output)
    bad = runner.invoke(args=["events", "reprocess", "--since", "last tuesday"])
    assert bad.exit_code == 2 and "is not a date (2026-03-01), a time" in bad.output
    bad = runner.invoke(args=["events", "reprocess", "--trigger", "NOPE"])
    assert bad.exit_code == 2 and "unknown trigger 'NOPE'" in bad.output


def test_reprocess_function_reports_changes_per_table(engine: Engine) -> None:
    ingest_all(engine, stream(10))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM inbound_messages"))
        conn.execute(text("UPDATE flow_responses SET flow_token = 'tampered'"))
    preview = reprocess(engine, EventFilter(triggers=("MESSAGE_INBOUND",)), dry_run=True)
    n = count(engine, "flow_responses")
    assert preview.changes["inbound_messages"].inserted == n
    assert preview.changes["flow_responses"].updated == n
    assert count(engine, "inbound_messages") == 0  # the dry run wrote nothing
    done = reprocess(engine, EventFilter(triggers=("MESSAGE_INBOUND",)))
    assert done.changes == preview.changes
    assert {r["flow_token"] for r in rows(engine, "flow_responses")} != {"tampered"}


def test_an_unreachable_database_is_one_clear_line(make_app: Callable[..., Flask]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_app(database_url=f"postgresql+psycopg://127.0.0.1:{port}/nowhere")
    forward = ["forward", "--to", "http://h/", "--secret", "s"]
    commands = (["reprocess"], ["rebuild"], ["export"], forward)
    for args in commands:
        result = app.test_cli_runner().invoke(args=["events", *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: database unavailable:"), result.output
        assert "Traceback" not in result.output
