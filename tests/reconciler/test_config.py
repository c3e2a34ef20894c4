"""The reconciler's config: read from the declared settings, overridable in tests."""

from __future__ import annotations

from cryptography.fernet import Fernet

from haven import settings
from haven.reconciler.config import ReconcilerConfig, SmtpConfig, WebhookConfig
from haven.settings import Secret
from haven.types import Wei

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REQUIRED = {
    "HAVEN_DATABASE_URL": "postgresql://haven@127.0.0.1:5432/haven",
    "HAVEN_RPC_URL": "http://127.0.0.1:8545",
    "HAVEN_CHAIN_ID": "31337",
    "HAVEN_WEBHOOK_SECRETS_AURORA": WHSEC,
    "HAVEN_WEBHOOK_SECRETS_TRIBE": WHSEC,
    "HAVEN_MASTER_KEY": Fernet.generate_key().decode(),
    "HAVEN_ADMIN_API_KEYS": "reconciler-test-key-0123456789",
}


def test_every_knob_and_channel_is_read_from_the_settings():
    loaded = settings.load(
        REQUIRED
        | {
            "HAVEN_RECONCILE_INTERVAL_S": "30",
            "HAVEN_STALE_INTENT_GRACE_S": "41",
            "HAVEN_MISSING_ON_CHAIN_GRACE_S": "42",
            "HAVEN_LOW_BALANCE_THRESHOLD_WEI": "43",
            "HAVEN_STUCK_AFTER_BLOCKS": "44",
            "HAVEN_DAILY_REPORT_HOUR_UTC": "5",
            "HAVEN_MAX_TAIL_LAG_BLOCKS": "46",
            "HAVEN_SMTP_HOST": "smtp.example.net",
            "HAVEN_SMTP_PORT": "2525",
            "HAVEN_SMTP_TLS": "tls",
            "HAVEN_SMTP_USERNAME": "haven",
            "HAVEN_SMTP_PASSWORD": "relay-password",
            "HAVEN_SMTP_FROM": "alerts@example.net",
            "HAVEN_SMTP_TO": "ops@example.net,oncall@example.net",
            "HAVEN_ALERT_WEBHOOK_URL": "https://hooks.example.net/haven",
            "HAVEN_ALERT_WEBHOOK_SECRET": WHSEC,
        }
    )

    config = ReconcilerConfig.from_settings(loaded)

    assert (
        config.reconcile_interval_s,
        config.stale_intent_grace_s,
        config.missing_on_chain_grace_s,
        config.low_balance_threshold_wei,
        config.stuck_after_blocks,
        config.daily_report_hour_utc,
        config.max_tail_lag_blocks,
    ) == (30, 41, 42, Wei(43), 44, 5, 46)
    assert config.smtp == SmtpConfig(
        host="smtp.example.net",
        port=2525,
        sender="alerts@example.net",
        recipients=("ops@example.net", "oncall@example.net"),
        username="haven",
        password=Secret("relay-password"),
        tls="tls",
    )
    assert config.webhook == WebhookConfig(
        url="https://hooks.example.net/haven", secret=Secret(WHSEC)
    )


def test_without_a_relay_or_endpoint_no_channel_is_configured():
    config = ReconcilerConfig.from_settings(settings.load(REQUIRED))

    assert config.smtp is None
    assert config.webhook is None


def test_defaults_of_the_constructor_are_the_declared_settings_defaults():
    declared = ReconcilerConfig.from_settings(settings.load(REQUIRED))
    constructed = ReconcilerConfig(token_address=None)

    assert constructed == declared


def test_keyword_overrides_win_over_the_settings():
    loaded = settings.load(REQUIRED | {"HAVEN_STALE_INTENT_GRACE_S": "41"})

    config = ReconcilerConfig.from_settings(loaded, stale_intent_grace_s=5)

    assert config.stale_intent_grace_s == 5
