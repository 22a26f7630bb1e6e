"""Export stored callbacks as JSON Lines, and import saved callbacks through ingest.

Export writes one object per event: ``id``, ``received_at``, ``trigger``, ``status``,
``error``, ``headers``, ``body_sha256`` and the body, byte-exact: ``body`` holds it as
text when it is valid UTF-8 (every real callback), ``body_base64`` otherwise.

Import reads a JSON Lines file, where each line is either a callback body itself or an
object with ``body`` (the exact body as a string, or a JSON object, which is then
serialised compactly) or ``body_base64``, plus optional ``headers`` and
``received_at``; or a folder whose ``*.json`` files are each one item of the same
kinds. Every item is appended by webhook.ingest.append, the code path of the HTTP
endpoint: same dedupe (an item already stored is a duplicate), same projections.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson
from sqlalchemy import Engine, func, select

from webhook.core.timeparse import ParseError, parse_time
from webhook.db.events import EVENTS, EventFilter, count_selection
from webhook.ingest.append import DUPLICATE, append
from webhook.ingest.body import InvalidBody, JSONError, load_body, loads_json
from webhook.projection.ingest import project_ids

EXPORT_COLUMNS = ("id", "received_at", "trigger", "status", "error", "headers", "body_sha256")


def timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a Z: what import reads back exactly."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- export


@dataclass
class ExportReport:
    written: int = 0
    pruned: int = 0  # selected but without a body: not written


def export(
    engine: Engine,
    selected: EventFilter,
    out: IO[bytes],
    *,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write the selected events that still have a body to ``out``, in id order."""
    where = selected.clause()
    report = ExportReport()
    c = EVENTS.c
    with engine.connect() as conn:
        conn.execution_options(sqlite_begin="DEFERRED")
        selection = count_selection(conn, where)
        report.pruned = selection.pruned
        after = 0
        while True:
            rows = conn.execute(
                select(*(c[name] for name in EXPORT_COLUMNS), c.body)
                .where(where, c.id > after, c.id <= selection.max_id, c.body.is_not(None))
                .order_by(c.id)
                .limit(batch_size)
            ).all()
            if not rows:
                break
            for row in rows:
                out.write(orjson.dumps(export_item(row._mapping)) + b"\n")
            report.written += len(rows)
            after = rows[-1].id
            if progress:
                progress(len(rows))
    return report


def export_item(row: Any) -> dict[str, Any]:
    item = {name: row[name] for name in EXPORT_COLUMNS}
    item["received_at"] = timestamp(row["received_at"])
    body = bytes(row["body"])
    try:
        item["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        item["body_base64"] = base64.b64encode(body).decode("ascii")
    return item


# ---------------------------------------------------------------- import


class BadItem(ValueError):
    """A line or file that cannot be imported; the message says why."""


@dataclass(frozen=True)
class Item:
    body: bytes
    payload: dict[str, Any]
    headers: dict[str, str]
    received_at: datetime | None


@dataclass
class ImportReport:
    items: int = 0
    stored: int = 0
    duplicates: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)


def read_item(raw: bytes) -> Item:
    """One saved callback: a bare body, or an object wrapping one."""
    try:
        doc = loads_json(raw)
    except JSONError as err:
        raise BadItem(f"not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise BadItem("not a JSON object")
    if "body" not in doc and "body_base64" not in doc:
        return Item(raw, doc, {}, None)
    if doc.get("body_base64") is not None:
        try:
            body = base64.b64decode(doc["body_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise BadItem("body_base64 is not valid base64") from None
    elif isinstance(doc.get("body"), str):
        body = doc["body"].encode("utf-8")
    elif isinstance(doc.get("body"), dict):
        body = json.dumps(doc["body"], separators=(",", ":"), ensure_ascii=False).encode()
    else:
        raise BadItem("body must be a string (the exact body) or a JSON object")
    headers = doc.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise BadItem("headers must be an object of strings")
    try:
        received_at = parse_time(doc.get("received_at"), "received_at")
    except ParseError as err:
        raise BadItem(str(err)) from None
    try:
        payload = load_body(body)
    except InvalidBody as err:
        raise BadItem(str(err)) from None
    return Item(body, payload, {k.lower(): v for k, v in headers.items()}, received_at)


# The longest line (or file) import reads: a 1 MiB body as base64 in its wrapper, with
# room to spare. Anything longer is reported and skipped, never read whole into memory.
MAX_ITEM_BYTES = 4 * 1024 * 1024


class Unreadable(NamedTuple):
    """An item that could not be read at all (too long, a file that cannot be opened)."""

    why: str


def read_source(path: Path, limit: int | None = None) -> Iterator[tuple[str, bytes | Unreadable]]:
    """(where, raw item) for each non-blank line of a file, or each .json file of a folder.

    Every item is read on its own: one that cannot be read is yielded as Unreadable
    (by line number or file name), and the others still load.
    """
    limit = limit or MAX_ITEM_BYTES
    if path.is_dir():
        for file in sorted(path.glob("*.json")):
            try:
                if not file.is_file():
                    yield file.name, Unreadable("cannot read: not a regular file")
                    continue
                if file.stat().st_size > limit:
                    yield file.name, Unreadable(f"longer than {limit:,} bytes")
                    continue
                yield file.name, file.read_bytes()
            except OSError as err:
                yield file.name, Unreadable(f"cannot read: {err.strerror or err}")
        return
    with path.open("rb") as lines:
        number = 0
        while True:
            line = lines.readline(limit + 1)
            if not line:
                return
            number += 1
            if len(line) > limit and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # skip the rest of it
                    line = lines.readline(limit + 1)
                yield f"line {number}", Unreadable(f"longer than {limit:,} bytes")
                continue
            raw = line.rstrip(b"\r\n")
            if raw.strip():
                yield f"line {number}", raw


def count_items(path: Path) -> int:
    """About how many items ``path`` holds (lines), for a progress bar: read in blocks."""
    if path.is_dir():
        return sum(1 for _ in path.glob("*.json"))
    lines = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
    return lines


def import_path(
    engine: Engine, path: Path, progress: Callable[[int], None] | None = None
) -> ImportReport:
    """Ingest every readable item of ``path``; report and skip the others.

    Each item is committed on its own, as a callback over HTTP would be: an import
    stopped half-way (StorageUnavailable) can simply be run again.
    """
    report = ImportReport()
    stored: list[int] = []
    for where, raw in read_source(path):
        report.items += 1
        if isinstance(raw, Unreadable):
            report.skipped.append((where, raw.why))
            if progress:
                progress(1)
            continue
        try:
            item = read_item(raw)
        except BadItem as err:
            report.skipped.append((where, str(err)))
        else:
            result = append(engine, item.body, item.payload, item.headers, item.received_at)
            if result.outcome == DUPLICATE or result.event_id is None:
                report.duplicates += 1
            else:
                report.stored += 1
                stored.append(result.event_id)
        if len(stored) >= IMPORT_BATCH:
            _project(engine, stored, report)
        if progress:
            progress(1)
    _project(engine, stored, report)
    return report


IMPORT_BATCH = 500


def _project(engine: Engine, ids: list[int], report: ImportReport) -> None:
    """Project the events just stored (unless a running projector got there first) and
    count them by the status they ended in."""
    if not ids:
        return
    project_ids(engine, ids)
    c = EVENTS.c
    with engine.connect() as conn:
        query = select(c.status, func.count()).where(c.id.in_(ids)).group_by(c.status)
        for status, n in conn.execute(query):
            report.statuses[status] += n
    ids.clear()
