"""The settings loader's parts: Secret, ConfigError, and Var, one environment variable.

A Var turns the variable's text into a value and says which values are allowed. The
settings groups (webhook.core.settings) declare one Var per field, so the name, the
default, the type and the rule of a setting are written in one place.
"""

from __future__ import annotations

import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

MASK = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_URL_PASSWORD = re.compile(r"(://[^/@:]*:).*@")  # to the last @: a password may hold one
_HANDLER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(\(\))?")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
UNSET: Any = object()  # Var.read of a blank value: the field keeps its default


class Secret:
    """A secret value: ``repr`` and ``str`` print ``***``; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class ConfigError(ValueError):
    """Settings that cannot be used. ``problems`` holds every one, each naming its
    variable; ``str()`` is the one problem, or a count and one problem per line."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} settings are invalid:\n" + "\n".join(
            f"  {p}" for p in self.problems
        )


def _anything(_: Any) -> bool:
    return True


@dataclass(frozen=True)
class Var:
    """One environment variable: how its text becomes a value, and which values it allows.

    A blank value counts as unset (the default), except for a secret: a secret variable
    that is set must hold a usable secret. Secrets are never shown in a message.
    """

    name: str
    allowed: str  # what the variable takes, for messages: "must be <allowed>"
    parse: Callable[[str], Any]  # text -> value; ValueError when the text is not one
    check: Callable[[Any], bool] = _anything  # is a value (parsed or given) allowed?
    secret: bool = False
    show: Callable[[Any], str] = repr  # a bad value, as a message shows it
    wrap: Callable[[Any], Any] = lambda value: value  # a given value (overrides) -> field

    def problem(self, value: Any) -> str:
        return f"{self.name}: must be {self.allowed}; got {self.show(value)}"

    def read(self, raw: str) -> Any:
        """The value of ``raw``, or UNSET; ConfigError (one problem) when unusable."""
        if not self.secret and not raw.strip():
            return UNSET
        try:
            value = self.parse(raw)
        except ValueError:
            raise ConfigError(self.problem(raw)) from None
        if not self.check(value):
            raise ConfigError(self.problem(value))
        return value


def reads(var: Var) -> dict[str, Var]:
    """The metadata of a settings field read from ``var``."""
    return {"var": var}


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", url)


# --- kinds of variable ------------------------------------------------------------------


def integer(name: str, minimum: int, unit: str) -> Var:
    return Var(name, f"a whole number of {unit}, {minimum} or more", int,
               lambda v: isinstance(v, int) and v >= minimum)  # fmt: skip


def optional_integer(name: str, minimum: int, unit: str, unset: str) -> Var:
    return Var(name, f"a whole number of {unit}, {minimum} or more (unset: {unset})", int,
               lambda v: v is None or (isinstance(v, int) and v >= minimum))  # fmt: skip


def seconds(name: str) -> Var:
    """A number of seconds above 0 (fractions allowed)."""
    return Var(name, "a number of seconds above 0", float,
               lambda v: isinstance(v, int | float) and math.isfinite(v) and v > 0)  # fmt: skip


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(text)
    return value in _TRUE


def flag(name: str) -> Var:
    return Var(name, "on or off (1/0, true/false, yes/no, on/off)", _flag,
               lambda v: isinstance(v, bool))  # fmt: skip


def choice(name: str, choices: Sequence[str], upper: bool) -> Var:
    """One of ``choices``, in any case (stored upper- or lower-case)."""
    fold: Callable[[str], str] = str.upper if upper else str.lower
    return Var(name, f"one of {', '.join(choices)}", lambda t: fold(t.strip()),
               lambda v: v in choices)  # fmt: skip


def identifier(name: str) -> Var:
    """An id (empty: unset); ids never hold spaces."""
    return Var(name, "an id without spaces", str,
               lambda v: isinstance(v, str) and not any(c.isspace() for c in v))  # fmt: skip


def url(
    name: str,
    example: str,
    schemes: tuple[str, ...] = (),
    parse: Callable[[str], str] = str,
    show: Callable[[Any], str] = repr,
) -> Var:
    """A URL (``scheme://…``, no spaces); empty when the field's default is empty."""

    def ok(v: Any) -> bool:
        return isinstance(v, str) and (
            not v or (bool(_URL.fullmatch(v)) and (not schemes or v.startswith(schemes)))
        )

    return Var(name, f"a URL such as {example}", parse, ok, show=show)


def handler(name: str) -> Var:
    return Var(name, "module:object or module:factory()", str.strip,
               lambda v: isinstance(v, str) and (not v or bool(_HANDLER.fullmatch(v))))  # fmt: skip


# --- secrets ----------------------------------------------------------------------------


def _as_secret(value: Any) -> Any:
    return Secret(value) if isinstance(value, str) else value


def _as_secrets(values: Any) -> Any:
    return tuple(_as_secret(v) for v in values)


def _show_secret(value: Any) -> str:
    raw = value.reveal() if isinstance(value, Secret) else str(value)
    if not raw:
        return "an empty value"
    if not raw.strip():
        return "only spaces"
    if raw != raw.strip():
        return "a value with spaces around it (not shown)"
    return "a value (not shown)"


def _show_secrets(values: Any) -> str:
    if isinstance(values, str):  # text that did not parse; never shown
        return "a value (not shown)"
    empty = sum(1 for v in values if not (v.reveal() if isinstance(v, Secret) else v))
    return f"{len(values)} entries, {empty} empty (not shown)"


def _not_blank(value: str) -> bool:
    return bool(value.strip())


def secret(name: str, allowed: str, check: Callable[[str], bool] = _not_blank) -> Var:
    """One secret; ``check`` gets the revealed value (default: not blank)."""
    return Var(name, allowed, Secret,
               lambda v: v is None or (isinstance(v, Secret) and check(v.reveal())),
               secret=True, show=_show_secret, wrap=_as_secret)  # fmt: skip


def secret_list(name: str, what: str, parse: Callable[[str], Sequence[str]], unset: str) -> Var:
    """Comma-separated secrets (or keys), spaces around each removed; none may be empty."""
    return Var(name, f"one or more comma-separated {what}, none of them empty (unset: {unset})",
               lambda t: tuple(Secret(s) for s in parse(t)),
               lambda v: all(isinstance(s, Secret) and s.reveal() for s in v),
               secret=True, show=_show_secrets, wrap=_as_secrets)  # fmt: skip


def split_list(raw: str) -> tuple[str, ...]:
    """``a, b`` -> ``("a", "b")``; empty entries are kept (the check refuses them)."""
    return tuple(p.strip() for p in raw.split(","))


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Turn a ConfigError into its lines on stderr and exit status 1 (a traceback too
    with LOG_LEVEL=DEBUG): what a person starting the service should see."""
    try:
        yield
    except ConfigError as err:
        if os.environ.get("LOG_LEVEL", "").strip().upper() == "DEBUG":
            traceback.print_exc()
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
