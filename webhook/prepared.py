"""SQLite: statements compiled once to driver SQL, run without SQLAlchemy's per-call work.

conn.execute(statement, values) looks the compiled form up (a cache key computed by
walking the statement), builds the parameters and runs each bind processor: about a
tenth of a millisecond per statement, several statements per callback, all inside the
write lock. Here the compiled SQL, the parameter order and each parameter's bind
processor (the same ones SQLAlchemy would run: UTC datetimes, JSON, ...) are kept, and
a call only maps values through them. Statements with positional (qmark) parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class Prepared:
    sql: str
    # Per placeholder: (value name, its bind processor), or (None, the constant).
    slots: tuple[tuple[str | None, Any], ...]

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        params = tuple(
            how if name is None else (how(values[name]) if how else values[name])
            for name, how in self.slots
        )
        return conn.exec_driver_sql(self.sql, params)


def prepare(statement: ClauseElement, dialect: Dialect) -> Prepared:
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    if compiled.positiontup is None:
        raise ValueError(f"{dialect.name} does not use positional parameters")
    slots: list[tuple[str | None, Any]] = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        processor: Processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if bind.required:
            slots.append((name, processor))
        else:
            value = bind.effective_value
            slots.append((None, processor(value) if processor else value))
    return Prepared(str(compiled), tuple(slots))
