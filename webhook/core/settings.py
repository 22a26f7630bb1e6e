"""One settings object, read from the environment once at start-up.

Settings are grouped per feature (``settings.database.url``, ``settings.flows.handler``).
Each field names its environment variable, its default and its rule (webhook.core.envvars).
``Settings.from_env`` reports every invalid value at once, in one ConfigError; nothing
is coerced (0 where 0 makes no sense is an error), and a blank value means unset, except
for secrets: a secret variable that is set must hold a secret. Secrets are Secret
values: masked in every repr, log line and error message; ``.reveal()`` reads one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from webhook.core.envvars import (
    UNSET,
    ConfigError,
    Secret,
    Var,
    choice,
    flag,
    handler,
    identifier,
    integer,
    mask_url,
    optional_integer,
    reads,
    seconds,
    secret,
    secret_list,
    split_list,
    url,
)

__all__ = ["ConfigError", "Secret", "Settings"]

# The instance folder beside the package (Flask's convention), wherever the command
# runs from: <repository>/instance/webhook.db.
INSTANCE_DIR = Path(__file__).resolve().parents[2] / "instance"
DEFAULT_SQLITE_PATH = INSTANCE_DIR / "webhook.db"
DEFAULT_AUTH_URL = "https://auth.sinch.com/oauth2/token"
SINCH_REGIONS = ("us", "eu", "br")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text", "auto")
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")
_PEM_BLOCK = re.compile(r"-----BEGIN [^-]+-----.*?-----END [^-]+-----", re.S)
HTTP = ("http://", "https://")


def normalize_database_url(url: str) -> str:
    """Map the URLs hosting platforms hand out onto SQLAlchemy's psycopg 3 dialect."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def default_database_url() -> str:
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


def split_keys(raw: str) -> tuple[str, ...]:
    """Split FLOWS_PRIVATE_KEY: file paths, comma-separated, or PEM blocks one after the
    other (``\\n`` escapes allowed). Text outside the blocks (a path mixed in) is refused."""
    if "-----BEGIN" not in raw:
        return split_list(raw)
    text = raw.replace("\\n", "\n").replace("\r\n", "\n")
    if _PEM_BLOCK.sub("", text).strip(", \n\t"):
        raise ValueError("text outside the PEM blocks")
    return tuple(block + "\n" for block in _PEM_BLOCK.findall(text))


class Group:
    """A settings group: a frozen dataclass whose fields are read from Vars. Building
    one checks every field (and ``related_problems``), so overrides obey the rules too."""

    def __post_init__(self) -> None:
        problems = [
            var.problem(getattr(self, f.name))
            for f in _fields(self)
            if not (var := _var(f)).check(getattr(self, f.name))
        ]
        problems += [] if problems else self.related_problems()
        if problems:
            raise ConfigError(problems)

    def related_problems(self) -> list[str]:
        """Problems of fields that are fine alone but not together."""
        return []


def _fields(group: Any) -> tuple[Field[Any], ...]:
    return fields(group)


def _var(f: Field[Any]) -> Var:
    var: Var = f.metadata["var"]
    return var


def _show_url(value: Any) -> str:
    return repr(mask_url(str(value)))


@dataclass(frozen=True)
class DatabaseSettings(Group):
    url: str = field(
        default_factory=default_database_url,
        metadata=reads(url("DATABASE_URL",
                           "sqlite:///path/to/file.db or postgresql://user:password@host/db "
                           "(supported: sqlite, postgresql, postgres)",
                           schemes=("sqlite://", "postgresql+psycopg://"),
                           parse=normalize_database_url, show=_show_url)),
    )  # fmt: skip
    # Longest a request waits on PostgreSQL before answering 503 (below gunicorn's timeout).
    timeout_seconds: float = field(
        default=10.0, metadata=reads(seconds("DATABASE_TIMEOUT_SECONDS"))
    )
    # PostgreSQL connections each process keeps open; at least gunicorn's threads, or
    # the pool opens and closes a connection per request when every thread is busy.
    pool_size: int = field(
        default=16, metadata=reads(integer("DATABASE_POOL_SIZE", 1, "connections"))
    )
    # SQLite only: FULL fsyncs every commit (survives power loss); NORMAL does not.
    sqlite_synchronous: str = field(
        default="FULL", metadata=reads(choice("SQLITE_SYNCHRONOUS", SQLITE_SYNCHRONOUS, upper=True))
    )

    def __repr__(self) -> str:  # the dataclass's, with the URL's password masked
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["url"] = mask_url(self.url)
        return f"DatabaseSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass(frozen=True)
class HttpSettings(Group):
    max_content_length: int = field(
        default=1024 * 1024, metadata=reads(integer("MAX_CONTENT_LENGTH", 1, "bytes"))
    )
    # Sent with every 503 (storage unavailable, not ready).
    retry_after_seconds: int = field(
        default=5, metadata=reads(integer("RETRY_AFTER_SECONDS", 1, "seconds"))
    )
    # A body must arrive within this long, and (after its first half second) at this average
    # rate at least: a client trickling its body frees the worker thread (webhook.http.body).
    body_read_timeout_seconds: float = field(
        default=10.0, metadata=reads(seconds("BODY_READ_TIMEOUT_SECONDS"))
    )
    body_min_bytes_per_second: int = field(
        default=1000, metadata=reads(integer("BODY_MIN_BYTES_PER_SECOND", 1, "bytes a second"))
    )


@dataclass(frozen=True)
class CallbackSettings(Group):
    """Sinch callback signing: any one secret may match, so a secret can be rotated."""

    secrets: tuple[Secret, ...] = field(
        default=(),
        metadata=reads(secret_list("SINCH_WEBHOOK_SECRETS", "secrets", split_list,
                                   "callbacks are not verified")),
    )  # fmt: skip
    signature_max_age_seconds: int | None = field(
        default=None,
        metadata=reads(optional_integer("SIGNATURE_MAX_AGE_SECONDS", 1, "seconds", "no age check")),
    )


@dataclass(frozen=True)
class ProjectionSettings(Group):
    # Project stored callbacks in a thread of each serving process (off: run
    # `flask events project --follow` separately).
    in_process: bool = field(default=True, metadata=reads(flag("PROJECTOR")))


@dataclass(frozen=True)
class SinchApiSettings(Group):
    """Sending through the Conversation API (webhook.flows.client)."""

    project_id: str = field(default="", metadata=reads(identifier("SINCH_PROJECT_ID")))
    app_id: str = field(default="", metadata=reads(identifier("SINCH_APP_ID")))
    key_id: str = field(default="", metadata=reads(identifier("SINCH_KEY_ID")))
    key_secret: Secret | None = field(
        default=None,
        metadata=reads(secret("SINCH_KEY_SECRET", "the access key's secret, not blank")),
    )
    region: str = field(
        default="us", metadata=reads(choice("SINCH_REGION", SINCH_REGIONS, upper=False))
    )
    api_base_url: str = field(
        default="",
        metadata=reads(url("SINCH_API_BASE_URL", "https://proxy.example/sinch", HTTP,
                           parse=lambda t: t.rstrip("/"))),
    )  # fmt: skip
    auth_url: str = field(
        default=DEFAULT_AUTH_URL, metadata=reads(url("SINCH_AUTH_URL", DEFAULT_AUTH_URL, HTTP))
    )
    # Per-request timeout, attempts per call (1: no retries), first backoff.
    timeout_seconds: int = field(
        default=10, metadata=reads(integer("SINCH_TIMEOUT_SECONDS", 1, "seconds"))
    )
    max_attempts: int = field(
        default=4, metadata=reads(integer("SINCH_MAX_ATTEMPTS", 1, "attempts"))
    )
    backoff_ms: int = field(
        default=500, metadata=reads(integer("SINCH_BACKOFF_MS", 0, "milliseconds"))
    )


@dataclass(frozen=True)
class FlowsSettings(Group):
    """The WhatsApp Flows data endpoint (webhook.flows.endpoint)."""

    # Paths or PEM text: Secret, since the PEM text is the private key itself.
    private_keys: tuple[Secret, ...] = field(
        default=(),
        metadata=reads(secret_list("FLOWS_PRIVATE_KEY", "key files or PEM blocks", split_keys,
                                   "the endpoint is off")),
    )  # fmt: skip
    passphrases: tuple[Secret, ...] = field(
        default=(),
        metadata=reads(secret_list("FLOWS_PRIVATE_KEY_PASSPHRASE", "passphrases", split_list,
                                   "keys not encrypted")),
    )  # fmt: skip
    handler: str = field(default="", metadata=reads(handler("FLOWS_HANDLER")))
    app_secrets: tuple[Secret, ...] = field(
        default=(),
        metadata=reads(secret_list("META_APP_SECRET", "app secrets", split_list,
                                   "requests are not verified")),
    )  # fmt: skip
    require_known_token: bool = field(
        default=False, metadata=reads(flag("FLOWS_REQUIRE_KNOWN_TOKEN"))
    )
    store_data: bool = field(default=False, metadata=reads(flag("FLOWS_STORE_DATA")))
    handler_budget_ms: int = field(
        default=1000, metadata=reads(integer("FLOWS_HANDLER_BUDGET_MS", 1, "milliseconds"))
    )

    def related_problems(self) -> list[str]:
        keys, given = len(self.private_keys), len(self.passphrases)
        if given in (0, 1, keys):
            return []
        return [
            "FLOWS_PRIVATE_KEY_PASSPHRASE: must be one passphrase for every key, or one per "
            f"key of FLOWS_PRIVATE_KEY, in order; got {given} for {keys} keys"
        ]


@dataclass(frozen=True)
class OpsSettings(Group):
    """Logs and metrics."""

    log_level: str = field(
        default="INFO", metadata=reads(choice("LOG_LEVEL", LOG_LEVELS, upper=True))
    )
    log_format: str = field(
        default="auto", metadata=reads(choice("LOG_FORMAT", LOG_FORMATS, upper=False))
    )
    # A bearer token is sent without spaces around it: such a token could never match.
    metrics_token: Secret | None = field(
        default=None,
        metadata=reads(secret("METRICS_TOKEN", "a token without spaces around it "
                              "(unset: /metrics is open)", lambda t: bool(t) and t == t.strip())),
    )  # fmt: skip


@dataclass(frozen=True)
class PrivacySettings(Group):
    erasure_key: Secret | None = field(
        default=None,
        metadata=reads(secret("ERASURE_KEY", "a key, not blank (unset: erasure refuses to run)")),
    )


@dataclass(frozen=True)
class Settings:
    """Every setting the service reads, per feature; see README 'Configuration'."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    projection: ProjectionSettings = field(default_factory=ProjectionSettings)
    sinch: SinchApiSettings = field(default_factory=SinchApiSettings)
    flows: FlowsSettings = field(default_factory=FlowsSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable (``os.environ`` by default); ConfigError lists every
        invalid one at once."""
        e = os.environ if env is None else env
        problems: list[str] = []
        groups = {name: _group_from_env(group, e, problems) for name, group in _GROUPS.items()}
        if problems:
            raise ConfigError(problems)
        return cls(**groups)

    def with_overrides(self, **values: Any) -> Settings:
        """These settings with some values replaced, each named after its variable in
        lower case: ``with_overrides(sinch_webhook_secrets=("s",), projector=False)``.
        Values are typed (ints, tuples); strings given for secrets become Secret. The
        same rules apply as in ``from_env`` (ConfigError)."""
        changes: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key not in _OVERRIDES:
                raise TypeError(f"unknown setting {key!r}; known: {', '.join(_OVERRIDES)}")
            group, name, var = _OVERRIDES[key]
            changes.setdefault(group, {})[name] = var.wrap(value)
        return replace(self, **{g: replace(getattr(self, g), **c) for g, c in changes.items()})


def _group_from_env(cls: Any, env: Mapping[str, str], problems: list[str]) -> Any:
    """The group ``cls`` read from ``env``; each problem is added to ``problems``."""
    values: dict[str, Any] = {}
    found = len(problems)
    for f in _fields(cls):
        raw = env.get(_var(f).name)
        if raw is None:
            continue
        try:
            value = _var(f).read(raw)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        if value is not UNSET:
            values[f.name] = value
    if len(problems) > found:
        return None
    try:
        return cls(**values)
    except ConfigError as err:  # fields fine alone, not together
        problems.extend(err.problems)
        return None


# Settings field -> its group's class (each field's default_factory).
_GROUPS: dict[str, Any] = {f.name: f.default_factory for f in fields(Settings)}
# with_overrides: lower-case variable name -> (group, field, Var).
_OVERRIDES: dict[str, tuple[str, str, Var]] = {
    _var(f).name.lower(): (name, f.name, _var(f))
    for name, group in _GROUPS.items()
    for f in _fields(group)
}
