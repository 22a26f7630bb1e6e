"""Example Flows handler: book an appointment (INIT, data_exchange, BACK, completion).

Screens: APPOINTMENT (pick a time) -> DETAILS (name, e-mail) -> SUMMARY (confirm) ->
SUCCESS. Serve it with FLOWS_HANDLER=webhook.flows.example_booking:handler. The
calendar lives in process memory to keep the example short; a real handler asks your
booking system, so every worker sees the same free slots.
"""

from __future__ import annotations

import itertools
import re
import threading
from typing import Any

from webhook.flows.handlers import (
    Complete,
    ErrorMessage,
    FlowRequest,
    FlowRouter,
    InvalidToken,
    NextScreen,
    Result,
)

SLOTS = {"2024-01-01T10:30": "Mon 10:30", "2024-01-01T11:30": "Mon 11:30"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def make_handler() -> FlowRouter:
    """A booking flow with its own (empty) calendar."""
    flow = FlowRouter()
    taken: dict[str, str] = {}  # slot id -> flow token that booked it
    bookings: dict[str, str] = {}  # flow token -> booking id
    numbers = itertools.count(1042)
    lock = threading.Lock()

    def appointment(greeting: str) -> NextScreen:
        free = [{"id": slot, "title": title} for slot, title in SLOTS.items() if slot not in taken]
        return NextScreen("APPOINTMENT", {"greeting": greeting, "slots": free})

    @flow.init
    def opened(req: FlowRequest) -> Result:
        return appointment("Hello")

    @flow.back
    def back(req: FlowRequest) -> Result:  # refresh_on_back: show what is still free
        return appointment("Welcome back")

    @flow.screen("APPOINTMENT")
    def picked(req: FlowRequest) -> Result:
        if req.data.get("slot") not in SLOTS:
            return ErrorMessage("Please pick a time.", appointment("Hello").data)
        return NextScreen("DETAILS", {"slot": req.data["slot"]})

    @flow.screen("DETAILS")
    def details(req: FlowRequest) -> Result:
        name, email = str(req.data.get("name", "")), str(req.data.get("email", ""))
        if not EMAIL.match(email):
            message = "Please enter a valid e-mail address (ñ, é and 🙂 are fine)."
            return ErrorMessage(message, {"name": name})  # keep what was typed
        summary: dict[str, Any] = {**req.data, "name": name.strip(), "email": email.strip()}
        return NextScreen("SUMMARY", summary)

    @flow.screen("SUMMARY")
    def confirmed(req: FlowRequest) -> Result:
        token, slot = req.flow_token or "", str(req.data.get("slot", ""))
        if token in bookings:
            return InvalidToken("This booking was already completed.")
        if req.data.get("terms") is not True:
            return ErrorMessage("Please accept the terms to book.")
        with lock:  # gthread workers run handlers concurrently
            if slot not in SLOTS or slot in taken:
                return appointment("Sorry, that time was just taken")
            taken[slot], bookings[token] = token, f"BK-{next(numbers)}"
        return Complete({"booking_id": bookings[token]})

    return flow


handler = make_handler()
