"""Alembic, driven from code: used by `flask db`, `/readyz` and the tests.

Serving needs only the head revision (at start-up) and the database's current one
(`/readyz`); both are read here without importing Alembic (about 8.5 MB per worker
with Mako and Pygments). Alembic is imported by the functions that run it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text

from webhook.db.engine import create_sqlite_file, sqlite_file_missing

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
VERSION_TABLE = "alembic_version"

# What Alembic takes for a revision script (alembic.script.base._only_source_rev_file).
_SCRIPT_NAME = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
# A top-level `name = value` or `name: type = value` (value up to the end of the line).
_ASSIGNMENT = re.compile(
    r"^(revision|down_revision|depends_on)[ \t]*(?::[^=\n]*)?=[ \t]*(.*?)[ \t]*$", re.MULTILINE
)


def alembic_config(
    url: str | None = None,
    connection: Connection | None = None,
    script_location: Path = MIGRATIONS_DIR,
) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    if url:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision(script_location: Path = MIGRATIONS_DIR) -> str | None:
    """The latest revision: Alembic's ``ScriptDirectory.get_current_head()``.

    Read from the `revision` and `down_revision` lines of the scripts: the head is the
    one revision that no script names as its down revision. Anything this cannot read
    with certainty (no scripts directory, a computed value, dependencies, several heads
    or none) is left to Alembic, which gives the answer or the error it always gave.
    """
    try:
        return _head_from_script_text(script_location / "versions")
    except _Unsure:
        pass
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(alembic_config(script_location=script_location))
    return found.get_current_head()


class _Unsure(Exception):
    """The scripts' text does not settle the head; ask Alembic."""


def _head_from_script_text(versions: Path) -> str | None:  # noqa: C901 (one pass over Alembic's script text, case by case)
    if not versions.is_dir():
        raise _Unsure
    revisions: dict[str, tuple[str, ...]] = {}
    for path in sorted(versions.iterdir()):
        if not (path.is_file() and _SCRIPT_NAME.match(path.name)):
            continue
        values: dict[str, list[object]] = {}
        try:
            for name, value in _ASSIGNMENT.findall(path.read_text(encoding="utf-8")):
                values.setdefault(name, []).append(ast.literal_eval(value))
        except (OSError, UnicodeDecodeError, ValueError, SyntaxError):
            raise _Unsure from None
        revision, down = values.get("revision", []), values.get("down_revision", [])
        if len(revision) != 1 or len(down) != 1 or values.get("depends_on", [None]) != [None]:
            raise _Unsure
        rev = revision[0]
        if not isinstance(rev, str) or rev in revisions:
            raise _Unsure
        downs = tuple(down[0]) if isinstance(down[0], tuple | list) else (down[0],)
        names = tuple(d for d in downs if isinstance(d, str))
        if len(names) != len([d for d in downs if d is not None]):
            raise _Unsure
        revisions[rev] = names
    # Every down revision exists and the graph has no cycle: then its heads are Alembic's.
    done: set[str] = set()
    pending = dict(revisions)
    while pending:
        ready = [r for r, downs in pending.items() if done.issuperset(downs)]
        if not ready:
            raise _Unsure
        done.update(ready)
        for r in ready:
            del pending[r]
    named = {d for downs in revisions.values() for d in downs}
    heads = [r for r in revisions if r not in named]
    if not revisions:
        return None
    if len(heads) != 1:
        raise _Unsure
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The database's revision (Alembic's ``get_current_revision()``); None when empty.

    The same queries as Alembic's: is there a version table, then its rows. Connection
    errors are SQLAlchemy's, as before. A SQLite file that does not exist is empty.
    """
    if sqlite_file_missing(engine):
        return None
    with engine.connect() as conn:
        if not conn.dialect.has_table(conn, VERSION_TABLE):
            return None
        heads = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(heads) > 1:
        from alembic.util import CommandError

        raise CommandError(
            f"Version table '{VERSION_TABLE}' has more than one head present; "
            "please use get_current_heads()"
        )
    return heads[0] if heads else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate up to ``revision``; a SQLite file that does not exist yet is created."""
    from alembic import command

    create_sqlite_file(engine)
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), revision)


def check(engine: Engine) -> None:
    """Raise alembic.util.AutogenerateDiffsDetected if models and migrations differ."""
    from alembic import command

    with engine.connect() as conn:
        command.check(alembic_config(connection=conn))
