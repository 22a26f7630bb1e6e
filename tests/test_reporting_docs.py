"""docs/reporting.md: its ten queries run on both databases, its analyst role works."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tests import report_data as data
from tests.helpers import ROOT
from webhook.db.engine import make_engine

GUIDE = (ROOT / "docs" / "reporting.md").read_text()
EXAMPLE_FLOW = "1187345529063321"
BLOCK = re.compile(r"```sql\n(.*?)```", re.S)


def section(title: str) -> str:
    start = GUIDE.index(f"\n## {title}")
    end = GUIDE.find("\n## ", start + 1)
    return GUIDE[start : end if end > 0 else None]


def queries() -> dict[str, dict[str, str]]:
    """Query title -> {backend: SQL}, from the guide's ten ready-to-run queries."""
    found: dict[str, dict[str, str]] = {}
    for part in section("Ten ready-to-run queries").split("\n### ")[1:]:
        title = part.splitlines()[0]
        sql: dict[str, str] = {}
        for block in BLOCK.findall(part):
            first = block.splitlines()[0].strip()
            targets = {"-- PostgreSQL": ["postgresql"], "-- SQLite": ["sqlite"]}.get(
                first, ["postgresql", "sqlite"]
            )
            for backend in targets:
                assert backend not in sql, f"{title}: two blocks for {backend}"
                sql[backend] = block
        found[title] = sql
    return found


QUERIES = queries()


@pytest.fixture
def loaded(backend: str, new_database_url: Callable[[str], str]) -> Iterator[Engine]:
    engine = make_engine(data.loaded_database(backend, new_database_url))
    yield engine
    engine.dispose()


def run(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.exec_driver_sql(sql.replace(EXAMPLE_FLOW, data.FLOW_B))
        return [dict(r._mapping) for r in result]


def test_there_are_ten_for_both_databases() -> None:
    assert len(QUERIES) == 10
    for title, sql in QUERIES.items():
        assert set(sql) == {"postgresql", "sqlite"}, title


@pytest.mark.parametrize("title", list(QUERIES))
def test_query_runs(loaded: Engine, backend: str, title: str) -> None:
    rows = run(loaded, QUERIES[title][backend])
    # The dataset is from 2026-03: "last N days" finds nothing, everything else does.
    assert bool(rows) != (" last " in title), rows


def by_number(n: int) -> str:
    return next(t for t in QUERIES if t.startswith(f"{n}. "))


def test_answers(loaded: Engine, backend: str) -> None:
    rates = {
        r["flow_id"]: float(r["completion_rate"])
        for r in run(loaded, QUERIES[by_number(3)][backend])
    }
    assert rates == {data.FLOW_A: 0.4, data.FLOW_B: 0.5}  # M9 counts, all time
    medians = {
        r["flow_id"]: float(r["median_seconds"])
        for r in run(loaded, QUERIES[by_number(5)][backend])
    }
    assert medians == {data.FLOW_A: (860400 + 630.25) / 2, data.FLOW_B: 2400.0}
    slots = {r["slot"]: r["completions"] for r in run(loaded, QUERIES[by_number(6)][backend])}
    assert slots == {"10:30": 1, "14:00": 1}
    stuck = [r["message_id"] for r in run(loaded, QUERIES[by_number(8)][backend])]
    assert stuck == ["M7", "M8"]
    [failed] = run(loaded, QUERIES[by_number(9)][backend])
    assert (failed["message_id"], failed["reason_code"]) == ("M3", "CHANNEL_FAILURE")
    assert [r["message_id"] for r in run(loaded, QUERIES[by_number(10)][backend])] == ["C9"]


# ---------------------------------------------------------------- the analyst role


def libpq(url: str, **parts: str) -> str:
    return make_url(url).set(drivername="postgresql", **parts).render_as_string(hide_password=False)


def test_analyst_role(new_database_url: Callable[[str], str]) -> None:
    url = data.loaded_database("postgresql", new_database_url)
    database = make_url(url).database
    role = f"analyst_{uuid.uuid4().hex[:10]}"
    [setup] = BLOCK.findall(section("A read-only role for analysts (PostgreSQL)"))
    setup = setup.replace("flowhooks_analyst", role).replace(
        "DATABASE flowhooks", f'DATABASE "{database}"'
    )
    with psycopg.connect(libpq(url), autocommit=True) as owner:
        try:
            owner.execute(setup.encode())
            analyst_url = libpq(url, username=role, password="change-me")
            with psycopg.connect(analyst_url) as analyst:
                assert analyst.execute("SHOW statement_timeout").fetchone() == ("30s",)
                funnel = analyst.execute("SELECT flow_id, sent FROM flow_funnel").fetchall()
                assert sorted(funnel) == [(data.FLOW_A, 5), (data.FLOW_B, 4)]
                assert analyst.execute("SELECT COUNT(*) FROM flow_sends").fetchone() == (10,)
                analyst.rollback()
                with pytest.raises(errors.InsufficientPrivilege):
                    analyst.execute("SELECT body FROM callback_events")
                analyst.rollback()
                with pytest.raises((errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege)):
                    analyst.execute("DELETE FROM flow_sends")
                analyst.rollback()
            # The timeout really cancels: shortened here so the test does not wait 30 s.
            owner.execute(f"ALTER ROLE {role} SET statement_timeout = '200ms'".encode())
            with psycopg.connect(analyst_url) as analyst, pytest.raises(errors.QueryCanceled):
                analyst.execute("SELECT pg_sleep(20)")
        finally:
            owner.execute(f"DROP OWNED BY {role}".encode())
            owner.execute(f"DROP ROLE {role}".encode())
