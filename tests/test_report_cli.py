"""`flask report ...`: every command in every format, and bad input."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import pytest
from flask.testing import FlaskCliRunner

from tests import report_data as data
from webhook import create_app
from webhook.core.cli_support import parse_when
from webhook.core.settings import Settings
from webhook.reports.cli import make_window

WINDOW = ["--since", "2026-03-01", "--until", "2026-03-04"]


@pytest.fixture
def cli(backend: str, new_database_url: Callable[[str], str]) -> Iterator[FlaskCliRunner]:
    url = data.loaded_database(backend, new_database_url)
    app = create_app(Settings().with_overrides(database_url=url))
    yield app.test_cli_runner()
    app.extensions["webhook"].engine.dispose()


def invoke(cli: FlaskCliRunner, *args: str) -> str:
    result = cli.invoke(args=["report", *args])
    assert result.exit_code == 0, result.output
    return str(result.output)


def as_json(cli: FlaskCliRunner, *args: str) -> dict[str, Any]:
    doc = json.loads(invoke(cli, *args, *WINDOW, "--format", "json"))
    assert isinstance(doc, dict)
    return doc


def as_csv(cli: FlaskCliRunner, *args: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(invoke(cli, *args, *WINDOW, "--format", "csv"))))


def table_lines(cli: FlaskCliRunner, *args: str) -> list[str]:
    return invoke(cli, *args, *WINDOW).splitlines()


# ---------------------------------------------------------------- funnel


def test_funnel_json(cli: FlaskCliRunner) -> None:
    doc = as_json(cli, "funnel")
    assert doc["report"] == "funnel"
    assert (doc["since"], doc["until"]) == ("2026-03-01T00:00:00Z", "2026-03-04T00:00:00Z")
    assert doc["rows"] == data.FUNNEL


def test_funnel_csv(cli: FlaskCliRunner) -> None:
    rows = as_csv(cli, "funnel", "--daily")
    expected = [{k: "" if v is None else str(v) for k, v in r.items()} for r in data.FUNNEL_DAILY]
    assert rows == expected


def test_funnel_table_is_aligned(cli: FlaskCliRunner) -> None:
    lines = table_lines(cli, "funnel")
    header, rule, first, second, summary = lines
    assert header.split() == ["flow_id", "sent", "rejected", "queued", "delivered", "read",
                              "completed", "failed", "failed_after_delivery",
                              "completion_rate"]  # fmt: skip
    assert set(rule.replace("  ", "")) == {"-"}
    assert first.split() == [data.FLOW_A, "4", "1", "4", "3", "2", "1", "1", "1", "0.25"]
    assert second.split()[0] == data.FLOW_B
    # Numbers are right-aligned under their headers: every line ends at the same column.
    assert len(header) == len(rule) == len(first) == len(second)
    assert summary == "(2 rows)"


def test_funnel_for_one_flow(cli: FlaskCliRunner) -> None:
    doc = json.loads(invoke(cli, "funnel", *WINDOW, "--flow-id", data.FLOW_B, "--format", "json"))
    assert doc["flow_id"] == data.FLOW_B
    assert doc["rows"] == [data.FUNNEL[1]]


# ---------------------------------------------------------------- completions


def test_completions_json_keeps_answers_nested(cli: FlaskCliRunner) -> None:
    rows = as_json(cli, "completions")["rows"]
    assert [r["message_id"] for r in rows] == [c[0] for c in data.COMPLETIONS]
    c1 = rows[1]
    assert c1["response"] == {"flow_token": "tok1", **data.ANSWERS_1}
    assert c1["sent_at"] == "2026-03-02T09:00:00Z"
    assert c1["completed_at"] == "2026-03-02T09:10:30.250000Z"
    assert c1["seconds_to_complete"] == 630.25
    assert rows[-1]["flow_id"] is None and rows[-1]["matched_by"] is None


def test_completions_csv_has_one_column_per_answer(cli: FlaskCliRunner) -> None:
    rows = as_csv(cli, "completions")
    answer_columns = [c for c in rows[0] if c.startswith("answer.")]
    # The union of every answer key, sorted; flow_token has its own column already.
    assert answer_columns == ["answer.address", "answer.consent", "answer.full_name",
                              "answer.note", "answer.rating", "answer.slot",
                              "answer.symptoms"]  # fmt: skip
    assert "response" not in rows[0]
    by_id = {r["message_id"]: r for r in rows}
    c1 = by_id["C1"]
    assert c1["answer.full_name"] == "Ana"
    assert json.loads(c1["answer.symptoms"]) == ["fever", "cough"]
    assert c1["answer.consent"] == "true"
    assert c1["answer.address"] == ""  # C1 has no such answer
    assert json.loads(by_id["C5"]["answer.address"]) == {"city": "Recife"}
    assert by_id["C67"]["answer.rating"] == "5"
    assert by_id["C9B"]["answer.consent"] == "false"
    # Commas, quotes and newlines survive the CSV round trip.
    assert by_id["C9"]["answer.note"] == data.ANSWERS_9["note"]
    assert by_id["C9"]["flow_id"] == ""
    assert by_id["C5"]["matched_by"] == "flow_token"


def test_completions_table(cli: FlaskCliRunner) -> None:
    lines = table_lines(cli, "completions", "--flow-id", data.FLOW_B)
    assert lines[0].split()[:3] == ["completed_at", "message_id", "flow_token"]
    assert lines[2].startswith("2026-03-03 09:20:00  C5 ")
    assert lines[-1] == "(2 rows)"
    # Long answers are cut to keep the table readable.
    assert all(len(cell.strip()) <= 60 for line in lines[2:-1] for cell in line.split("  "))


# ---------------------------------------------------------------- failures


def test_failures_every_format(cli: FlaskCliRunner) -> None:
    rows = as_json(cli, "failures")["rows"]
    assert [tuple(r.values()) for r in rows] == data.FAILURES
    csv_rows = as_csv(cli, "failures", "--daily")
    assert [tuple(r.values()) for r in csv_rows] == [
        tuple(str(v) for v in row) for row in data.FAILURES_DAILY
    ]
    lines = table_lines(cli, "failures", "--flow-id", data.FLOW_A)
    assert lines[0].split() == ["channel", "reason_code", "failures", "after_delivery"]
    assert [line.split()[1] for line in lines[2:-1]] == [
        "CHANNEL_FAILURE",
        "OUTSIDE_ALLOWED_SENDING_WINDOW",
    ]


# ---------------------------------------------------------------- timeline


def test_timeline_every_format(cli: FlaskCliRunner) -> None:
    rows = as_json(cli, "timeline")["rows"]
    assert [r["message_id"] for r in rows] == list(data.TIMELINE)
    assert rows[2]["failed_after_delivery"] is True and rows[2]["status"] == "DELIVERED"
    assert rows[7]["status"] is None
    csv_rows = as_csv(cli, "timeline")
    assert csv_rows[0]["read_at"] == "2026-03-02T09:05:00Z"
    assert csv_rows[2]["failed_after_delivery"] == "true"
    assert csv_rows[7]["status"] == ""
    lines = table_lines(cli, "timeline", "--flow-id", data.FLOW_A)
    assert [line.split()[0] for line in lines[2:-1]] == ["M1", "M2", "M3", "M4"]
    assert "2026-03-02 09:00:00" in lines[2]


# ---------------------------------------------------------------- input


def test_default_window_is_the_last_30_days(cli: FlaskCliRunner) -> None:
    doc = json.loads(invoke(cli, "funnel", "--format", "json"))
    since = datetime.fromisoformat(doc["since"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(doc["until"].replace("Z", "+00:00"))
    assert until - since == timedelta(days=30)
    assert doc["rows"] == []  # the dataset is in 2026-03; now is later


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since: 'yesterday' is not a date (2026-03-01), "),
        (["--since", "2026-02-30"], "--since: '2026-02-30' is not a date"),
        (["--since", "2026-03-04", "--until", "2026-03-01"], "must be before --until"),
        (["--until", "2026-13-01T00:00:00Z"], "--until: '2026-13-01T00:00:00Z' is not"),
        (["--since", "99999999d"], "--since: '99999999d' is not a date"),  # out of range
    ],
)
def test_bad_input_is_a_usage_error(cli: FlaskCliRunner, args: list[str], message: str) -> None:
    result = cli.invoke(args=["report", "funnel", *args])
    assert result.exit_code == 2  # usage: exit status 2 in every command
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert message in error
    assert "Traceback" not in result.output


def test_unknown_format_is_a_usage_error(cli: FlaskCliRunner) -> None:
    result = cli.invoke(args=["report", "timeline", "--format", "xml"])
    assert result.exit_code == 2
    assert "'xml' is not one of 'table', 'csv', 'json'" in result.output


def test_unmigrated_database_is_one_line(tmp_path: Any) -> None:
    app = create_app(Settings().with_overrides(database_url=f"sqlite:///{tmp_path / 'empty.db'}"))
    result = app.test_cli_runner().invoke(args=["report", "timeline"])
    app.extensions["webhook"].engine.dispose()
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: database sqlite:///{tmp_path / 'empty.db'} has no schema: "
        "run `flowhooks db upgrade`"
    )
    assert not (tmp_path / "empty.db").exists()  # a read-only command creates nothing


def test_when_forms() -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert parse_when("2026-03-01", now, "--since") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_when("2026-03-01T08:00:00+02:00", now, "--since") == datetime(
        2026, 3, 1, 6, tzinfo=UTC
    )
    assert parse_when("2026-03-01T08:00:00", now, "--since") == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert parse_when("7d", now, "--since") == now - timedelta(days=7)
    assert parse_when("12h", now, "--since") == now - timedelta(hours=12)
    assert parse_when("30m", now, "--since") == now - timedelta(minutes=30)
    window = make_window("2d", None, now)
    assert (window.since, window.until) == (now - timedelta(days=2), now)
    with pytest.raises(click.ClickException):
        make_window("1d", "2d", now)  # since after until


def test_same_output_on_sqlite_and_postgresql(new_database_url: Callable[[str], str]) -> None:
    """Every report, in every format, byte for byte the same on both databases."""
    outputs: dict[str, list[str]] = {}
    for backend in ("sqlite", "postgresql"):
        url = data.loaded_database(backend, new_database_url)
        app = create_app(Settings().with_overrides(database_url=url))
        runner = app.test_cli_runner()
        outputs[backend] = []
        for name in ("funnel", "completions", "failures", "timeline"):
            for fmt in ("table", "csv", "json"):
                daily = name in {"funnel", "failures"}
                for extra in [[], ["--daily"]] if daily else [[]]:
                    args = ["report", name, *WINDOW, "--format", fmt, *extra]
                    result = runner.invoke(args=args)
                    assert result.exit_code == 0, result.output
                    outputs[backend].append(result.output)
        app.extensions["webhook"].engine.dispose()
    assert outputs["sqlite"] == outputs["postgresql"]
    assert len(outputs["sqlite"]) == 4 * 3 + 2 * 3


# ---------------------------------------------------------------- CSV and terminal safety

HOSTILE = {
    "formula": '=HYPERLINK("http://evil.example","x")',
    "plus": "+1+cmd|' /C calc'!A0",
    "at": "@SUM(1+1)",
    "minus": "-2+3",
    "tab": "\tcell",
    "cr": "\rline one\rline two",
    "plain": "Ana",
}


def completions_with(answers: dict[str, Any]) -> Any:
    from webhook.reports.queries import Report

    rows = [{"message_id": "M1", "response": answers}, {"message_id": "M2", "response": {}}]
    return Report("completions", ("message_id", "response"), rows)


def test_csv_neutralises_formulas_and_quotes_carriage_returns() -> None:
    from webhook.reports.cli import render_csv

    text = render_csv(completions_with({**HOSTILE, "count": -5}))
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 3  # the \r did not split a row
    header, first = rows[0], dict(zip(rows[0], rows[1], strict=True))
    assert header[0] == "message_id"
    for key in ("formula", "plus", "at", "minus", "tab", "cr"):
        assert first[f"answer.{key}"] == "'" + HOSTILE[key], key
    assert first["answer.plain"] == "Ana"
    assert first["answer.count"] == "-5"  # a number is not text: left as it is
    assert '"\'\rline one\rline two"' in text  # quoted: the row stays whole


def test_raw_csv_keeps_the_values_as_stored() -> None:
    from webhook.reports.cli import render_csv

    rows = list(csv.reader(io.StringIO(render_csv(completions_with(HOSTILE), raw=True))))
    first = dict(zip(rows[0], rows[1], strict=True))
    assert {k: first[f"answer.{k}"] for k in HOSTILE} == HOSTILE
    assert len(rows) == 3


def test_raw_csv_option_reaches_the_output(cli: FlaskCliRunner) -> None:
    neutral = invoke(cli, "completions", *WINDOW, "--format", "csv")
    raw = invoke(cli, "completions", *WINDOW, "--format", "csv", "--raw-csv")
    assert raw.splitlines()[0] == neutral.splitlines()[0]
    assert len(raw.splitlines()) == len(neutral.splitlines())


def test_tables_do_not_pass_terminal_control_characters() -> None:
    from webhook.reports.cli import render_table
    from webhook.reports.queries import Report

    report = Report("completions", ("message_id", "text"),
                    [{"message_id": "M1", "text": "\x1b[2J\x1b]0;pwned\x07ok\r"}])  # fmt: skip
    table = render_table(report)
    assert "\x1b" not in table and "\x07" not in table and "\r" not in table
    assert "ok" in table
