"""WSGI entry point for gunicorn and `flask` (found automatically from the repo root)."""

from webhook import create_app

app = create_app()
