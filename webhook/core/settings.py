"""One settings object, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SQLITE_PATH = Path("instance") / "webhook.db.engine"


class ConfigError(ValueError):
    """A setting is present but unusable."""


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false, on/off), got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be above 0, got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (env.get(name) or "").strip().upper()
    if not raw:
        return default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def normalize_database_url(url: str) -> str:
    """Map the URLs hosting platforms hand out onto SQLAlchemy's psycopg 3 dialect."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def default_database_url() -> str:
    return f"sqlite:///{DEFAULT_SQLITE_PATH.resolve()}"


@dataclass(frozen=True)
class Settings:
    """Every setting the service reads; see README 'Configuration'."""

    database_url: str = field(default_factory=default_database_url)
    # Callback signing (Sinch): any one secret may match, so a secret can be rotated.
    webhook_secrets: tuple[str, ...] = ()
    signature_max_age_seconds: int | None = None
    max_content_length: int = 1024 * 1024
    retry_after_seconds: int = 5
    # Longest a request waits on PostgreSQL before answering 503 (below gunicorn's timeout).
    database_timeout_seconds: float = 10.0
    # PostgreSQL connections each process keeps open; at least gunicorn's threads, or
    # the pool opens and closes a connection per request when every thread is busy.
    database_pool_size: int = 16
    # SQLite only: FULL fsyncs every commit (survives power loss); NORMAL does not.
    sqlite_synchronous: str = "FULL"
    # Project stored callbacks in a thread of each serving process (off: run
    # `flask events project --follow` separately).
    projector: bool = True
    # Sending (Conversation API).
    sinch_project_id: str = ""
    sinch_app_id: str = ""
    sinch_key_id: str = ""
    sinch_key_secret: str = ""
    sinch_region: str = "us"
    sinch_api_base_url: str = ""
    sinch_auth_url: str = "https://auth.sinch.com/oauth2/token"
    # Conversation API client: per-request timeout, attempts per call, first backoff.
    sinch_timeout_seconds: int = 10
    sinch_max_attempts: int = 4
    sinch_backoff_ms: int = 500
    # WhatsApp Flows data endpoint.
    meta_app_secrets: tuple[str, ...] = ()
    flows_private_keys: tuple[str, ...] = ()
    flows_private_key_passphrases: tuple[str, ...] = ()
    flows_handler: str = ""
    flows_require_known_token: bool = False
    flows_store_data: bool = False
    flows_handler_budget_ms: int = 1000
    # Operations and privacy.
    metrics_token: str = ""
    log_level: str = "INFO"
    log_format: str = "auto"
    erasure_key: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (``os.environ`` by default)."""
        e = os.environ if env is None else env
        max_age = _int(e, "SIGNATURE_MAX_AGE_SECONDS", None)
        if max_age is not None and max_age <= 0:
            max_age = None
        keys = _split_keys(e.get("FLOWS_PRIVATE_KEY", ""))
        return cls(
            database_url=normalize_database_url(e.get("DATABASE_URL") or default_database_url()),
            webhook_secrets=_split(e.get("SINCH_WEBHOOK_SECRETS")),
            signature_max_age_seconds=max_age,
            max_content_length=_int(e, "MAX_CONTENT_LENGTH", 1024 * 1024) or 1024 * 1024,
            retry_after_seconds=_int(e, "RETRY_AFTER_SECONDS", 5) or 5,
            database_timeout_seconds=_positive_float(e, "DATABASE_TIMEOUT_SECONDS", 10.0),
            database_pool_size=max(1, _int(e, "DATABASE_POOL_SIZE", 16) or 16),
            sqlite_synchronous=_choice(e, "SQLITE_SYNCHRONOUS", ("FULL", "NORMAL"), "FULL"),
            projector=_bool(e, "PROJECTOR", True),
            sinch_project_id=e.get("SINCH_PROJECT_ID", ""),
            sinch_app_id=e.get("SINCH_APP_ID", ""),
            sinch_key_id=e.get("SINCH_KEY_ID", ""),
            sinch_key_secret=e.get("SINCH_KEY_SECRET", ""),
            sinch_region=(e.get("SINCH_REGION") or "us").lower(),
            sinch_api_base_url=e.get("SINCH_API_BASE_URL", "").rstrip("/"),
            sinch_auth_url=e.get("SINCH_AUTH_URL") or "https://auth.sinch.com/oauth2/token",
            sinch_timeout_seconds=_int(e, "SINCH_TIMEOUT_SECONDS", 10) or 10,
            sinch_max_attempts=max(1, _int(e, "SINCH_MAX_ATTEMPTS", 4) or 1),
            sinch_backoff_ms=max(0, _int(e, "SINCH_BACKOFF_MS", 500) or 0),
            meta_app_secrets=_split(e.get("META_APP_SECRET")),
            flows_private_keys=keys,
            flows_private_key_passphrases=_split(e.get("FLOWS_PRIVATE_KEY_PASSPHRASE")),
            flows_handler=e.get("FLOWS_HANDLER", ""),
            flows_require_known_token=_bool(e, "FLOWS_REQUIRE_KNOWN_TOKEN", False),
            flows_store_data=_bool(e, "FLOWS_STORE_DATA", False),
            flows_handler_budget_ms=_int(e, "FLOWS_HANDLER_BUDGET_MS", 1000) or 1000,
            metrics_token=e.get("METRICS_TOKEN", ""),
            log_level=(e.get("LOG_LEVEL") or "INFO").upper(),
            log_format=(e.get("LOG_FORMAT") or "auto").lower(),
            erasure_key=e.get("ERASURE_KEY", ""),
        )


def _split_keys(raw: str) -> tuple[str, ...]:
    """Split FLOWS_PRIVATE_KEY: PEM blocks and/or file paths, comma- or newline-separated."""
    raw = raw.strip()
    if not raw:
        return ()
    if "-----BEGIN" in raw:
        blocks: list[str] = []
        current: list[str] = []
        for line in raw.replace("\\n", "\n").splitlines():
            current.append(line)
            if line.startswith("-----END"):
                blocks.append("\n".join(current).strip(", \n") + "\n")
                current = []
        return tuple(blocks)
    return _split(raw)
