"""The `flowhooks` command (installed by `make run` / `make test`) works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FLOWHOOKS = Path(sys.executable).with_name("flowhooks")


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLOWHOOKS), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "LOG_FORMAT": "text", **env},
    )  # fmt: skip


@pytest.mark.slow
def test_flowhooks_runs_every_command_group_from_another_directory(
    tmp_path: Path, database_url: str
) -> None:
    assert FLOWHOOKS.exists(), "make run / make test install the flowhooks command"
    listing = run("--help", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    for group in ("db", "events", "report", "flows", "contacts"):
        assert f"  {group} " in listing.stdout
    current = run("db", "current", cwd=tmp_path, DATABASE_URL=database_url)
    assert current.returncode == 0, current.stderr
    assert "(latest)" in current.stdout
    assert not (tmp_path / "instance").exists()  # nothing created in the current directory
