"""The `flowhooks` command: every `flask` command of this service, from any directory.

Installed by `make run` and `make test` (`pip install -e .`, console script in
pyproject.toml). `flowhooks db upgrade`, `flowhooks report funnel`, `flowhooks events
simulate ...`: the same commands as `flask`, without needing `FLASK_APP` or the
repository as the current directory.
"""

from __future__ import annotations

from flask import Flask
from flask.cli import FlaskGroup


def _make_app() -> Flask:
    from webhook import create_app
    from webhook.core.envvars import exit_on_config_error

    with exit_on_config_error():
        return create_app()


def main() -> None:
    cli = FlaskGroup(
        create_app=_make_app,
        load_dotenv=False,
        help="Sinch Conversation API callbacks for WhatsApp Flows: schema, events, "
        "reports, flows, contacts.",
    )
    cli.main(prog_name="flowhooks")
