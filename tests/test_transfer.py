"""`events export` and `events import`: JSON Lines in and out, through ingest."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import Engine, insert

from tests.helpers import FIXTURES, count, rows
from tests.replay_helpers import awkward_bodies, relax_durability, snapshot
from webhook.core.state import state
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.db.models import CallbackEvent
from webhook.ingest.body import load_body
from webhook.projection.ingest import ingest
from webhook.replay.simulate import SimulationConfig, simulate
from webhook.replay.transfer import export_item


def some_callbacks() -> list[bytes]:
    cfg = SimulationConfig(messages=40, seed=9, shuffle="all", broken_response_rate=0.2)
    fixtures = [p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))]
    return simulate(cfg)[1] + fixtures + awkward_bodies()


def store(engine: Engine, bodies: list[bytes]) -> None:
    relax_durability(engine)
    start = datetime(2026, 3, 2, 12, 0, 0, 123456, tzinfo=UTC)
    for i, body in enumerate(bodies):
        headers = {"x-sinch-webhook-signature": f"sig{i}", "x-sinch-webhook-signature-nonce": "n"}
        ingest(engine, body, load_body(body), headers, start + timedelta(seconds=i, microseconds=i))


def test_export_then_import_into_an_empty_database_gives_the_same_tables(
    engine: Engine,
    runner: FlaskCliRunner,
    make_app: Callable[..., Flask],
    new_database_url: Callable[[str], str],
    backend: str,
    tmp_path: Path,
) -> None:
    store(engine, some_callbacks())
    out = tmp_path / "events.jsonl"
    result = runner.invoke(args=["events", "export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    stored = rows(engine, "callback_events")
    assert f"exported {len(stored)} events to {out}" in result.stderr
    lines = out.read_bytes().splitlines()
    assert [json.loads(line)["body"].encode() for line in lines] == [r["body"] for r in stored]

    target_url = new_database_url(backend)
    target = make_engine(target_url)
    migrate.upgrade(target)
    try:
        app = make_app(database_url=target_url)
        relax_durability(state(app).engine)
        result = app.test_cli_runner().invoke(args=["events", "import", str(out)])
        assert result.exit_code == 0, result.output
        assert f"{len(stored)} stored" in result.output
        assert snapshot(target, by_digest=True) == snapshot(engine, by_digest=True)
        assert [r["body"] for r in rows(target, "callback_events")] == [r["body"] for r in stored]
    finally:
        target.dispose()


def test_export_filters_and_standard_output(engine: Engine, runner: FlaskCliRunner) -> None:
    store(engine, some_callbacks())
    result = runner.invoke(args=["events", "export", "--trigger", "MESSAGE_SUBMIT"])
    assert result.exit_code == 0, result.output
    items = [orjson.loads(line) for line in result.stdout_bytes.splitlines()]
    submits = [r for r in rows(engine, "callback_events") if r["trigger"] == "MESSAGE_SUBMIT"]
    assert [i["id"] for i in items] == [r["id"] for r in submits]
    first = items[0]
    assert first["trigger"] == "MESSAGE_SUBMIT" and first["status"] == "processed"
    assert first["headers"]["x-sinch-webhook-signature"].startswith("sig")
    assert first["received_at"].endswith("Z")
    assert hashlib.sha256(first["body"].encode()).hexdigest() == first["body_sha256"]

    failed = runner.invoke(args=["events", "export", "--status", "failed"])
    assert {orjson.loads(line)["status"] for line in failed.stdout_bytes.splitlines()} == {"failed"}


def test_a_body_that_is_not_utf8_is_exported_as_base64(engine: Engine) -> None:
    body = b'{"text":"caf\xe9"}'  # Latin-1: not UTF-8
    with engine.begin() as conn:
        conn.execute(
            insert(CallbackEvent).values(
                body=body, body_sha256=hashlib.sha256(body).hexdigest(), headers=None,
                received_at=datetime.now(UTC), trigger="UNKNOWN", status="failed",
            )
        )  # fmt: skip
    [row] = rows(engine, "callback_events")
    item = export_item(row)
    assert "body" not in item
    assert base64.b64decode(item["body_base64"]) == body


def test_bad_lines_are_reported_by_number_and_the_rest_load(
    engine: Engine, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    good = some_callbacks()[:3]
    wrapped = {
        "body": good[1].decode(), "headers": {"X-Sinch-Webhook-Signature": "abc"},
        "received_at": "2026-03-05T10:00:00.5Z",
    }  # fmt: skip
    lines = [
        good[0],  # 1: a bare body
        b"",  # 2: blank, ignored
        b'{"message_delivery_report": ',  # 3: cut short
        json.dumps(wrapped).encode(),  # 4: wrapped, with headers and time
        b"[1, 2]",  # 5: not an object
        b'{"body": 42}',  # 6: body of the wrong type
        b'{"body_base64": "***"}',  # 7: not base64
        json.dumps({"body": {"message": {"id": "M9"}}, "received_at": "soon"}).encode(),  # 8
        json.dumps({"body": "[1]"}).encode(),  # 9: a body that is not a JSON object
        json.dumps({"body_base64": base64.b64encode(good[2]).decode()}).encode(),  # 10
        json.dumps({"body": {"message": {"id": "M9"}}}).encode(),  # 11: body as an object
    ]
    path = tmp_path / "saved.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\n")
    result = runner.invoke(args=["events", "import", str(path)])
    assert result.exit_code == 1
    for n in (3, 5, 6, 7, 8, 9):
        assert f"saved.jsonl, line {n}: " in result.stderr, n
    assert "line 8: received_at: not an ISO-8601 timestamp" in result.stderr
    assert "Error: 6 of 10 items were skipped" in result.stderr
    assert "4 stored" in result.stdout
    stored = rows(engine, "callback_events")
    assert [r["body"] for r in stored[:3]] == good  # byte-exact, in file order
    assert stored[1]["headers"] == {"x-sinch-webhook-signature": "abc"}
    assert stored[1]["received_at"] == datetime(2026, 3, 5, 10, 0, 0, 500000, tzinfo=UTC)
    assert stored[3]["body"] == b'{"message":{"id":"M9"}}'
    assert stored[3]["trigger"] == "MESSAGE_INBOUND"

    again = runner.invoke(args=["events", "import", str(path)])
    assert "0 stored, 4 duplicates, 6 skipped" in again.stdout
    assert count(engine, "callback_events") == 4


def test_import_a_folder_of_json_files(
    engine: Engine, runner: FlaskCliRunner, tmp_path: Path
) -> None:
    names = ["message_delivery__read", "message_inbound__flow_nfm_reply", "message_submit__flows"]
    for name in names:
        (tmp_path / f"{name}.json").write_bytes((FIXTURES / f"{name}.json").read_bytes())
    (tmp_path / "zz_broken.json").write_bytes(b"{nope")
    (tmp_path / "notes.txt").write_text("not a callback")
    result = runner.invoke(args=["events", "import", str(tmp_path)])
    assert result.exit_code == 1
    assert "zz_broken.json: not valid JSON" in result.stderr
    assert "4 items, 3 stored (3 processed)" in result.stdout
    assert count(engine, "flow_responses") == 1
    assert {bytes(r["body"]) for r in rows(engine, "callback_events")} == {
        (FIXTURES / f"{name}.json").read_bytes() for name in names
    }


def test_a_missing_file_is_one_clear_line(runner: FlaskCliRunner, engine: Engine) -> None:
    result = runner.invoke(args=["events", "import", "/no/such/file.jsonl"])
    assert result.exit_code == 2
    assert "'/no/such/file.jsonl' does not exist" in result.output
    assert "Traceback" not in result.output
    assert count(engine, "callback_events") == 0


def test_import_reads_each_item_on_its_own(
    runner: FlaskCliRunner, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line past the size limit, or a file that cannot be read, is reported by name and
    skipped; the rest load; a summary ends the run."""
    from webhook.replay import transfer

    monkeypatch.setattr(transfer, "MAX_ITEM_BYTES", 2000)
    good = [json.dumps(json.loads(p.read_bytes())).encode()
            for p in sorted(FIXTURES.glob("message_delivery__*.json"))][:2]  # fmt: skip
    lines = tmp_path / "saved.jsonl"
    lines.write_bytes(good[0] + b"\n" + b'{"x":"' + b"a" * 5000 + b'"}\n' + good[1] + b"\n")
    result = runner.invoke(args=["events", "import", str(lines)])
    assert result.exit_code == 1
    assert "saved.jsonl, line 2: longer than 2,000 bytes" in result.stderr
    assert "3 items, 2 stored" in result.stdout and "1 skipped" in result.stdout
    assert count(engine, "callback_events") == 2

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.json").write_bytes(good[0])
    (folder / "b.json").mkdir()  # a "file" that cannot be read
    (folder / "c.json").write_bytes(b"[1]")
    result = runner.invoke(args=["events", "import", str(folder)])
    assert "folder, b.json: cannot read" in result.stderr
    assert "folder, c.json: not a JSON object" in result.stderr
    assert "3 items, 0 stored" in result.stdout and "1 duplicates, 2 skipped" in result.stdout
