"""WSGI entry point for gunicorn and `flask` (found automatically from the repo root).

A setting that is not usable stops the process with one line per problem (exit status
1), not a traceback; LOG_LEVEL=DEBUG shows the traceback too.
"""

from webhook import create_app
from webhook.core.envvars import exit_on_config_error

with exit_on_config_error():
    app = create_app()
