"""Settings: one frozen object, loaded once at start-up and passed down.

Values come from an optional TOML file named by ``HAVEN_CONFIG`` and from
``HAVEN_*`` environment variables, which win over the file. Every key is
declared in :data:`FIELDS`; an unknown key in either place is an error, as is
any value that does not parse. All problems are gathered and raised together
in one :class:`~haven.errors.ConfigError`, each naming the key, the value and
the expectation. Secrets are wrapped in :class:`Secret` and masked in every
``repr``, log line and ``check-config`` output.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from haven.errors import ConfigError
from haven.types import ChecksumAddress, Wei, checksum

T = TypeVar("T")
PREFIX = "HAVEN_"
CONFIG_FILE_KEY = "HAVEN_CONFIG"
PARTNERS = ("aurora", "tribe")


class Secret(Generic[T]):
    """A value that never shows itself in a repr, str or log line."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """Return the wrapped value; call only where it is used."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# Whatever sits between "scheme://user:" and the last "@": the password of
# a URL too malformed for urlsplit to take apart.
_RAW_PASSWORD = re.compile(r"(://[^:/@]*):.*@")


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by asterisks, even if malformed."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return _RAW_PASSWORD.sub(r"\1:********@", dsn, count=1)
    if password is None:
        return dsn
    # The netloc's own host part keeps IPv6 brackets and the port as written.
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:********@{host}"))


def mask_endpoint(url: str) -> str:
    """Return an endpoint URL safe to show: password, path and query hidden.

    Providers put API keys in the path (``/v3/<key>``) or the query as often
    as in the password, so only the scheme, host and port are shown.
    """
    masked = mask_dsn(url)
    try:
        parts = urlsplit(masked)
    except ValueError:
        return "********"
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment
    if not hidden:
        return masked
    return urlunsplit(parts._replace(path="/********", query="", fragment=""))


# Settings whose values are URLs that may carry credentials, and how each is
# shown: a DSN keeps its database name; an endpoint shows its host only.
_DSN_KEYS = ("database_url", "redis_url")
_ENDPOINT_KEYS = (
    "rpc_url",
    "ws_url",
    "partner_api_aurora",
    "partner_api_tribe",
    "alert_webhook_url",
)


def _masked_url(key: str, url: str) -> str:
    return mask_dsn(url) if key in _DSN_KEYS else mask_endpoint(url)


# --- parsers: each takes the raw value (str from the environment, or a TOML
# value) and returns the typed value or raises ValueError with the expectation.


def _text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("a non-empty string")
    return raw.strip()


def _url(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    starts = f"a URL starting with {' or '.join(schemes)}://"
    # PostgreSQL and Redis may name a Unix socket instead of a host.
    host_optional = bool({"postgresql", "postgres", "unix"} & set(schemes))

    def parse(raw: Any) -> str:
        text = _text(raw)
        try:
            parts = urlsplit(text)
        except ValueError:
            raise ValueError(
                f"{starts} with a well-formed host (IPv6 in brackets: [::1])"
            ) from None
        if parts.scheme not in schemes:
            raise ValueError(starts)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(f"{starts} whose port is an integer from 1 to 65535")
        if not host_optional and not parts.hostname:
            raise ValueError(f"{starts} with a host")
        return text

    return parse


def _url_list(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    urls = tuple(_url(("http", "https"))(item) for item in items if str(item).strip())
    if not urls:
        raise ValueError("one or more http(s) URLs, comma-separated")
    return urls


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"an integer from {low} to {high}")
        try:
            value = int(str(raw).strip(), 10) if not isinstance(raw, int) else raw
        except ValueError:
            raise ValueError(f"an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    expected = f"a number of seconds from {low:g} to {high:g}"

    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(expected)
        try:
            value = float(str(raw).strip()) if isinstance(raw, str) else float(raw)
        except (TypeError, ValueError):
            raise ValueError(expected) from None
        # NaN fails both comparisons, so it is refused here too.
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


def _wei(raw: Any) -> Wei:
    return Wei(_int_range(0, 2**256 - 1)(raw))


_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _address(raw: Any) -> ChecksumAddress:
    text = _text(raw)
    try:
        return checksum(text)
    except ValueError:
        pass
    if _HEX_ADDRESS.fullmatch(text):
        # Well-formed hex that checksum() refused: only the mixed letter
        # case, its EIP-55 checksum, can be wrong.
        raise ValueError(
            "an address whose mixed letter case matches its EIP-55 checksum; "
            "this one's checksum is wrong, which usually means a mistyped "
            "character"
        )
    raise ValueError("a 0x-prefixed 20-byte hex address")


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = _text(raw).lower()
        if text not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return text

    return parse


def _secret_list(
    check: Callable[[str], None], expected: str
) -> Callable[[Any], Secret[tuple[str, ...]]]:
    def parse(raw: Any) -> Secret[tuple[str, ...]]:
        items = raw if isinstance(raw, list) else str(raw).split(",")
        values = tuple(str(item).strip() for item in items if str(item).strip())
        if not values:
            raise ValueError(expected)
        for value in values:
            try:
                check(value)
            except ValueError:
                raise ValueError(expected) from None
        return Secret(values)

    return parse


def _check_whsec(value: str) -> None:
    import base64
    import binascii

    if not value.startswith("whsec_"):
        raise ValueError
    try:
        decoded = base64.b64decode(value[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ValueError from None
    if len(decoded) < 16:
        raise ValueError


def _check_fernet(value: str) -> None:
    import base64
    import binascii

    try:
        decoded = base64.urlsafe_b64decode(value.encode())
    except (binascii.Error, ValueError):
        raise ValueError from None
    if len(decoded) != 32:
        raise ValueError


def _check_api_key(value: str) -> None:
    if len(value) < 24:
        raise ValueError


def _private_key(raw: Any) -> Secret[str]:
    text = _text(raw)
    body = text[2:] if text.startswith("0x") else text
    try:
        if len(bytes.fromhex(body)) != 32:
            raise ValueError
    except ValueError:
        raise ValueError("a 32-byte hex private key") from None
    return Secret("0x" + body.lower())


def _whsec(raw: Any) -> Secret[str]:
    text = _text(raw)
    try:
        _check_whsec(text)
    except ValueError:
        raise ValueError(
            "a whsec_ secret (whsec_ + base64 of 16 bytes or more)"
        ) from None
    return Secret(text)


def _secret_text(raw: Any) -> Secret[str]:
    return Secret(_text(raw))


def _rate_limit(raw: Any) -> str:
    from limits import parse_many

    text = _text(raw)
    try:
        parse_many(text)
    except ValueError:
        raise ValueError("a rate limit such as 600/minute or 10/second") from None
    return text


def _cidr_list(raw: Any) -> tuple[str, ...]:
    import ipaddress

    items = raw if isinstance(raw, list) else str(raw).split(",")
    networks = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(
                "CIDR networks such as 10.0.0.0/8, comma-separated"
            ) from None
    return tuple(networks)


def _email(raw: Any) -> str:
    text = _text(raw)
    local, _, domain = text.partition("@")
    if not local or not domain or " " in text:
        raise ValueError("an email address")
    return text


def _email_list(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    try:
        return tuple(_email(item) for item in items if str(item).strip())
    except ValueError:
        raise ValueError("email addresses, comma-separated") from None


def _path(raw: Any) -> Path:
    return Path(_text(raw))


@dataclass(frozen=True)
class Field:
    """One setting: its key (without prefix), parser, default and meaning."""

    key: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    secret: bool = False
    required: bool = False

    @property
    def env_name(self) -> str:
        return PREFIX + self.key.upper()


FIELDS: tuple[Field, ...] = (
    Field(
        "database_url",
        _url(("postgresql", "postgres")),
        None,
        "PostgreSQL DSN; PostgreSQL is the source of truth.",
        required=True,
    ),
    Field(
        "redis_url",
        _url(("redis", "rediss", "unix")),
        "redis://127.0.0.1:6379/0",
        "Redis URL of the listeners' rate limits (the daemon does not use Redis).",
    ),
    Field(
        "redis_prefix",
        _text,
        "haven",
        "Prefix of every Redis key, so deployments can share a Redis.",
    ),
    Field(
        "rpc_url",
        _url_list,
        None,
        "JSON-RPC endpoints, comma-separated; later ones are failovers.",
        required=True,
    ),
    Field(
        "chain_id",
        _int_range(1, 2**63 - 1),
        None,
        "Chain id the node must serve; signatures are bound to it.",
        required=True,
    ),
    Field(
        "token_address",
        _address,
        None,
        "Address of the HNV contract (written by `haven deploy`).",
    ),
    Field(
        "start_block",
        _int_range(0, 2**63 - 1),
        0,
        "Block to start indexing from: the contract's deployment block.",
    ),
    Field(
        "confirmations",
        _int_range(0, 10_000),
        12,
        "Depth at which a mint counts as confirmed.",
    ),
    Field(
        "finality_depth",
        _int_range(1, 100_000),
        64,
        "Depth past which blocks are final and their headers may be pruned.",
    ),
    Field(
        "poll_interval_ms",
        _int_range(10, 600_000),
        1000,
        "How often the daemon polls the chain head.",
    ),
    Field(
        "rpc_timeout_s",
        _seconds(0.1, 600),
        10,
        "Seconds the daemon waits for one JSON-RPC answer before giving up on it.",
    ),
    Field(
        "head_stall_s",
        _seconds(0.1, 86_400),
        60,
        "Seconds an endpoint's head may stand still while another's moves.",
    ),
    Field(
        "log_range_max_blocks",
        _int_range(1, 1_000_000),
        2000,
        "Widest eth_getLogs block range the tailer asks for; errors shrink it.",
    ),
    Field(
        "ws_url",
        _url(("ws", "wss")),
        None,
        "WebSocket endpoint whose newHeads wake the tailer; unset: poll only.",
    ),
    Field(
        "max_in_flight",
        _int_range(1, 1024),
        16,
        "Transactions per signer sent but not yet mined; more intents wait.",
    ),
    Field(
        "max_fee_wei",
        _wei,
        Wei(500 * 10**9),
        "Hard cap on the fee cap of any transaction, in wei.",
    ),
    Field(
        "gas_limit",
        _int_range(21_000, 30_000_000),
        200_000,
        "Gas limit of a mint transaction.",
    ),
    Field(
        "webhook_secrets_aurora",
        _secret_list(_check_whsec, "whsec_ secrets, comma-separated"),
        None,
        "Aurora's active signing secrets (several during rotation).",
        secret=True,
        required=True,
    ),
    Field(
        "webhook_secrets_tribe",
        _secret_list(_check_whsec, "whsec_ secrets, comma-separated"),
        None,
        "Tribe's active signing secrets (several during rotation).",
        secret=True,
        required=True,
    ),
    Field(
        "webhook_tolerance_s",
        _int_range(1, 86_400),
        300,
        "Largest accepted distance between a webhook's timestamp and now.",
    ),
    Field(
        "master_key",
        _secret_list(
            _check_fernet,
            "Fernet keys (urlsafe base64 of 32 bytes), comma-separated, newest first",
        ),
        None,
        "Keys that encrypt signer keys at rest; the first encrypts.",
        secret=True,
        required=True,
    ),
    Field(
        "admin_api_keys",
        _secret_list(
            _check_api_key, "API keys of 24 characters or more, comma-separated"
        ),
        None,
        "Bearer keys accepted by the admin API.",
        secret=True,
        required=True,
    ),
    Field("listen_host", _text, "127.0.0.1", "Address the listener binds."),
    Field("listen_port", _int_range(1, 65535), 8080, "Port the listener binds."),
    Field(
        "daemon_port",
        _int_range(0, 65535),
        9108,
        "Port of the daemon's /metrics and /healthz (0 turns it off).",
    ),
    Field(
        "reward_rules",
        _path,
        None,
        "Reward rules file; the packaged config/rewards.toml when unset.",
    ),
    Field(
        "log_format",
        _choice("json", "text"),
        "text",
        "json for production log shipping, text for a terminal.",
    ),
    Field(
        "log_level",
        _choice("debug", "info", "warning", "error"),
        "info",
        "Lowest level logged.",
    ),
    Field(
        "deployer_key",
        _private_key,
        None,
        "Key that deploys HNV and grants roles (`haven deploy` only).",
        secret=True,
    ),
    # --- partners ------------------------------------------------------------
    Field(
        "webhook_tolerance_s_aurora",
        _int_range(1, 86_400),
        None,
        "Aurora's own timestamp window; HAVEN_WEBHOOK_TOLERANCE_S when unset.",
    ),
    Field(
        "webhook_tolerance_s_tribe",
        _int_range(1, 86_400),
        None,
        "Tribe's own timestamp window; HAVEN_WEBHOOK_TOLERANCE_S when unset.",
    ),
    Field(
        "webhook_rate_limit_partner",
        _rate_limit,
        "1200/minute",
        "Per-partner limit on authentic webhook requests (`limits` notation).",
    ),
    Field(
        "webhook_rate_limit_ip",
        _rate_limit,
        "600/minute",
        "Per-client-IP limit on every webhook request (`limits` notation).",
    ),
    Field(
        "trusted_proxies",
        _cidr_list,
        (),
        "Networks whose X-Forwarded-For is believed, comma-separated CIDRs.",
    ),
    Field(
        "partner_api_aurora",
        _url(("http", "https")),
        None,
        "Aurora's recent-events API, polled for missed webhooks; unset: no polling.",
    ),
    Field(
        "partner_api_tribe",
        _url(("http", "https")),
        None,
        "Tribe's recent-events API, polled for missed webhooks; unset: no polling.",
    ),
    Field(
        "partner_api_token_aurora",
        _secret_text,
        None,
        "Bearer token for Aurora's events API.",
        secret=True,
    ),
    Field(
        "partner_api_token_tribe",
        _secret_text,
        None,
        "Bearer token for Tribe's events API.",
        secret=True,
    ),
    Field(
        "partner_poll_interval_s",
        _int_range(10, 86_400),
        300,
        "Seconds between polls of the partners' events APIs.",
    ),
    Field(
        "partner_poll_lookback_s",
        _int_range(60, 30 * 86_400),
        86_400,
        "How far back each poll of a partner's events API looks, in seconds.",
    ),
    # --- minting ---------------------------------------------------------------
    Field(
        "cap_per_intent_wei",
        _wei,
        Wei(10_000 * 10**18),
        "Largest single mint signed without operator approval, in base units.",
    ),
    Field(
        "cap_partner_daily_wei",
        _wei,
        Wei(1_000_000 * 10**18),
        "Most one partner's rewards may mint in any 24 hours without approval.",
    ),
    Field(
        "cap_global_daily_wei",
        _wei,
        Wei(5_000_000 * 10**18),
        "Most all partners' rewards may mint in any 24 hours without approval.",
    ),
    Field(
        "stuck_after_blocks",
        _int_range(1, 10_000),
        3,
        "Blocks a transaction may wait for inclusion before it is re-priced.",
    ),
    Field(
        "min_tip_wei",
        _wei,
        Wei(10**8),
        "Floor of the priority fee taken from fee history, in wei.",
    ),
    Field(
        "rpc_breaker_failures",
        _int_range(1, 1000),
        3,
        "Failed RPC calls (after retries) that open the circuit breaker.",
    ),
    Field(
        "rpc_breaker_reset_s",
        _int_range(1, 3600),
        5,
        "Seconds an open circuit waits before letting a probe call through.",
    ),
    # --- reconciliation and alerts -----------------------------------------------
    Field(
        "reconcile_interval_s",
        _int_range(5, 86_400),
        60,
        "Seconds between reconciliation runs.",
    ),
    Field(
        "stale_intent_grace_s",
        _int_range(1, 30 * 86_400),
        900,
        "Seconds an intent may stay ready before it is a stale-intent break.",
    ),
    Field(
        "missing_on_chain_grace_s",
        _int_range(1, 30 * 86_400),
        900,
        "Seconds a submitted intent may go unmined before it is a break.",
    ),
    Field(
        "low_balance_threshold_wei",
        _wei,
        Wei(5 * 10**16),
        "Signer gas balance below which a warning is raised, in wei.",
    ),
    Field(
        "max_tail_lag_blocks",
        _int_range(1, 1_000_000),
        32,
        "Blocks the tailer may trail the confirmed head before runs are incomplete.",
    ),
    Field(
        "ready_max_tail_lag_blocks",
        _int_range(1, 1_000_000),
        64,
        "Largest tail lag, in blocks, at which the daemon is ready.",
    ),
    Field(
        "daily_report_hour_utc",
        _int_range(0, 23),
        6,
        "Hour (UTC) at which the daily report is emailed.",
    ),
    Field("smtp_host", _text, None, "SMTP relay for alert email; unset: no email."),
    Field("smtp_port", _int_range(1, 65535), 587, "Port of the SMTP relay."),
    Field(
        "smtp_tls",
        _choice("none", "starttls", "tls"),
        "starttls",
        "How to secure the SMTP connection.",
    ),
    Field("smtp_username", _text, None, "SMTP user name, if the relay wants one."),
    Field("smtp_password", _secret_text, None, "SMTP password.", secret=True),
    Field("smtp_from", _email, "haven@localhost", "Sender address of alert email."),
    Field("smtp_to", _email_list, (), "Recipients of alert email, comma-separated."),
    Field(
        "alert_webhook_url",
        _url(("http", "https")),
        None,
        "Operators' endpoint for alert webhooks; unset: no webhook alerts.",
    ),
    Field(
        "alert_webhook_secret",
        _whsec,
        None,
        "Signs outbound alert webhooks (Standard Webhooks).",
        secret=True,
    ),
    # --- process lifecycle and backups -------------------------------------------
    Field(
        "daemon_host",
        _text,
        "127.0.0.1",
        "Address of the daemon's /metrics and /healthz.",
    ),
    Field(
        "shutdown_grace_s",
        _int_range(1, 600),
        20,
        "Seconds `haven run` lets components finish after SIGTERM.",
    ),
    Field(
        "lease_poll_ms",
        _int_range(50, 60_000),
        1000,
        "How often a daemon renews its leases and a standby tries free ones.",
    ),
    Field(
        "lease_ttl_ms",
        _int_range(500, 600_000),
        10_000,
        "How long a silent daemon keeps its leases (at least 3 x poll).",
    ),
    Field(
        "backup_key",
        _secret_list(_check_fernet, "Fernet keys, comma-separated, newest first"),
        None,
        "Keys that seal backups; HAVEN_MASTER_KEY when unset.",
        secret=True,
    ),
)

_BY_KEY = {f.key: f for f in FIELDS}
REQUIRED = frozenset(f.key for f in FIELDS if f.required)


@dataclass(frozen=True)
class Settings:
    """The effective settings of one process. Construct with :func:`load`."""

    database_url: Secret[str]
    redis_url: Secret[str]
    redis_prefix: str
    rpc_url: tuple[str, ...]
    chain_id: int
    token_address: ChecksumAddress | None
    start_block: int
    confirmations: int
    finality_depth: int
    poll_interval_ms: int
    rpc_timeout_s: float
    head_stall_s: float
    log_range_max_blocks: int
    ws_url: str | None
    max_in_flight: int
    max_fee_wei: Wei
    gas_limit: int
    webhook_secrets_aurora: Secret[tuple[str, ...]]
    webhook_secrets_tribe: Secret[tuple[str, ...]]
    webhook_tolerance_s: int
    master_key: Secret[tuple[str, ...]]
    admin_api_keys: Secret[tuple[str, ...]]
    listen_host: str
    listen_port: int
    daemon_port: int
    reward_rules: Path | None
    log_format: str
    log_level: str
    deployer_key: Secret[str] | None
    webhook_tolerance_s_aurora: int | None
    webhook_tolerance_s_tribe: int | None
    webhook_rate_limit_partner: str
    webhook_rate_limit_ip: str
    trusted_proxies: tuple[str, ...]
    partner_api_aurora: str | None
    partner_api_tribe: str | None
    partner_api_token_aurora: Secret[str] | None
    partner_api_token_tribe: Secret[str] | None
    partner_poll_interval_s: int
    partner_poll_lookback_s: int
    cap_per_intent_wei: Wei
    cap_partner_daily_wei: Wei
    cap_global_daily_wei: Wei
    stuck_after_blocks: int
    min_tip_wei: Wei
    rpc_breaker_failures: int
    rpc_breaker_reset_s: int
    reconcile_interval_s: int
    stale_intent_grace_s: int
    missing_on_chain_grace_s: int
    low_balance_threshold_wei: Wei
    max_tail_lag_blocks: int
    ready_max_tail_lag_blocks: int
    daily_report_hour_utc: int
    smtp_host: str | None
    smtp_port: int
    smtp_tls: str
    smtp_username: str | None
    smtp_password: Secret[str] | None
    smtp_from: str
    smtp_to: tuple[str, ...]
    alert_webhook_url: str | None
    alert_webhook_secret: Secret[str] | None
    daemon_host: str
    shutdown_grace_s: int
    lease_poll_ms: int
    lease_ttl_ms: int
    backup_key: Secret[tuple[str, ...]] | None
    source: str = field(default="environment")

    def webhook_tolerance(self, partner: str) -> int:
        """Return the timestamp window of ``partner`` in seconds."""
        own = {
            "aurora": self.webhook_tolerance_s_aurora,
            "tribe": self.webhook_tolerance_s_tribe,
        }[partner]
        return own if own is not None else self.webhook_tolerance_s

    def webhook_secrets(self, partner: str) -> tuple[str, ...]:
        """Return the active secrets of ``partner``; KeyError if unknown."""
        secrets = {
            "aurora": self.webhook_secrets_aurora,
            "tribe": self.webhook_secrets_tribe,
        }[partner]
        return secrets.reveal()

    def require_token(self) -> ChecksumAddress:
        """Return the HNV address, or raise ConfigError if none is set."""
        if self.token_address is None:
            raise ConfigError(
                [
                    "HAVEN_TOKEN_ADDRESS: not set; expected the HNV contract "
                    "address (run `haven deploy` and set it)"
                ]
            )
        return self.token_address

    def describe(self) -> list[tuple[str, str]]:
        """Return (env name, display value) pairs with secrets masked."""
        rows = []
        for spec in FIELDS:
            value = getattr(self, spec.key)
            if spec.key in _DSN_KEYS + _ENDPOINT_KEYS and value is not None:
                raw = value.reveal() if isinstance(value, Secret) else value
                urls = raw if isinstance(raw, tuple) else (raw,)
                shown = ",".join(_masked_url(spec.key, str(url)) for url in urls)
            elif isinstance(value, Secret):
                shown = "********"
            elif isinstance(value, tuple):
                shown = ",".join(value)
            elif value is None:
                shown = "(unset)"
            else:
                shown = str(value)
            rows.append((spec.env_name, shown))
        return rows


def _shown(spec: Field, raw: Any) -> str:
    if spec.secret:
        return "'********'"
    if spec.key in _DSN_KEYS + _ENDPOINT_KEYS:
        urls = str(raw).split(",") if spec.key == "rpc_url" else [str(raw)]
        return repr(",".join(_masked_url(spec.key, url.strip()) for url in urls))
    return repr(raw)


def load(
    environ: Mapping[str, str],
    *,
    overrides: Mapping[str, Any] | None = None,
    require: Collection[str] | None = None,
) -> Settings:
    """Load, validate and return the settings; raise ConfigError listing every problem.

    ``environ`` is read for ``HAVEN_*`` keys and ``HAVEN_CONFIG``; values in
    ``overrides`` (keyed like the TOML file) win over both. ``require`` narrows
    the required keys for tools that need only a few (``haven migrate``);
    the others may then be None. Nothing is read at import time.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    source = "environment"
    required = set(require) if require is not None else REQUIRED

    config_path = environ.get(CONFIG_FILE_KEY)
    if config_path:
        source = f"{config_path} and environment"
        raw.update(_read_file(Path(config_path), problems))

    for name, value in environ.items():
        if not name.startswith(PREFIX) or name == CONFIG_FILE_KEY:
            continue
        key = name[len(PREFIX) :].lower()
        if key not in _BY_KEY:
            problems.append(
                f"{name}: unknown setting; expected one of the "
                "documented HAVEN_* keys (see `haven check-config`)"
            )
            continue
        raw[key] = value
    raw.update(overrides or {})

    values: dict[str, Any] = {}
    for spec in FIELDS:
        if spec.key not in raw or raw[spec.key] in ("", None):
            if spec.key in required:
                problems.append(
                    f"{spec.env_name}: missing; expected a value ({spec.doc})"
                )
            values[spec.key] = spec.default
            continue
        try:
            values[spec.key] = spec.parse(raw[spec.key])
        except ValueError as exc:
            problems.append(
                f"{spec.env_name}: got {_shown(spec, raw[spec.key])}; expected {exc}"
            )

    if not problems:
        problems.extend(_cross_check(values))
    if problems:
        raise ConfigError(problems)
    for key in ("database_url", "redis_url"):
        if values[key] is not None:
            values[key] = Secret(values[key])
    names = {f.name for f in fields(Settings)}
    return Settings(source=source, **{k: v for k, v in values.items() if k in names})


def _cross_check(values: dict[str, Any]) -> list[str]:
    """Return problems that involve more than one setting."""
    problems = []
    if values["finality_depth"] < values["confirmations"]:
        problems.append(
            f"HAVEN_FINALITY_DEPTH: got {values['finality_depth']}; expected at "
            f"least HAVEN_CONFIRMATIONS ({values['confirmations']}): a block is "
            "confirmed before it is final"
        )
    if values["lease_ttl_ms"] < 3 * values["lease_poll_ms"]:
        problems.append(
            f"HAVEN_LEASE_TTL_MS: got {values['lease_ttl_ms']}; expected at least "
            f"3 x HAVEN_LEASE_POLL_MS ({3 * values['lease_poll_ms']})"
        )
    if values["head_stall_s"] * 1000 < 2 * values["poll_interval_ms"]:
        problems.append(
            f"HAVEN_HEAD_STALL_S: got {values['head_stall_s']:g}; expected at "
            f"least 2 x HAVEN_POLL_INTERVAL_MS ({2 * values['poll_interval_ms']} ms)"
        )
    if values["smtp_host"] and not values["smtp_to"]:
        problems.append(
            "HAVEN_SMTP_TO: missing; expected recipients when HAVEN_SMTP_HOST is set"
        )
    if values["alert_webhook_url"] and values["alert_webhook_secret"] is None:
        problems.append(
            "HAVEN_ALERT_WEBHOOK_SECRET: missing; expected a whsec_ secret "
            "when HAVEN_ALERT_WEBHOOK_URL is set"
        )
    return problems


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(
            f"HAVEN_CONFIG: cannot read {str(path)!r} ({exc.strerror}); "
            "expected a readable TOML file"
        )
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"HAVEN_CONFIG: {str(path)!r} is not valid TOML ({exc})")
        return {}
    known = {}
    for key, value in document.items():
        if key not in _BY_KEY:
            problems.append(
                f"{path}: unknown key {key!r}; expected one of "
                f"{', '.join(sorted(_BY_KEY))}"
            )
            continue
        known[key] = value
    return known
