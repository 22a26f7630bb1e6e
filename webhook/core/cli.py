"""`flask ...` commands. Each group lives with its feature; this module registers them.

The feature modules are imported the first time a group's commands are looked up (a
`flask` command runs, or its help is shown), not when the app is created: a gunicorn
worker never runs a command, and they import what only commands need (httpx,
tenacity, the replay and report code: about 4 MB per worker).
"""

from __future__ import annotations

import importlib

import click
from flask import Flask
from flask.cli import AppGroup


class CommandGroup(AppGroup):
    """A group whose commands are all attached (COMMAND_MODULES imported) before look-up."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        load_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_commands()
        return super().list_commands(ctx)


db = CommandGroup("db", help="Database schema migrations (Alembic).")
# Feature groups: each feature module attaches its commands with @<group>.command()
# and is listed in COMMAND_MODULES so that load_commands() imports it.
events = CommandGroup("events", help="Stored callbacks: replay, import, export, retention.")
report = CommandGroup("report", help="Reports on flows: funnel, completions, failures, timeline.")
flows = CommandGroup("flows", help="WhatsApp Flows: send messages, manage endpoint keys.")
contacts = CommandGroup("contacts", help="Personal data: erase one person's data.")


COMMAND_GROUPS: list[click.Group] = [db, events, report, flows, contacts]
# Modules whose import attaches commands to the groups above (one line per feature).
COMMAND_MODULES: list[str] = [
    "webhook.db.cli",
    "webhook.projection.cli",
    "webhook.replay.cli",
    "webhook.replay.forward_cli",
    "webhook.reports.cli",
    "webhook.privacy.cli",
    "webhook.flows.send_cli",
    "webhook.flows.keys_cli",
]


def load_commands() -> None:
    """Import the feature modules, which attach their commands to the groups above."""
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def register(app: Flask) -> None:
    """Add the groups to ``flask``; their commands are attached when first looked up."""
    for group in COMMAND_GROUPS:
        app.cli.add_command(group)
