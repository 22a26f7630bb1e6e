"""Batch sends: recipients from a CSV file (pure).

CSV columns (a header row is required; names are case-insensitive):
  to            WhatsApp number (international format)       } one of the two
  contact_id    Sinch contact id                             } per row
  token         flow token for this recipient (default: generated)
  data          a JSON object merged into the screen data
  data.<key>    one string value of the screen data (wins over ``data``)
  metadata, correlation_id   per-recipient message_metadata / correlation_id
Empty cells mean "not given". Each row is the command's message with these fields
replaced, then checked with the same rules as a single send.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from webhook.core.outbound import Pacer as Pacer  # re-exported: batch sends are paced with it
from webhook.flows.message import FlowMessage, validate

COLUMNS = ("to", "contact_id", "token", "data", "metadata", "correlation_id")
DATA_PREFIX = "data."


class CsvError(ValueError):
    """The file as a whole cannot be used (no header, unknown or missing columns)."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One recipient row: its line number, the message, and what is wrong with it."""

    line: int
    message: FlowMessage
    problems: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.problems


def _columns(header: list[str]) -> dict[str, str]:
    """Map each CSV column to a COLUMNS name or a data.<key>; refuse anything else."""
    mapping: dict[str, str] = {}
    for name in header:
        key = name.strip()
        low = key.lower()
        if low in COLUMNS:
            target = low
        elif low.startswith(DATA_PREFIX) and key[len(DATA_PREFIX) :]:
            target = DATA_PREFIX + key[len(DATA_PREFIX) :]
        else:
            raise CsvError(f"unknown CSV column {name!r}; known: {', '.join(COLUMNS)}, data.<key>")
        if target in mapping.values():
            raise CsvError(f"CSV column {name!r} appears twice")
        mapping[name] = target
    if "to" not in mapping.values() and "contact_id" not in mapping.values():
        raise CsvError("the CSV file needs a 'to' or a 'contact_id' column")
    return mapping


def _row_data(base: Any, cells: dict[str, str], problems: list[str]) -> Any:
    data: Any = dict(base) if isinstance(base, dict) else base
    given = isinstance(base, dict)
    raw = cells.get("data", "")
    if raw.strip():
        try:
            parsed = json.loads(raw)
        except ValueError as err:
            problems.append(f"data column is not valid JSON ({err})")
            parsed = None
        if parsed is not None and not isinstance(parsed, dict):
            problems.append(f"data column must be a JSON object; got {type(parsed).__name__}")
        elif isinstance(parsed, dict):
            data = {**(data or {}), **parsed}
            given = True
    for column, value in cells.items():
        if column.startswith(DATA_PREFIX) and value != "":
            data = {**(data or {}), column[len(DATA_PREFIX) :]: value}
            given = True
    return data if given else base


def read_rows(lines: Iterable[str], template: FlowMessage) -> list[CsvRow]:
    """Every data row of a recipients CSV, each checked; raises CsvError for the file."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise CsvError("the CSV file is empty") from None
    except csv.Error as err:
        raise CsvError(f"line 1: {err}") from None
    mapping = _columns(header)
    rows: list[CsvRow] = []
    token_lines: dict[str, int] = {}
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise CsvError(f"line {reader.line_num}: {err}") from None
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue  # a blank line
        problems: list[str] = []
        if len(values) != len(header):
            problems.append(f"has {len(values)} fields; the header has {len(header)}")
        cells = {mapping[name]: value.strip() for name, value in zip(header, values, strict=False)}
        message = replace(
            template,
            to=cells.get("to") or None,
            contact_id=cells.get("contact_id") or None,
            token=cells.get("token") or None,
            data=_row_data(template.data, cells, problems),
            metadata=cells.get("metadata") or template.metadata,
            correlation_id=cells.get("correlation_id") or template.correlation_id,
        )
        problems.extend(p.message for p in validate(message))
        if message.token is not None:
            first = token_lines.setdefault(message.token, line)
            if first != line:
                problems.append(f"flow token {message.token!r} is also on line {first}")
        rows.append(CsvRow(line, message, tuple(problems)))
    return rows
