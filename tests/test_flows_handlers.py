"""The handler interface: routing, result shapes, loading from FLOWS_HANDLER."""

from __future__ import annotations

import pytest

from webhook.flows import example_booking
from webhook.flows.handlers import (
    Complete,
    ErrorMessage,
    FlowRequest,
    FlowRouter,
    HandlerConfigError,
    HandlerError,
    InvalidToken,
    NextScreen,
    Result,
    load_handler,
    response_payload,
)

TOKEN = "tok-1"


def req(action: str, screen: str | None = None, **data: object) -> FlowRequest:
    return FlowRequest(action, screen, data, TOKEN, "3.0")


def test_router_prefers_screen_then_action_then_fallback() -> None:
    flow = FlowRouter()

    @flow.screen("DETAILS")
    def details(r: FlowRequest) -> Result:
        return NextScreen("FROM_DETAILS")

    @flow.on("data_exchange")
    def any_screen(r: FlowRequest) -> Result:
        return NextScreen("ANY")

    @flow.init
    def opened(r: FlowRequest) -> Result:
        return NextScreen("START")

    assert flow(req("data_exchange", "DETAILS")) == NextScreen("FROM_DETAILS")
    assert flow(req("data_exchange", "OTHER")) == NextScreen("ANY")
    assert flow(req("INIT", "")) == NextScreen("START")
    with pytest.raises(HandlerError, match="no handler for action 'BACK'"):
        flow(req("BACK", "DETAILS"))

    @flow.fallback
    def rest(r: FlowRequest) -> Result:
        return ErrorMessage("later")

    assert flow(req("BACK", "DETAILS")) == ErrorMessage("later")


def test_router_refuses_a_second_handler_for_the_same_route() -> None:
    flow = FlowRouter()
    flow.back(lambda r: NextScreen("A"))
    with pytest.raises(ValueError, match="exists"):
        flow.back(lambda r: NextScreen("B"))


def test_next_screen_payload() -> None:
    payload = response_payload(NextScreen("DETAILS", {"a": 1}), req("INIT"))
    assert payload == {"screen": "DETAILS", "data": {"a": 1}}
    assert response_payload(NextScreen("X"), req("INIT")) == {"screen": "X", "data": {}}


def test_error_message_stays_on_the_requesting_screen() -> None:
    payload = response_payload(ErrorMessage("bad", {"name": "Ana"}), req("data_exchange", "S"))
    assert payload == {"screen": "S", "data": {"name": "Ana", "error_message": "bad"}}
    assert list(payload["data"]) == ["name", "error_message"]
    other = response_payload(ErrorMessage("bad", screen="T"), req("data_exchange", "S"))
    assert other["screen"] == "T"
    with pytest.raises(HandlerError, match="needs a screen"):
        response_payload(ErrorMessage("bad"), req("BACK"))


def test_complete_puts_the_flow_token_first_and_keeps_it() -> None:
    payload = response_payload(Complete({"flow_token": "forged", "id": 7}), req("data_exchange"))
    assert payload == {
        "screen": "SUCCESS",
        "data": {"extension_message_response": {"params": {"flow_token": TOKEN, "id": 7}}},
    }


def test_anything_else_is_a_handler_error() -> None:
    with pytest.raises(HandlerError, match="returned dict"):
        response_payload({"screen": "X"}, req("INIT"))  # type: ignore[arg-type]
    with pytest.raises(HandlerError, match="returned InvalidToken"):
        response_payload(InvalidToken("gone"), req("INIT"))


def test_load_handler_object_and_factory() -> None:
    assert load_handler("webhook.flows.example_booking:handler") is example_booking.handler
    made = load_handler("webhook.flows.example_booking:make_handler()")
    assert isinstance(made, FlowRouter)
    assert made is not example_booking.handler


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("webhook.flows.example_booking", "expected 'module:object'"),
        ("no_such_module_here:handler", "cannot import"),
        ("webhook.flows.example_booking:nope", "has no attribute"),
        ("webhook.flows.example_booking:SLOTS", "is not callable"),
        ("webhook.flows.example_booking:EMAIL.match()", "failed"),
    ],
)
def test_load_handler_errors(spec: str, message: str) -> None:
    with pytest.raises(HandlerConfigError, match=message):
        load_handler(spec)


def test_example_booking_walks_through_a_booking() -> None:
    flow = example_booking.make_handler()
    opened = flow(req("INIT"))
    assert isinstance(opened, NextScreen)
    assert opened.screen == "APPOINTMENT"
    assert len(opened.data["slots"]) == 2
    assert flow(req("data_exchange", "APPOINTMENT", slot="nope")) == ErrorMessage(
        "Please pick a time.", opened.data
    )
    slot = opened.data["slots"][0]["id"]
    assert flow(req("data_exchange", "APPOINTMENT", slot=slot)) == NextScreen(
        "DETAILS", {"slot": slot}
    )
    bad = flow(req("data_exchange", "DETAILS", name="Ana", email="ana@"))
    assert isinstance(bad, ErrorMessage)
    assert bad.data == {"name": "Ana"}
    good = flow(req("data_exchange", "DETAILS", slot=slot, name=" Ana ", email="a@b.co"))
    assert good == NextScreen("SUMMARY", {"slot": slot, "name": "Ana", "email": "a@b.co"})
    summary = {"slot": slot, "name": "Ana", "email": "a@b.co"}
    no_terms = flow(req("data_exchange", "SUMMARY", **summary, terms=False))
    assert isinstance(no_terms, ErrorMessage)
    assert flow(req("data_exchange", "SUMMARY", **summary, terms=True)) == Complete(
        {"booking_id": "BK-1042"}
    )
    assert flow(req("data_exchange", "SUMMARY", **summary, terms=True)) == InvalidToken(
        "This booking was already completed."
    )
    back = flow(req("BACK", "DETAILS"))
    assert isinstance(back, NextScreen)
    assert [s["id"] for s in back.data["slots"]] == ["2024-01-01T11:30"]


def test_example_booking_offers_the_slot_again_when_it_was_just_taken() -> None:
    flow = example_booking.make_handler()
    data = {"slot": "2024-01-01T10:30", "name": "A", "email": "a@b.co", "terms": True}
    assert isinstance(flow(req("data_exchange", "SUMMARY", **data)), Complete)
    other = FlowRequest("data_exchange", "SUMMARY", data, "tok-2")
    again = flow(other)
    assert isinstance(again, NextScreen)
    assert again.screen == "APPOINTMENT"
    assert again.data["greeting"] == "Sorry, that time was just taken"
