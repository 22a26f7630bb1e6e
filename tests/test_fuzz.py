"""Property-based tests: no input makes a parser or the endpoint fail in an unplanned way.

Parsers: every realistic payload (the fixtures, the simulator's bodies, Meta-shaped
raw payloads) with any JSON value put in any field, or fields removed, gives either
well-typed records or the parser's own error (ParseError / InvalidBody / JSONError),
never another exception. The endpoint, on both databases: random bytes, invalid
UTF-8, deep nesting, huge numbers, NaN literals, duplicate keys, lone surrogates,
NULs, missing and malformed signature headers give only 200, 400, 401 or 413, and
every 200 is stored.

Each test counts the cases it tried and prints the count (run with ``-s``); set
FUZZ_EXAMPLES to try more (docs/reliability.md has the counts of a long run).
"""

from __future__ import annotations

import json
import os
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import datetime
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from tests.helpers import FIXTURES, SECRET, project, rows, sign
from webhook.core.timeparse import ParseError, parse_time
from webhook.db.models import CallbackEvent
from webhook.ingest.append import body_digest
from webhook.ingest.body import InvalidBody, JSONError, load_body, loads_json
from webhook.ingest.flow_reply import parse_flow_reply
from webhook.ingest.parsers import PARSERS, TRIGGER_KEYS, parse_callback, parse_envelope
from webhook.ingest.records import ParsedCallback
from webhook.replay.simulate import SimulationConfig, simulate

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ENDPOINT_FUZZ = settings(FUZZ, max_examples=max(EXAMPLES // 2, 50))


def report(request: pytest.FixtureRequest, cases: int, detail: object = "") -> None:
    request.node.user_properties.append(("fuzz_cases", cases))
    print(f"\nFUZZ {request.node.name}: {cases} cases {detail}")


# ---------------------------------------------------------------- JSON values

# Timestamp-shaped text, including impossible dates and offsets.
TIMESTAMPS = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}([.,][0-9]{1,9})?"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2})?\Z"
)
TEXTS = st.one_of(
    st.text(max_size=12),
    TIMESTAMPS,
    st.sampled_from(["", "flow", "nfm_reply", "WHATSAPP", "FLOWS", "DELIVERED", "READ",
                     "FAILED", "2026-03-10T09:04:30Z", "9999-12-31T23:59:59-23:59",
                     "0001-01-01T00:00:00+01:00", "2026-02-30T00:00:00Z",
                     "2026-03-10T09:04:30.123456789+99:99", "\x00", "\ud83d", "+55 11 9"]),
)  # fmt: skip
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False),  # infinity included: 1e400 in a body parses to it
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(TEXTS, inner, max_size=4),
        inner.map(lambda v: json.dumps(v, allow_nan=True)),  # JSON text inside a string
    ),
    max_leaves=10,
)

# ---------------------------------------------------------------- seed payloads

_META_FLOW = {
    "entry": [{"changes": [{"value": {"messages": [{
        "from": "+55 11 98765-4321", "id": "wamid.FLOW1", "context": {"id": "wamid.MT"},
        "type": "interactive", "interactive": {"type": "nfm_reply", "nfm_reply": {
            "name": "flow", "body": "Sent", "response_json": '{"flow_token":"t-1","a":1}'}},
    }]}}]}]
}  # fmt: skip


PARSED_KEYS = {key for key, trigger in TRIGGER_KEYS.items() if trigger in PARSERS}


def _seeds() -> list[dict[str, Any]]:
    docs = [json.loads(path.read_bytes()) for path in sorted(FIXTURES.glob("*.json"))]
    docs += [json.loads(b) for b in simulate(SimulationConfig(messages=3, seed=5))[1]]
    docs.append({"app_id": "A", "unsupported_callback": {"channel": "WHATSAPP",
                 "payload": json.dumps(_META_FLOW)}})  # fmt: skip
    docs.append({"message": {"id": "m1", "contact_message": {"fallback_message": {
        "raw_message": json.dumps(_META_FLOW["entry"][0]["changes"][0]["value"]["messages"][0]),
    }}, "channel_identity": {"channel": "WHATSAPP", "identity": "5511"}}})  # fmt: skip
    return docs


# Payloads with a parser behind them count three times: that is where the code is.
SEEDS = [doc for doc in _seeds() for _ in range(3 if set(doc) & PARSED_KEYS else 1)]
DECODE, DELETE = object(), object()  # path step into a JSON-text string; "remove this key"


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a document, descending into strings that hold JSON."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))
    elif isinstance(value, str) and value[:1] in {"{", "["}:
        try:
            inner = json.loads(value)
        except ValueError:
            return
        yield from paths(inner, (*prefix, DECODE))


def put(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of ``value`` with ``new`` at ``path`` (DELETE removes a key)."""
    if not path:
        return None if new is DELETE else new
    head, rest = path[0], path[1:]
    if head is DECODE:
        return json.dumps(put(json.loads(value), rest, new))
    if isinstance(value, dict):
        copy = dict(value)
        if rest or new is not DELETE:
            copy[head] = put(value.get(head), rest, new)
        else:
            copy.pop(head)
        return copy
    copy_list = list(value)
    copy_list[head] = put(value[head], rest, new)
    return copy_list


@st.composite
def mutated_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A seed payload with one to three fields replaced by any JSON value, or removed."""
    doc: Any = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths(doc))[1:]
        if not places:  # every key was removed
            break
        path = draw(st.sampled_from(places))
        doc = put(doc, path, draw(st.one_of(JSON_VALUES, st.just(DELETE))))
    assert isinstance(doc, dict)
    return doc


def trigger_payloads(key: str) -> st.SearchStrategy[dict[str, Any]]:
    """The trigger key holding any JSON value, with any envelope fields."""
    envelope = st.dictionaries(
        st.sampled_from(["app_id", "project_id", "event_time", "accepted_time",
                         "correlation_id", "message_metadata"]),
        JSON_VALUES, max_size=4,
    )  # fmt: skip
    return st.builds(lambda env, value: {**env, key: value}, envelope, JSON_VALUES)


# ---------------------------------------------------------------- record types


def _allowed(hint: Any) -> tuple[type, ...] | None:
    """The runtime types a record field may hold (None: anything)."""
    if hint is Any:
        return None
    if get_origin(hint) in (Union, types.UnionType):
        found: list[type] = []
        for arg in get_args(hint):
            allowed = _allowed(arg)
            if allowed is None:
                return None
            found.extend(allowed)
        return tuple(found)
    return (type(None),) if hint is type(None) else (hint,)


def check_records(parsed: ParsedCallback, unicode_input: bool = True) -> None:
    """Records hold what their types say: text as str, times as aware UTC datetimes.

    Text must also be storable (valid Unicode) when the input was: load_body makes
    sure of that by replacing lone surrogates.
    """
    assert isinstance(parsed, ParsedCallback)
    for record in parsed.records:
        hints = get_type_hints(type(record))
        for f in fields(record):
            value = getattr(record, f.name)
            allowed = _allowed(hints[f.name])
            if allowed is not None:
                assert isinstance(value, allowed), f"{type(record).__name__}.{f.name}={value!r}"
            if isinstance(value, datetime):
                assert value.utcoffset() is not None and value.utcoffset().total_seconds() == 0
            if isinstance(value, str) and unicode_input:
                value.encode("utf-8")  # storable: no lone surrogates


def parse_or_own_error(payload: dict[str, Any]) -> str:
    parse_envelope(payload)  # never raises
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
        unicode_input = True
    except UnicodeEncodeError:  # a lone surrogate put there by the strategy
        unicode_input = False
    try:
        check_records(parse_callback(payload), unicode_input)
    except ParseError:
        return "ParseError"
    return "parsed"


# ---------------------------------------------------------------- parser properties


def test_parse_callback_with_any_value_in_any_field(request: pytest.FixtureRequest) -> None:
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(mutated_payloads())
    def run(payload: dict[str, Any]) -> None:
        outcomes[parse_or_own_error(payload)] += 1

    run()
    report(request, sum(outcomes.values()), dict(outcomes))
    assert outcomes["parsed"] > 0 and outcomes["ParseError"] > 0


@pytest.mark.parametrize("key", sorted(TRIGGER_KEYS))
def test_parse_callback_with_any_value_under_each_trigger_key(
    request: pytest.FixtureRequest, key: str
) -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=max(EXAMPLES // 8, 20))
    @given(trigger_payloads(key))
    def run(payload: dict[str, Any]) -> None:
        outcomes[parse_or_own_error(payload)] += 1

    run()
    report(request, sum(outcomes.values()), dict(outcomes))
    assert sum(outcomes.values()) > 0


def test_parse_time_gives_a_utc_time_or_parse_error(request: pytest.FixtureRequest) -> None:
    cases = 0

    @FUZZ
    @given(st.one_of(TIMESTAMPS, JSON_VALUES))
    def run(value: Any) -> None:
        nonlocal cases
        cases += 1
        try:
            parsed = parse_time(value)
        except ParseError:
            return
        assert parsed is None or parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]

    run()
    report(request, cases)


def test_parse_flow_reply_never_raises(request: pytest.FixtureRequest) -> None:
    cases = 0

    @FUZZ
    @given(st.one_of(JSON_VALUES, JSON_VALUES.map(json.dumps), st.text()))
    def run(value: Any) -> None:
        nonlocal cases
        cases += 1
        token, _response, raw, error = parse_flow_reply(value)
        assert token is None or isinstance(token, str)
        assert raw is None or isinstance(raw, str)
        if error is None:  # no complaint only for an object with a string flow_token
            assert isinstance(token, str) and token

    run()
    report(request, cases)


# ---------------------------------------------------------------- bodies

# Well below both parsers' limits (orjson 1024 levels; the standard library's depends on
# how deep the caller's stack already is): deeper bodies may be accepted or refused.
DEPTH_LIMIT = 500


def reference_object(body: bytes) -> bool | None:
    """Is ``body`` a JSON object per RFC 8259 (UTF-8)? None if nested too deep to say."""
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return False
    if text.count("[") + text.count("{") > DEPTH_LIMIT:
        return None

    def refuse(_name: str) -> Any:
        raise ValueError("not JSON")

    try:
        value = json.loads(text, parse_constant=refuse, parse_int=lambda _s: 0)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict)


def _json_text(doc: Any) -> str:
    """JSON text with non-ASCII as UTF-8 (escaped only where UTF-8 cannot hold it)."""
    text = json.dumps(doc, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only its escape is valid JSON
        return json.dumps(doc)
    return text


@st.composite
def odd_bodies(draw: st.DrawFn) -> bytes:
    """Bodies a careless or hostile sender might produce."""
    doc = draw(mutated_payloads())
    text = _json_text(doc)
    kind = draw(st.sampled_from(["mutated", "bytes", "invalid_utf8", "deep", "huge_number",
                                 "constant", "duplicate_key", "escape", "top_level", "bom",
                                 "truncated"]))  # fmt: skip
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "invalid_utf8":
        raw = text.encode()
        at = draw(st.integers(0, len(raw)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"]))
        return raw[:at] + bad + raw[at:]
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (text[:-1] + ', "deep": ' + opener * depth + "1" + closer * depth + "}").encode()
    if kind == "huge_number":
        number = draw(
            st.sampled_from(
                [
                    "1" * 25,
                    "-" + "9" * 20,
                    "1" * 5000,
                    "1e400",
                    "-1e400",
                    "1E-400",
                    "18446744073709551616",
                    "-0",
                    "0.1e99999",
                ]
            )
        )
        path = draw(st.sampled_from(list(paths(doc))[1:] or [("n",)]))
        return _json_text(put(doc, path, "@@N@@")).replace('"@@N@@"', number).encode()
    if kind == "constant":
        constant = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "undefined"]))
        return (text[:-1] + ', "x": ' + constant + "}").encode()
    if kind == "duplicate_key":
        key = draw(st.sampled_from(sorted(doc) or ["x"]))
        return (text[:-1] + f", {json.dumps(key)}: " + _json_text(draw(JSON_VALUES)) + "}").encode()
    if kind == "escape":
        escape = draw(st.sampled_from(["\\u0000", "\\ud800", "\\udfff", "\\ud83d\\ude00"]))
        key = draw(st.sampled_from(["app_id", "correlation_id", "project_id", "x"]))
        return (text[:-1] + f', "{key}": "a{escape}b"}}').encode()
    if kind == "top_level":
        return _json_text(draw(JSON_VALUES)).encode()
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if kind == "truncated":
        raw = text.encode()
        return raw[: draw(st.integers(0, len(raw)))]
    return text.encode()


def test_load_body_gives_an_object_or_invalid_body(request: pytest.FixtureRequest) -> None:
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(odd_bodies())
    def run(body: bytes) -> None:
        expected = reference_object(body)
        try:
            payload = load_body(body)
        except InvalidBody:
            assert expected is not True, "valid JSON object refused"
            outcomes["InvalidBody"] += 1
            return
        assert expected is not False, "accepted what is not a JSON object"
        assert isinstance(payload, dict)
        outcomes["object"] += 1

    run()
    report(request, sum(outcomes.values()), dict(outcomes))
    assert outcomes["object"] > 0 and outcomes["InvalidBody"] > 0


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"n": 18446744073709551616}', 18446744073709551616),
        (b'{"n": -9223372036854775809}', -9223372036854775809),
        (b'{"n": 123456789012345678901234567890}', 123456789012345678901234567890),
        (b'{"n": 1e400}', float("inf")),
        (b'{"n": "cut \\ud83d"}', "cut \ufffd"),
        (b'\xef\xbb\xbf{"n": 1}', 1),
        (b'{"n": 9007199254740993}', 9007199254740993),
    ],
)
def test_valid_json_orjson_alone_would_refuse_or_round(body: bytes, value: Any) -> None:
    assert load_body(body) == {"n": value}


@pytest.mark.parametrize(
    "body", [b'{"n": NaN}', b'{"n": Infinity}', b"\xff{}", b'{"n": "\x01"}', b"{} {}", b"[" * 2000]
)
def test_what_json_forbids_is_still_refused(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        load_body(body)
    with pytest.raises(JSONError):
        loads_json(body)


def test_huge_integer_id_is_projected_exactly(client: Any, engine: Engine) -> None:
    body = b'{"message_delivery_report": {"message_id": 123456789012345678901234567890, "status": "READ", "channel_identity": {"channel": "WHATSAPP", "identity": "1"}}}'  # noqa: E501
    response = client.post("/sinch/callbacks", data=body, headers=sign(body))
    assert response.status_code == 200
    project(engine)
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT message_id FROM delivery_reports")).scalars().all()
    assert ids == ["123456789012345678901234567890"]


# ---------------------------------------------------------------- the endpoint


def _header_text() -> st.SearchStrategy[str]:
    # What an HTTP header can carry: no CR/LF, latin-1.
    return st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


@st.composite
def signed_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str], bool]:
    """(body, headers, whether the signature is authentic)."""
    body = draw(odd_bodies())
    headers = sign(body)
    how = draw(st.sampled_from(["valid"] * 6 + ["missing", "drop_one", "garbled", "wrong_secret",
                                                "algorithm"]))  # fmt: skip
    if how == "missing":
        return body, {}, False
    if how == "drop_one":
        headers.pop(draw(st.sampled_from(sorted(headers))))
        authentic = "x-sinch-webhook-signature-algorithm" not in headers
        return body, headers, authentic
    if how == "garbled":
        name = draw(st.sampled_from(sorted(headers)))
        new = draw(_header_text())
        authentic = new == headers[name] or (
            name.endswith("algorithm") and new.strip().lower() == "hmacsha256"
        )
        headers[name] = new
        return body, headers, authentic
    if how == "wrong_secret":
        return body, sign(body, secret="not-the-secret"), False
    if how == "algorithm":
        headers["x-sinch-webhook-signature-algorithm"] = draw(
            st.sampled_from(["HmacSHA1", "", "hmacsha256 ", "HMACSHA256", "sha256"])
        )
        algorithm = headers["x-sinch-webhook-signature-algorithm"].strip().lower()
        return body, headers, algorithm == "hmacsha256"
    return body, headers, True


@pytest.fixture
def fuzz_app(make_app: Callable[..., Flask]) -> Flask:
    # A small body limit, so the fuzzer also meets 413.
    return make_app(sinch_webhook_secrets=(SECRET,), max_content_length=4096)


def test_endpoint_answers_only_200_400_401_413_and_stores_every_200(
    fuzz_app: Flask, engine: Engine, request: pytest.FixtureRequest
) -> None:
    client = fuzz_app.test_client()
    answers: Counter[int] = Counter()

    @ENDPOINT_FUZZ
    @given(signed_requests())
    def run(case: tuple[bytes, dict[str, str], bool]) -> None:
        body, headers, authentic = case
        response = client.post("/sinch/callbacks", data=body, headers=headers)
        status = response.status_code
        answers[status] += 1
        assert status in {200, 400, 401, 413}, response.get_data(as_text=True)
        if status != 200:
            assert set(response.get_json()) == {"error", "message"}
        with engine.connect() as conn:
            stored = conn.execute(
                select(CallbackEvent.id).where(CallbackEvent.body_sha256 == body_digest(body))
            ).first()
        if status == 200:
            assert stored is not None, "answered 200 but not stored"
        if len(body) > 4096:
            assert status == 413
            return
        if not authentic:
            assert status == 401
            return
        expected = reference_object(body)
        if expected is True:
            assert status == 200, response.get_json()
        elif expected is False:
            assert status == 400

    run()
    report(request, sum(answers.values()), dict(answers))
    assert answers[200] > 0 and answers[400] > 0 and answers[401] > 0


def test_nul_in_envelope_field_is_stored_not_refused(client: Any, engine: Engine) -> None:
    # PostgreSQL text cannot hold NUL: the event is kept failed and bare (no envelope fields).
    body = b'{"app_id": "a\\u0000b", "message_delivery_report": {"message_id": "m1", "status": "READ", "channel_identity": {"channel": "WHATSAPP", "identity": "1"}}}'  # noqa: E501
    response = client.post("/sinch/callbacks", data=body, headers=sign(body))
    assert response.status_code == 200
    project(engine)
    [event] = rows(engine, "callback_events")
    assert bytes(event["body"]) == body
    if engine.dialect.name == "postgresql":
        assert event["status"] == "failed"
        assert event["error"].startswith("projection failed: DataError")
        assert event["app_id"] is None and event["headers"] is not None
        assert event["trigger"] == "MESSAGE_DELIVERY"
    else:
        assert event["status"] == "processed"
        assert event["app_id"] == "a\x00b"


def test_lone_surrogate_text_is_stored_and_projected(client: Any, engine: Engine) -> None:
    body = b'{"message": {"id": "m1", "contact_message": {"text_message": {"text": "hi \\ud83d"}}}}'
    response = client.post("/sinch/callbacks", data=body, headers=sign(body))
    assert response.status_code == 200
    project(engine)
    [inbound] = rows(engine, "inbound_messages")
    assert inbound["text"] == "hi \ufffd"
