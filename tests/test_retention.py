"""`flask events prune`: old bodies dropped (digests kept, retries still dedupe), raw rows
deleted past the second horizon, projections and funnels unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Engine, update

from tests.helpers import count, post_callback, rows
from tests.queries import funnel, snapshot, status_counts
from webhook.db.models import CallbackEvent
from webhook.replay.simulate import SimulationConfig, simulate

NOW = datetime.now(UTC)


def load(client: FlaskClient, engine: Engine, ages: dict[int, int]) -> dict[int, list[bytes]]:
    """Post simulated traffic through the endpoint, then age it: {messages: days old}."""
    by_age: dict[int, list[bytes]] = {}
    for seed, (messages, days) in enumerate(ages.items(), start=1):
        _, stream = simulate(SimulationConfig(messages=messages, seed=seed, failure_rate=0.2))
        for body in stream:
            assert post_callback(client, body).get_json()["outcome"] == "stored"
        with engine.begin() as conn:
            conn.execute(
                update(CallbackEvent)
                .where(CallbackEvent.received_at > NOW - timedelta(days=1))
                .values(received_at=NOW - timedelta(days=days))
            )
        by_age[days] = stream
    return by_age


def bodies_by_age(engine: Engine) -> dict[str, int]:
    out = {"kept": 0, "pruned": 0}
    for event in rows(engine, "callback_events"):
        if event["body"] is None:
            assert event["pruned_at"] is not None and len(event["body_sha256"]) == 64
            out["pruned"] += 1
        else:
            assert event["pruned_at"] is None
            out["kept"] += 1
    return out


def test_dry_run_counts_and_changes_nothing(
    client: FlaskClient, engine: Engine, runner: FlaskCliRunner
) -> None:
    by_age = load(client, engine, {6: 90, 5: 40, 4: 2})
    before = snapshot(engine)
    result = runner.invoke(args=["events", "prune", "--older-than", "30", "--delete-after", "60",
                                 "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"bodies to drop: {len(by_age[40])} " in result.output
    assert f"raw events to delete: {len(by_age[90])} " in result.output
    assert "dry run: nothing changed" in result.output
    assert snapshot(engine) == before


def test_prune_drops_old_bodies_and_a_late_retry_is_still_a_duplicate(
    client: FlaskClient, engine: Engine, runner: FlaskCliRunner
) -> None:
    by_age = load(client, engine, {6: 40, 4: 2})
    answers = (funnel(engine), status_counts(engine))
    result = runner.invoke(args=["events", "prune", "--older-than", "30", "--yes",
                                 "--batch-size", "7"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"pruned: dropped {len(by_age[40])} bodies, deleted 0 raw events" in result.output
    assert bodies_by_age(engine) == {"kept": len(by_age[2]), "pruned": len(by_age[40])}
    assert (funnel(engine), status_counts(engine)) == answers
    # Sinch retries an old callback: recognised by its digest, nothing stored again.
    events = count(engine, "callback_events")
    for body in by_age[40]:
        assert post_callback(client, body).get_json()["outcome"] == "duplicate"
    assert count(engine, "callback_events") == events
    # Running it again finds nothing.
    again = runner.invoke(args=["events", "prune", "--older-than", "30", "--yes"])
    assert "nothing to prune" in again.output


def test_delete_after_removes_raw_rows_and_keeps_projections(
    client: FlaskClient, engine: Engine, runner: FlaskCliRunner
) -> None:
    by_age = load(client, engine, {5: 90, 4: 40, 3: 2})
    answers = (funnel(engine), status_counts(engine))
    projected = {t: count(engine, t) for t in ("flow_sends", "delivery_reports", "flow_responses",
                                               "inbound_messages", "message_status")}  # fmt: skip
    result = runner.invoke(args=["events", "prune", "--older-than", "30", "--delete-after", "60",
                                 "--yes", "--batch-size", "4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        f"dropped {len(by_age[40])} bodies, deleted {len(by_age[90])} raw events" in result.output
    )
    assert count(engine, "callback_events") == len(by_age[40]) + len(by_age[2])
    assert {t: count(engine, t) for t in projected} == projected
    assert (funnel(engine), status_counts(engine)) == answers
    # ON DELETE SET NULL (also on SQLite, where foreign keys are switched on per connection).
    remaining = {e["id"] for e in rows(engine, "callback_events")}
    orphans = 0
    for table in ("flow_sends", "delivery_reports", "flow_responses", "inbound_messages"):
        for row in rows(engine, table):
            assert row["source_event_id"] is None or row["source_event_id"] in remaining
            orphans += row["source_event_id"] is None
    assert orphans > 0
    # A retry after deletion is stored again but changes no answer.
    for body in by_age[90]:
        assert post_callback(client, body).get_json()["outcome"] == "stored"
    assert (funnel(engine), status_counts(engine)) == answers


def test_confirmation_is_asked_without_yes(
    client: FlaskClient, engine: Engine, runner: FlaskCliRunner
) -> None:
    load(client, engine, {3: 40})
    before = snapshot(engine)
    declined = runner.invoke(args=["events", "prune", "--older-than", "30"], input="n\n")
    assert declined.exit_code != 0 and "Proceed?" in declined.output
    assert snapshot(engine) == before
    accepted = runner.invoke(args=["events", "prune", "--older-than", "30"], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert bodies_by_age(engine)["kept"] == 0


def test_second_horizon_cannot_come_first(runner: FlaskCliRunner, engine: Engine) -> None:
    result = runner.invoke(args=["events", "prune", "--older-than", "30", "--delete-after", "7"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --delete-after must be at least --older-than"
    missing = runner.invoke(args=["events", "prune"])
    assert missing.exit_code == 2 and "--older-than" in missing.output


def test_failed_events_are_pointed_out(
    client: FlaskClient, engine: Engine, runner: FlaskCliRunner
) -> None:
    post_callback(client, b'{"message_delivery_report": {"message_id": []}}')
    result = runner.invoke(args=["events", "prune", "--older-than", "0", "--dry-run"])
    assert "of which failed: 1 (they can no longer be reprocessed)" in result.output
