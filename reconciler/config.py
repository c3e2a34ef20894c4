"""The reconciler's knobs: grace periods, thresholds, schedule and channels.

One frozen object built once from the process settings and passed down, so
the matching, alerting and reporting code never reads settings themselves.
Every duration carries its unit in its name; every amount is in wei.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from haven.settings import Secret, Settings
from haven.types import ChecksumAddress, Wei

DEFAULT_INTERVAL_S = 60
DEFAULT_STALE_GRACE_S = 15 * 60
DEFAULT_MISSING_GRACE_S = 15 * 60
# About 250 mints at 200k gas and 1 gwei; enough warning to top up.
DEFAULT_LOW_BALANCE_WEI = Wei(5 * 10**16)
DEFAULT_STUCK_AFTER_BLOCKS = 10
DEFAULT_DAILY_REPORT_HOUR_UTC = 6


@dataclass(frozen=True)
class SmtpConfig:
    """Where alert emails go, and how to reach the relay."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    username: str | None = None
    password: Secret[str] | None = None
    tls: str = "starttls"  # none | starttls | tls
    timeout_s: float = 10.0


@dataclass(frozen=True)
class WebhookConfig:
    """The operators' endpoint for alerts and its Standard Webhooks secret."""

    url: str
    secret: Secret[str]
    timeout_s: float = 10.0


@dataclass(frozen=True)
class ReconcilerConfig:
    """Everything the reconciler decides with; see :meth:`from_settings`."""

    token_address: ChecksumAddress | None
    start_block: int = 0
    confirmations: int = 12
    reconcile_interval_s: int = DEFAULT_INTERVAL_S
    stale_intent_grace_s: int = DEFAULT_STALE_GRACE_S
    missing_on_chain_grace_s: int = DEFAULT_MISSING_GRACE_S
    low_balance_threshold_wei: Wei = DEFAULT_LOW_BALANCE_WEI
    stuck_after_blocks: int = DEFAULT_STUCK_AFTER_BLOCKS
    daily_report_hour_utc: int = DEFAULT_DAILY_REPORT_HOUR_UTC
    # Name of the tailer's row in tail_checkpoints; None takes the lowest row,
    # which is the conservative reading when several cursors exist.
    tail_checkpoint: str | None = None
    # A tailer this many blocks behind the confirmed head or fewer is waited
    # for by cutting at its checkpoint; further behind, runs are incomplete.
    max_tail_lag_blocks: int = 32
    smtp: SmtpConfig | None = None
    webhook: WebhookConfig | None = None
    delivery_attempts: int = 4
    delivery_backoff_s: float = 2.0
    log_scan_chunk_blocks: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ReconcilerConfig:
        """Build the config from ``settings``; keyword overrides win.

        Settings the lead has not added yet fall back to the defaults above.
        """
        # TODO: read these from declared Settings fields once they exist — until
        # then a deployment can only change them through constructor overrides.
        pending = _pending_settings(settings)
        base = cls(
            token_address=settings.token_address,
            start_block=settings.start_block,
            confirmations=settings.confirmations,
            **pending,
        )
        return replace(base, **overrides)


def _pending_settings(settings: Settings) -> dict[str, Any]:
    names = (
        "reconcile_interval_s",
        "stale_intent_grace_s",
        "missing_on_chain_grace_s",
        "low_balance_threshold_wei",
        "stuck_after_blocks",
        "daily_report_hour_utc",
        "tail_checkpoint",
        "max_tail_lag_blocks",
    )
    found = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
    smtp = _smtp(settings)
    webhook = _webhook(settings)
    if smtp is not None:
        found["smtp"] = smtp
    if webhook is not None:
        found["webhook"] = webhook
    return {key: value for key, value in found.items() if value is not None}


def _smtp(settings: Settings) -> SmtpConfig | None:
    host = getattr(settings, "smtp_host", None)
    recipients = getattr(settings, "smtp_to", None)
    if not host or not recipients:
        return None
    return SmtpConfig(
        host=host,
        port=getattr(settings, "smtp_port", 587),
        sender=getattr(settings, "smtp_from", "haven@localhost"),
        recipients=tuple(recipients),
        username=getattr(settings, "smtp_username", None),
        password=getattr(settings, "smtp_password", None),
        tls=getattr(settings, "smtp_tls", "starttls"),
    )


def _webhook(settings: Settings) -> WebhookConfig | None:
    url = getattr(settings, "alert_webhook_url", None)
    secret = getattr(settings, "alert_webhook_secret", None)
    if not url or secret is None:
        return None
    return WebhookConfig(url=url, secret=secret)
