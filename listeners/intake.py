"""Intake: the one database transaction that applies a partner event.

In that transaction the delivery id is claimed, the event's effect is
applied (an intent created or moved, a stake recorded, or the event parked),
the event is stored in ``partner_events``, the answer is stored for replays
and a webhook's attempt is logged. Either all of it commits or none of it
does; nothing on this path calls a chain, a mail server or a partner.

Two deliveries of one event under the same id are settled by the claim: one
transaction applies it, the others wait for it and replay its answer. Two
deliveries under different ids (a re-emitted event) are settled by the
intent's business key: the second finds the intent and answers ``duplicate``
with the same intent id.
"""

from __future__ import annotations

import asyncpg
from loguru import logger

from haven import db, intents
from haven.listeners import (
    alerts,
    attempts,
    bookings,
    deliveries,
    effects,
    events,
    stakes,
)
from haven.listeners.answers import Answer, Rejection, accepted
from haven.listeners.attempts import Attempt
from haven.listeners.deliveries import Delivery, StoredDelivery
from haven.listeners.effects import Effect
from haven.listeners.events import InvalidEventError
from haven.listeners.rules import Reward, RuleBook
from haven.types import intent_id_hex


async def recall(pool: asyncpg.Pool, delivery: Delivery) -> Answer | None:
    """Answer a delivery id seen before, or return None for a new one.

    The same body gets the stored answer again; another body gets 409 and a
    security alert. Raise DatabaseUnavailableError if PostgreSQL is down.
    """
    # Most deliveries are new: one plain read says so, with no transaction
    # around it to open and commit.
    async with db.translate_errors(), pool.acquire() as connection:
        stored = await deliveries.get(
            connection, delivery.partner, delivery.delivery_id
        )
    if stored is None:
        return None
    if stored.is_same_body(delivery):
        return stored.replay()
    async with db.transaction(pool) as connection:
        return await _settle_known(connection, stored, delivery)


async def apply(
    pool: asyncpg.Pool,
    rules: RuleBook,
    delivery: Delivery,
    event: events.Event,
    *,
    attempt: Attempt | None = None,
) -> Answer:
    """Apply ``event`` once and return its answer; safe to call again and concurrently.

    A delivery id seen before is answered as it was (or 409 for another
    body), so callers need not :func:`recall` first. ``attempt``, when
    given, is written in the same transaction as the answer and marked
    ``logged``. Raise InvalidEventError when the rules refuse a value of a
    new event, and DatabaseUnavailableError if PostgreSQL is down (nothing
    is then applied).
    """
    try:
        reward = rules.reward_for(event) if event.is_known else None
    except InvalidEventError:
        # The rules may have changed since an earlier delivery of this id
        # was accepted: that delivery is answered as it was.
        known = await recall(pool, delivery)
        if known is not None:
            return known
        raise

    async with db.transaction(pool) as connection:
        if not await deliveries.claim(connection, delivery):
            stored = await deliveries.get(
                connection, delivery.partner, delivery.delivery_id
            )
            assert stored is not None
            return await _settle_known(connection, stored, delivery)

        effect = await _effect(connection, event, reward, delivery)
        answer = _answer(effect, event, delivery)
        await _close(connection, event, effect, delivery, answer, attempt)

    if attempt is not None:
        attempt.logged = True
    _log(effect, event, delivery)
    return answer


async def _effect(
    connection: asyncpg.Connection,
    event: events.Event,
    reward: Reward | None,
    delivery: Delivery,
) -> Effect:
    data = event.data
    if data is None:
        return Effect(effects.PARKED, change="event parked")

    if isinstance(data, events.Stake):
        new = await stakes.record(
            connection,
            event.partner,
            data,
            occurred_at=event.occurred_at,
            delivery_id=delivery.delivery_id,
        )
        if new:
            return Effect(effects.RECORDED, change=f"stake {data.action} recorded")
        return Effect(effects.DUPLICATE)

    if reward is None:
        return Effect(effects.RECORDED, change="event recorded without reward")

    if isinstance(data, events.Booking):
        return await bookings.apply(
            connection, event.type, reward, request_id=delivery.request_id
        )
    return await _grant(connection, event.partner, reward, delivery)


async def _grant(
    connection: asyncpg.Connection,
    partner: str,
    reward: Reward,
    delivery: Delivery,
) -> Effect:
    """Create the ready intent of a one-off reward, unless its key already has one."""
    intent, created = await intents.create(
        connection,
        partner=partner,
        kind=reward.kind,
        source_key=reward.source_key,
        wallet=reward.wallet,
        amount_wei=reward.amount_wei,
        rule_version=reward.rule_version,
        status=intents.READY,
        request_id=delivery.request_id,
    )
    if created:
        return Effect(effects.INTENT_CREATED, intent, "intent created ready")
    return Effect(effects.DUPLICATE, intent)


# The closing statement of an applied delivery writes three tables in one
# round trip: the event (``partner_events``, shaped by events.py), the answer
# replacing the claim's placeholder (``webhook_deliveries``) and, for a
# webhook, its attempt (``webhook_attempts``, shaped by attempts.py). It is
# the busiest statement of the listener.
_CLOSE = f"""
WITH event AS (
    INSERT INTO partner_events (partner, delivery_id, event_type, occurred_at,
                                payload, outcome, intent_id, request_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (partner, delivery_id) DO NOTHING
), attempt AS (
    INSERT INTO webhook_attempts ({attempts.COLUMNS})
    SELECT $11::text, $12::text, $13::integer, $14::text, $15::text,
           $16::text, $17::text
     WHERE $11::text IS NOT NULL
)
UPDATE webhook_deliveries SET status_code = $9, response = $10
 WHERE partner = $1 AND delivery_id = $2
"""
_NO_ATTEMPT = (None,) * 7


async def _close(
    connection: asyncpg.Connection,
    event: events.Event,
    effect: Effect,
    delivery: Delivery,
    answer: Answer,
    attempt: Attempt | None,
) -> None:
    await connection.execute(
        _CLOSE,
        delivery.partner,
        delivery.delivery_id,
        event.type,
        event.occurred_at,
        events.stored_payload(event),
        effect.stored_outcome,
        effect.intent.id if effect.intent else None,
        delivery.request_id,
        answer.status_code,
        answer.body,
        *(attempts.columns(attempt, answer) if attempt else _NO_ATTEMPT),
    )


def _answer(effect: Effect, event: events.Event, delivery: Delivery) -> Answer:
    intent = effect.intent
    return accepted(
        outcome=effect.outcome,
        intent_id=intent_id_hex(intent.id) if intent else None,
        intent_status=intent.status if intent else None,
        delivery_id=delivery.delivery_id,
        event_type=event.type,
    )


async def _settle_known(
    connection: asyncpg.Connection, stored: StoredDelivery, delivery: Delivery
) -> Answer:
    if stored.is_same_body(delivery):
        return stored.replay()

    await alerts.record(
        connection,
        kind=alerts.DELIVERY_ID_REUSED,
        partner=delivery.partner,
        subject=delivery.delivery_id,
        detail={
            "first_source": stored.source,
            "first_body_sha256": stored.body_sha256.hex(),
            "body_sha256": delivery.body_sha256.hex(),
            "source": delivery.source,
        },
        request_id=delivery.request_id,
    )
    logger.warning(
        "delivery id reused with another body: answered 409 and raised a "
        "security alert; check the partner's sender for tampering or a bug",
        partner=delivery.partner,
        delivery_id=delivery.delivery_id,
    )
    return Rejection(
        409,
        "delivery_id_reused",
        f"delivery id {delivery.delivery_id} was already used with another body",
    ).to_answer()


def _log(effect: Effect, event: events.Event, delivery: Delivery) -> None:
    if effect.change is None:
        return
    intent = effect.intent
    logger.bind(
        partner=delivery.partner,
        delivery_id=delivery.delivery_id,
        event_type=event.type,
        intent_id=intent_id_hex(intent.id) if intent else None,
        amount_wei=intent.amount_wei if intent else None,
        source=delivery.source,
    ).info(effect.change)
