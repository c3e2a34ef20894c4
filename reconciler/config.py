"""The reconciler's knobs: grace periods, thresholds, schedule and channels.

One frozen object built once from the process settings and passed down, so
the matching, alerting and reporting code never reads settings themselves.
Every duration carries its unit in its name; every amount is in wei.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from haven.settings import FIELDS, Secret, Settings
from haven.types import ChecksumAddress, Wei

# Constructor defaults are the declared settings' defaults, never copies.
_DEFAULTS: dict[str, Any] = {spec.key: spec.default for spec in FIELDS}


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
    reconcile_interval_s: int = _DEFAULTS["reconcile_interval_s"]
    stale_intent_grace_s: int = _DEFAULTS["stale_intent_grace_s"]
    missing_on_chain_grace_s: int = _DEFAULTS["missing_on_chain_grace_s"]
    low_balance_threshold_wei: Wei = _DEFAULTS["low_balance_threshold_wei"]
    stuck_after_blocks: int = _DEFAULTS["stuck_after_blocks"]
    daily_report_hour_utc: int = _DEFAULTS["daily_report_hour_utc"]
    # Name of the tailer's row in tail_checkpoints; None takes the lowest row,
    # which is the conservative reading when several cursors exist.
    tail_checkpoint: str | None = None
    # A tailer this many blocks behind the confirmed head or fewer is waited
    # for by cutting at its checkpoint; further behind, runs are incomplete.
    max_tail_lag_blocks: int = _DEFAULTS["max_tail_lag_blocks"]
    smtp: SmtpConfig | None = None
    webhook: WebhookConfig | None = None
    delivery_attempts: int = 4
    delivery_backoff_s: float = 2.0
    log_scan_chunk_blocks: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ReconcilerConfig:
        """Build the config from ``settings``; keyword overrides win (tests)."""
        base = cls(
            token_address=settings.token_address,
            start_block=settings.start_block,
            confirmations=settings.confirmations,
            reconcile_interval_s=settings.reconcile_interval_s,
            stale_intent_grace_s=settings.stale_intent_grace_s,
            missing_on_chain_grace_s=settings.missing_on_chain_grace_s,
            low_balance_threshold_wei=settings.low_balance_threshold_wei,
            stuck_after_blocks=settings.stuck_after_blocks,
            daily_report_hour_utc=settings.daily_report_hour_utc,
            max_tail_lag_blocks=settings.max_tail_lag_blocks,
            smtp=_smtp(settings),
            webhook=_webhook(settings),
        )
        return replace(base, **overrides)


def _smtp(settings: Settings) -> SmtpConfig | None:
    if not settings.smtp_host or not settings.smtp_to:
        return None
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_from,
        recipients=settings.smtp_to,
        username=settings.smtp_username,
        password=settings.smtp_password,
        tls=settings.smtp_tls,
    )


def _webhook(settings: Settings) -> WebhookConfig | None:
    # load() refuses a URL without a secret; both are checked for the type.
    url, secret = settings.alert_webhook_url, settings.alert_webhook_secret
    if not url or secret is None:
        return None
    return WebhookConfig(url=url, secret=secret)
