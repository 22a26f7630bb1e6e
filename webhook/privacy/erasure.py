"""Erasure: `flask contacts erase --identity NUMBER | --contact-id ID`.

Finds one person's rows in every table, by identity (phone number, normalised as
stored) and contact id, following the links the data shows (a number to the contact
ids it was seen with, and back), then:

- replaces their identities and contact ids with a keyed pseudonym (see redact.py),
  so rows of the same person still group together and counts do not move;
- removes what they wrote or what describes them: message texts, postback data,
  media links, metadata, flow answers (field names and flow_token stay), the data
  they submitted to the flows endpoint;
- rewrites the raw callback bodies that mention them, keeping only structural
  fields; ``body_sha256`` stays, so a late retry is still a duplicate (the stored
  signature no longer matches the body, which is expected);
- records the erasure in ``erasures`` (when, which kind of key, its keyed hash and
  rows changed per table; never the data).

Statuses, message ids, flow ids and tokens, times and counts are kept, so funnels
and dedupe answer the same afterwards. Running it again changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    LargeBinary,
    Table,
    Text,
    cast,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)

from webhook.db.models import (
    Base,
    CallbackEvent,
    Erasure,
    FlowExchange,
)
from webhook.ingest.body import JSONError, loads_json
from webhook.privacy.redact import (
    CONTACT,
    IDENTITY,
    Redactor,
    keyed_hash,
    normalize_number,
    redact_answers,
)
from webhook.projection.rules import PROJECTIONS, Projection

log = logging.getLogger(__name__)

IDENTITY_KIND, CONTACT_KIND = "identity", "contact_id"
# A number seen with more contacts than this is not one person (a test number, a bug).
MAX_KEYS = 100
CHUNK = 500


class ErasureError(Exception):
    """The erasure cannot be done as asked."""


@dataclass
class Person:
    identities: set[str] = field(default_factory=set)
    contact_ids: set[str] = field(default_factory=set)


def _t(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


# Tables that carry both keys, used to follow identity <-> contact id links.
LINKED: tuple[Table, ...] = tuple(
    Base.metadata.tables[p.table]
    for p in PROJECTIONS
    if {"identity", "contact_id"} <= set(p.personal.keys)
)


def find_person(conn: Connection, identity: str | None, contact_id: str | None) -> Person:
    """Every identity and contact id linked to the given one in the data."""
    person = Person({identity} if identity else set(), {contact_id} if contact_id else set())
    while True:
        identities, contact_ids = set(person.identities), set(person.contact_ids)
        for t in LINKED:
            found = conn.execute(
                select(t.c.identity, t.c.contact_id)
                .where(or_(t.c.identity.in_(identities), t.c.contact_id.in_(contact_ids)))
                .distinct()
            ).all()
            for ident, contact in found:
                if ident:
                    identities.add(ident)
                if contact:
                    contact_ids.add(contact)
        if (identities, contact_ids) == (person.identities, person.contact_ids):
            return person
        person = Person(identities, contact_ids)
        if len(identities) + len(contact_ids) > MAX_KEYS:
            raise ErasureError(
                f"this key links to more than {MAX_KEYS} identities and contact ids; "
                "refusing to erase them all (check the data)"
            )


# ---------------------------------------------------------------- projections

Rewrite = Callable[[Any, Redactor], Any]


@dataclass(frozen=True)
class Rule:
    """How to erase a person from one table."""

    table: Table
    pk: str
    keys: tuple[str, ...]  # identity / contact id / id columns: pseudonymised when they match
    clear: tuple[str, ...] = ()  # personal content: removed
    scrub: tuple[str, ...] = ()  # free text that may quote a key: the key is replaced
    rewrite: tuple[tuple[str, Rewrite], ...] = ()  # JSON columns, rewritten per value


def _document(value: Any, r: Redactor) -> Any:
    return r.document(value)[0] if value is not None else None


def _answers(value: Any, r: Redactor) -> Any:
    return redact_answers(value) if value is not None else None


def _rule(p: Projection) -> Rule:
    t = Base.metadata.tables[p.table]
    rewrite = tuple((c, _answers) for c in p.personal.answers) + tuple(
        (c, _document) for c in p.personal.document
    )
    return Rule(t, t.primary_key.columns.values()[0].name, p.personal.keys,
                p.personal.clear, p.personal.scrub, rewrite)  # fmt: skip


# One rule per projection table, from the projection registry (webhook.projection.rules).
RULES: tuple[Rule, ...] = tuple(_rule(p) for p in PROJECTIONS)


def _match(t: Table, person: Person) -> ColumnElement[bool]:
    clauses = [t.c.contact_id.in_(person.contact_ids)]
    if "identity" in t.c:
        clauses.append(t.c.identity.in_(person.identities))
    return or_(*clauses)


def _new_values(rule: Rule, row: Any, r: Redactor) -> dict[str, Any]:
    """The columns of ``row`` that erasure changes, with their new values."""
    m = row._mapping
    new: dict[str, Any] = {c: r.replace(m[c]) for c in rule.keys}
    new.update({c: None for c in rule.clear})
    new.update({c: r.scrub(m[c]) for c in rule.scrub})
    new.update({c: fn(m[c], r) for c, fn in rule.rewrite})
    return {c: v for c, v in new.items() if v != m[c]}


def _set(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    # None in a JSON column must become SQL NULL, not the JSON literal null.
    json_cols = {c.name for c in table.c if isinstance(c.type, JSON)}
    return {c: (null() if v is None and c in json_cols else v) for c, v in values.items()}


def erase_projections(
    conn: Connection, person: Person, r: Redactor
) -> tuple[dict[str, int], set[int], set[str]]:
    """Erase the person from every projection table; return (rows changed per table,
    raw event ids they came from, their flow tokens)."""
    counts: dict[str, int] = {}
    events: set[int] = set()
    tokens: set[str] = set()
    for rule in RULES:
        t = rule.table
        changed = 0
        for row in conn.execute(select(t).where(_match(t, person))).all():
            m = row._mapping
            if "source_event_id" in t.c and m["source_event_id"] is not None:
                events.add(m["source_event_id"])
            if "flow_token" in t.c and m["flow_token"]:
                tokens.add(m["flow_token"])
            values = _new_values(rule, row, r)
            if values:
                pk = t.c[rule.pk]
                conn.execute(update(t).where(pk == m[rule.pk]).values(_set(t, values)))
                changed += 1
        counts[str(t.name)] = changed
    counts["flow_exchanges"] = erase_exchanges(conn, tokens, person)
    return counts, events, tokens


def erase_exchanges(conn: Connection, tokens: set[str], person: Person) -> int:
    """Remove the data submitted to the flows endpoint under the person's flow tokens,
    and wherever it quotes one of their numbers or contact ids (a token no send or
    completion links to them)."""
    t = _t(FlowExchange)
    changed = 0
    for chunk in _chunks(sorted(tokens)):
        stmt = update(t).where(t.c.flow_token.in_(chunk), t.c.data.is_not(None)).values(data=null())
        changed += conn.execute(stmt).rowcount or 0
    needles = sorted(person.identities | person.contact_ids)
    if needles:
        text_of = cast(t.c.data, Text)
        quoting = or_(*(func.instr(text_of, n) > 0 if conn.dialect.name == "sqlite"
                        else func.strpos(text_of, n) > 0 for n in needles))  # fmt: skip
        stmt = update(t).where(t.c.data.is_not(None), quoting).values(data=null())
        changed += conn.execute(stmt).rowcount or 0
    return changed


# ---------------------------------------------------------------- raw events


def _body_mentions(conn: Connection, needles: list[str]) -> ColumnElement[bool]:
    """SQL: the raw body contains any of ``needles`` (a byte search: a full scan)."""
    body = _t(CallbackEvent).c.body
    clauses: list[ColumnElement[bool]] = []
    for needle in needles:
        value = literal(needle.encode(), LargeBinary)
        if conn.dialect.name == "postgresql":
            clauses.append(func.position(value.op("IN")(body)) > 0)
        else:
            clauses.append(func.instr(body, value) > 0)
    return or_(*clauses)


def candidate_events(conn: Connection, person: Person, linked: set[int]) -> list[int]:
    """Raw events that may mention the person: linked from their rows, or quoting a key."""
    e = _t(CallbackEvent)
    needles = sorted(person.identities | person.contact_ids)
    found: set[int] = set(linked)
    if needles:
        query = select(e.c.id).where(e.c.body.is_not(None), _body_mentions(conn, needles))
        found.update(conn.execute(query).scalars())
    return sorted(found)


def erase_events(
    conn: Connection, ids: list[int], linked: set[int], r: Redactor, now: datetime
) -> int:
    """Rewrite the raw events that mention the person; return how many changed."""
    e = _t(CallbackEvent)
    changed = 0
    refused: list[str] = []
    for chunk in _chunks(ids):
        query = select(e.c.id, e.c.body, e.c.error, e.c.correlation_id).where(e.c.id.in_(chunk))
        for event_id, body, error, correlation_id in conn.execute(query).all():
            values: dict[str, Any] = {}
            if body is not None:
                try:
                    new_body = _rewrite_body(bytes(body), r, force=event_id in linked)
                except Unredactable as why:
                    refused.append(f"event {event_id} ({why})")
                    continue
                if new_body is not None:
                    values["body"] = new_body
            for name, value in (("error", error), ("correlation_id", correlation_id)):
                scrubbed = r.scrub(value)
                if scrubbed != value:
                    values[name] = scrubbed
            if values:
                values["erased_at"] = now
                conn.execute(update(e).where(e.c.id == event_id).values(values))
                changed += 1
    if refused:  # the caller rolls back: never report success over data left behind
        listed = "; ".join(refused[:20]) + ("; ..." if len(refused) > 20 else "")
        raise ErasureError(f"cannot redact the stored bodies of {listed}: nothing was changed")
    return changed


def _dumps(doc: Any) -> bytes:
    """Compact JSON; the standard library for what orjson cannot write (big integers)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        try:
            return json.dumps(doc, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode()  # fmt: skip
        except ValueError as err:
            raise Unredactable(f"cannot be written back: {err}") from None


class Unredactable(Exception):
    """A stored body mentions the person but could not be redacted."""


def _rewrite_body(body: bytes, r: Redactor, force: bool) -> bytes | None:
    """The redacted body, or None if it does not mention the person (or is unchanged).

    The body is read with the loader ingestion uses (webhook.ingest.body), so every
    body that was stored can be read here. A mention in the raw bytes counts even
    where parsing drops it (a duplicate key, where JSON keeps the last one); the
    rewritten body is checked to mention the person no more. Unredactable otherwise.
    """
    try:
        doc = loads_json(body)
    except JSONError as err:
        if r.mentions_bytes(body):
            raise Unredactable(f"not JSON: {err}") from None
        return None
    new_doc, mentioned = r.document(doc)
    if not (mentioned or force or r.mentions_bytes(body)):
        return None
    new_body = _dumps(new_doc)
    if r.mentions_bytes(new_body):
        raise Unredactable("the rewritten body still mentions the person")
    return new_body if new_body != body else None


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


# ---------------------------------------------------------------- the whole job


@dataclass(frozen=True)
class ErasureResult:
    key_kind: str
    key_hash: str
    identities: int
    contact_ids: int
    rows: dict[str, int]


def erase(
    conn: Connection, key: str, *, identity: str | None = None, contact_id: str | None = None,
    now: datetime | None = None,
) -> ErasureResult:  # fmt: skip
    """Erase one person (by identity or contact id) from every table; never commits."""
    if not key:
        raise ErasureError("ERASURE_KEY is not set")
    if (identity is None) == (contact_id is None):
        raise ErasureError("give exactly one of an identity or a contact id")
    now = now or datetime.now(UTC)
    if identity is not None:
        value, kind, hash_kind = normalize_number(identity), IDENTITY_KIND, IDENTITY
    else:
        value, kind, hash_kind = (contact_id or "").strip(), CONTACT_KIND, CONTACT
    if not value:
        raise ErasureError(f"the {kind} is empty")
    person = find_person(conn, value if kind == IDENTITY_KIND else None,
                         value if kind == CONTACT_KIND else None)  # fmt: skip
    redactor = Redactor(key, person.identities, person.contact_ids)
    rows, linked, _ = erase_projections(conn, person, redactor)
    candidates = candidate_events(conn, person, linked)
    rows["callback_events"] = erase_events(conn, candidates, linked, redactor, now)
    key_hash = keyed_hash(key, hash_kind, value)
    conn.execute(
        insert(Erasure).values(
            requested_at=now, key_kind=kind, key_hash=key_hash, rows_affected=rows
        )
    )
    return ErasureResult(kind, key_hash, len(person.identities), len(person.contact_ids), rows)
