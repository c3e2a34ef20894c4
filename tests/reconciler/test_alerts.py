"""Alerts: lifecycle, dedupe, and delivery by email and signed webhook.

Email goes to a real SMTP server (aiosmtpd on loopback); webhooks to a real
aiohttp receiver, whose requests are verified with the `standardwebhooks`
package as an operator's endpoint would. Back-off is zero, so retries cost
no time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from harness.anvil import free_port
from haven import db, metrics
from haven.daemon import alerts_outbox
from haven.listeners import alerts as security_alerts
from haven.reconciler import alerts, channels
from haven.reconciler.alerts import AlertStateError, Dispatcher
from haven.reconciler.config import SmtpConfig

RULE = "break.amount_mismatch"
SUBJECT = "0x" + "ab" * 32
EVIDENCE = {"intent_id": SUBJECT, "difference_wei": "1"}


@pytest.fixture
async def dispatcher(mailbox, receiver) -> AsyncIterator[Dispatcher]:
    _, smtp = mailbox
    _, hook = receiver
    found = Dispatcher(
        (channels.EmailChannel(smtp), channels.WebhookChannel(hook)),
        attempts=3,
        backoff_s=0.0,
    )
    yield found
    for channel in found.destinations:
        await channel.close()


async def raise_(pool: db.Pool, evidence: dict[str, Any] = EVIDENCE, **kw: Any):
    async with db.transaction(pool) as connection:
        return await alerts.raise_alert(
            connection,
            rule=kw.get("rule", RULE),
            subject=kw.get("subject", SUBJECT),
            severity=kw.get("severity", alerts.CRITICAL),
            evidence=evidence,
        )


async def test_a_repeat_with_the_same_evidence_is_counted_but_not_sent_again(
    pool, dispatcher, mailbox, receiver
):
    box, _ = mailbox
    endpoint, _ = receiver
    first, opened = await raise_(pool)
    await dispatcher.dispatch(pool)
    again, repeated = await raise_(pool)
    await dispatcher.dispatch(pool)

    assert (opened, repeated) == (alerts.NEW, alerts.REPEATED)
    assert again.id == first.id and again.occurrences == 2
    assert len(box.messages) == 1
    assert len(endpoint.requests) == 1
    assert again.status == alerts.OPEN


async def test_changed_evidence_is_sent_again_but_observed_values_are_not(
    pool, dispatcher, mailbox
):
    box, _ = mailbox
    await raise_(pool, {**EVIDENCE, "observed": {"balance_wei": "5"}})
    await dispatcher.dispatch(pool)
    _, moved = await raise_(pool, {**EVIDENCE, "observed": {"balance_wei": "4"}})
    await dispatcher.dispatch(pool)
    _, changed = await raise_(pool, {**EVIDENCE, "difference_wei": "2"})
    await dispatcher.dispatch(pool)

    assert (moved, changed) == (alerts.REPEATED, alerts.CHANGED)
    assert len(box.messages) == 2
    assert "(alert.changed)" in box.subjects[1]
    assert '"difference_wei": "2"' in box.messages[1].get_content()


async def test_a_resolved_alert_raised_again_is_reopened_and_sent_again(
    pool, dispatcher, mailbox
):
    box, _ = mailbox
    alert, _ = await raise_(pool)
    await dispatcher.dispatch(pool)
    async with db.transaction(pool) as connection:
        await alerts.resolve(connection, alert.id, by="ops", note="fixed by hand")
    reopened, outcome = await raise_(pool)
    await dispatcher.dispatch(pool)

    assert outcome == alerts.REOPENED
    assert reopened.status == alerts.OPEN
    assert reopened.resolved_at is None
    assert [s.split("(")[-1] for s in box.subjects] == [
        "alert.opened)",
        "alert.reopened)",
    ]


async def test_the_lifecycle_goes_open_acknowledged_resolved_and_is_recorded(pool):
    alert, _ = await raise_(pool)
    async with db.transaction(pool) as connection:
        acked = await alerts.acknowledge(connection, alert.id, by="alice")
        with pytest.raises(AlertStateError, match="acknowledged"):
            await alerts.acknowledge(connection, alert.id, by="bob")
    async with db.transaction(pool) as connection:
        resolved = await alerts.resolve(connection, alert.id, by="bob")
        history = await alerts.history(connection, alert.id)

    assert acked.status == alerts.ACKNOWLEDGED
    assert acked.acknowledged_by == "alice"
    assert resolved.status == alerts.RESOLVED
    assert resolved.resolved_by == "bob"
    assert [(h["to_status"], h["actor"]) for h in history] == [
        (alerts.OPEN, "reconciler"),
        (alerts.ACKNOWLEDGED, "alice"),
        (alerts.RESOLVED, "bob"),
    ]


async def test_accepting_needs_a_note_and_holds_until_the_evidence_changes(
    pool, dispatcher, mailbox
):
    box, _ = mailbox
    alert, _ = await raise_(pool)
    await dispatcher.dispatch(pool)
    async with db.transaction(pool) as connection:
        with pytest.raises(ValueError, match="note"):
            await alerts.accept(connection, alert.id, by="ops", note="  ")
        accepted = await alerts.accept(
            connection, alert.id, by="ops", note="known rounding, partner agreed"
        )
    _, same = await raise_(pool)
    await dispatcher.dispatch(pool)
    _, changed = await raise_(pool, {**EVIDENCE, "difference_wei": "9"})
    await dispatcher.dispatch(pool)

    assert accepted.status == alerts.ACCEPTED
    assert accepted.note == "known rounding, partner agreed"
    assert (same, changed) == (alerts.REPEATED, alerts.REOPENED)
    assert len(box.messages) == 2


async def test_an_unknown_alert_id_is_a_lookup_error(pool):
    async with db.transaction(pool) as connection:
        with pytest.raises(LookupError):
            await alerts.acknowledge(connection, 999_999, by="ops")


async def test_the_email_is_rendered_from_the_stored_evidence(
    pool, dispatcher, mailbox
):
    box, smtp = mailbox
    alert, _ = await raise_(pool)
    await dispatcher.dispatch(pool)

    [message] = box.messages
    body = message.get_content()
    assert message["Subject"] == f"[haven critical] {RULE} {SUBJECT} (alert.opened)"
    assert message["To"] == smtp.recipients[0]
    assert f"#{alert.id}" in body
    assert '"difference_wei": "1"' in body


async def test_the_webhook_is_signed_the_standard_webhooks_way(
    pool, dispatcher, receiver
):
    endpoint, _ = receiver
    alert, _ = await raise_(pool)
    await dispatcher.dispatch(pool)

    [payload] = endpoint.verified()
    headers, _ = endpoint.requests[0]
    assert payload["type"] == "alert.opened"
    assert payload["data"]["id"] == alert.id
    assert payload["data"]["evidence"] == EVIDENCE
    assert headers["webhook-id"].startswith(f"alert_{alert.id}_")


async def test_a_forged_signature_fails_verification(pool, dispatcher, receiver):
    endpoint, _ = receiver
    await raise_(pool)
    await dispatcher.dispatch(pool)
    headers, body = endpoint.requests[0]

    with pytest.raises(WebhookVerificationError, match="signature"):
        Webhook(endpoint.secret).verify(body.replace(b"critical", b"info"), headers)


async def test_a_failing_webhook_is_retried_and_then_delivered(
    pool, dispatcher, receiver
):
    endpoint, _ = receiver
    endpoint.statuses = [503, 500]
    alert, _ = await raise_(pool)

    results = await dispatcher.dispatch(pool)
    async with pool.acquire() as connection:
        recorded = await alerts.deliveries(connection, alert.id)

    webhook = [r for r in results if r.channel == channels.WEBHOOK]
    assert [(r.is_delivered, r.attempts) for r in webhook] == [(True, 3)]
    assert len({h["webhook-id"] for h, _ in endpoint.requests}) == 1
    assert [(d["channel"], d["delivered"]) for d in recorded] == [
        (channels.EMAIL, True),
        (channels.WEBHOOK, True),
    ]


async def test_a_dead_webhook_is_recorded_and_alerted_by_email_only(
    pool, dispatcher, mailbox, receiver
):
    box, _ = mailbox
    endpoint, _ = receiver
    endpoint.always = 500
    alert, _ = await raise_(pool)

    await dispatcher.dispatch(pool)
    async with pool.acquire() as connection:
        recorded = await alerts.deliveries(connection, alert.id)
        [failure] = await alerts.find(
            connection, rule=alerts.DELIVERY_FAILED_RULE, subject=channels.WEBHOOK
        )

    assert [(d["channel"], d["delivered"], d["attempts"]) for d in recorded] == [
        (channels.EMAIL, True, 1),
        (channels.WEBHOOK, False, 3),
    ]
    assert failure.evidence["channel"] == channels.WEBHOOK
    assert any(alerts.DELIVERY_FAILED_RULE in s for s in box.subjects)
    # The webhook only ever saw the original alert, never its own failure.
    assert {h["webhook-id"] for h, _ in endpoint.requests} == {
        endpoint.requests[0][0]["webhook-id"]
    }


def deliveries_counted(channel: str, outcome: str) -> float:
    """Read haven_alert_deliveries_total{channel, outcome} from the registry."""
    found = metrics.EVENTS.get_sample_value(
        "haven_alert_deliveries_total", {"channel": channel, "outcome": outcome}
    )
    return found or 0.0


async def test_every_recorded_delivery_is_counted_by_channel_and_outcome(
    pool, dispatcher, receiver
):
    endpoint, _ = receiver
    endpoint.always = 500
    labels = [
        (channel, outcome)
        for channel in (channels.EMAIL, channels.WEBHOOK)
        for outcome in ("sent", "failed")
    ]
    before = {label: deliveries_counted(*label) for label in labels}
    await raise_(pool)

    await dispatcher.dispatch(pool)
    rows = await pool.fetch(
        "SELECT channel, delivered, count(*) AS n FROM alert_deliveries "
        "GROUP BY channel, delivered"
    )

    recorded = {
        (row["channel"], "sent" if row["delivered"] else "failed"): row["n"]
        for row in rows
    }
    grew = {label: deliveries_counted(*label) - before[label] for label in labels}
    assert recorded == {(channels.EMAIL, "sent"): 2, (channels.WEBHOOK, "failed"): 1}
    assert grew == {label: recorded.get(label, 0) for label in labels}


async def test_a_dead_smtp_relay_is_alerted_through_the_webhook(
    pool, receiver, mailbox
):
    endpoint, hook = receiver
    _, smtp = mailbox
    dead = SmtpConfig(
        host="127.0.0.1",
        port=free_port(),
        sender=smtp.sender,
        recipients=smtp.recipients,
        tls="none",
        timeout_s=2,
    )
    dispatcher = Dispatcher(
        (channels.EmailChannel(dead), channels.WebhookChannel(hook)),
        attempts=2,
        backoff_s=0.0,
    )
    await raise_(pool)

    try:
        await dispatcher.dispatch(pool)
    finally:
        for channel in dispatcher.destinations:
            await channel.close()

    rules = [p["data"]["rule"] for p in endpoint.verified()]
    assert rules == [RULE, alerts.DELIVERY_FAILED_RULE]
    assert endpoint.verified()[1]["data"]["subject"] == channels.EMAIL


async def test_alerts_of_the_daemon_outbox_are_delivered_and_reopened(
    pool, dispatcher, mailbox
):
    box, _ = mailbox
    async with db.transaction(pool) as connection:
        raised = await alerts_outbox.raise_alert(
            connection, "tx_stuck", "0xsigner:7", alerts_outbox.WARNING, {"nonce": 7}
        )
    await dispatcher.dispatch(pool)
    async with db.transaction(pool) as connection:
        await alerts.resolve(connection, raised.id, by="ops")
        await alerts_outbox.raise_alert(
            connection, "tx_stuck", "0xsigner:7", alerts_outbox.WARNING, {"nonce": 7}
        )
    await dispatcher.dispatch(pool)
    async with pool.acquire() as connection:
        alert = await alerts.get(connection, raised.id)

    assert alert is not None and alert.status == alerts.OPEN
    assert [s.split("(")[-1] for s in box.subjects] == [
        "alert.opened)",
        "alert.reopened)",
    ]


async def test_a_security_alert_of_the_intake_is_adopted_and_sent_once(
    pool, dispatcher, mailbox
):
    box, _ = mailbox
    async with db.transaction(pool) as connection:
        recorded = await security_alerts.record(
            connection,
            kind=security_alerts.DELIVERY_ID_REUSED,
            partner="aurora",
            subject="msg_1",
            detail={"body_sha256": "00"},
            request_id="req-1",
        )
    await dispatcher.dispatch(pool)
    await dispatcher.dispatch(pool)
    async with pool.acquire() as connection:
        [alert] = await alerts.find(
            connection, rule="security." + security_alerts.DELIVERY_ID_REUSED
        )

    assert alert.subject == f"aurora:msg_1:#{recorded}"
    assert alert.evidence["detail"] == {"body_sha256": "00"}
    assert alert.occurrences == 1
    assert len(box.messages) == 1
