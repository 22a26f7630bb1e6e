"""A bad setting stops every entry point with one line per problem and exit status 1:
gunicorn's master (before any worker boots), `flask`, `flowhooks`. No traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
BAD = {"MAX_CONTENT_LENGTH": "1MB", "LOG_LEVEL": "verbose", "DATABASE_URL": "mysql://u@h/db"}


def run(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "BIND": "127.0.0.1:0", **env},
    )  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "--no-control-socket", "wsgi:app"],
        [str(BIN / "flask"), "--app", "wsgi", "report", "funnel"],
    ],
    ids=["gunicorn", "flask"],
)
def test_bad_settings_are_one_line_each_and_exit_1(command: list[str]) -> None:
    result = run(*command, **BAD)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "HaltServer" not in output
    starts = ("Error:", "MAX_CONTENT", "LOG_LEVEL", "DATABASE_URL")
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith(starts)]
    assert any("MAX_CONTENT_LENGTH: must be a whole number of bytes" in e for e in errors)
    assert any("LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR; got 'VERBOSE'" in e
               for e in errors)  # fmt: skip
    assert any("supported: sqlite, postgresql, postgres" in e for e in errors)


def test_debug_shows_the_traceback_too() -> None:
    result = run(sys.executable, "-c", "import wsgi", MAX_CONTENT_LENGTH="0", LOG_LEVEL="DEBUG")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "Error: MAX_CONTENT_LENGTH: must be a whole number of bytes, 1 or more; got 0" in (
        result.stderr
    )
