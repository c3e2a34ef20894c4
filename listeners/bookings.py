"""Booking rewards: one intent per Aurora booking, moved by its lifecycle events.

``booking.confirmed``, ``booking.completed`` and ``booking.cancelled`` share
the intent keyed by ``booking_id``. Events may arrive in any order and the
end state is the same as in order:

============================  =========================================
events received (any order)   intent
============================  =========================================
confirmed                     held
completed (with or without    ready, priced by the completion
confirmed)
cancelled with anything       voided, or reversed if already minted
============================  =========================================

The intent row is locked before its status is read, so a cancellation
racing the minting daemon (which moves ready to submitted under the same
lock) either voids the intent before it is sent or sees it sent and marks
it reversed; never both, never neither.
"""

from __future__ import annotations

import asyncpg

from haven import intents
from haven.intents import Intent
from haven.listeners.effects import DUPLICATE, INTENT_CREATED, INTENT_UPDATED, Effect
from haven.listeners.rules import Reward

PARTNER = "aurora"
CONFIRMED = "booking.confirmed"
COMPLETED = "booking.completed"
CANCELLED = "booking.cancelled"

VOIDABLE = (intents.HELD, intents.READY, intents.APPROVAL)
SENT = (intents.SUBMITTED, intents.MINED, intents.CONFIRMED)


async def apply(
    connection: asyncpg.Connection,
    event_type: str,
    reward: Reward,
    *,
    request_id: str | None,
) -> Effect:
    """Apply one booking event to its intent inside the caller's transaction.

    Idempotent: applying the same event twice changes nothing the second
    time and answers ``duplicate``.
    """
    intent_id = intents.derive_id(PARTNER, reward.kind, reward.source_key)
    intent = await intents.get(connection, intent_id, for_update=True)
    if intent is None:
        intent, created = await _create(connection, event_type, reward, request_id)
        if created:
            return Effect(INTENT_CREATED, intent, f"intent created {intent.status}")

    return await _advance(connection, intent, event_type, reward)


async def _create(
    connection: asyncpg.Connection,
    event_type: str,
    reward: Reward,
    request_id: str | None,
) -> tuple[Intent, bool]:
    intent, created = await intents.create(
        connection,
        partner=PARTNER,
        kind=reward.kind,
        source_key=reward.source_key,
        wallet=reward.wallet,
        amount_wei=reward.amount_wei,
        rule_version=reward.rule_version,
        status=first_status(event_type),
        request_id=request_id,
        reason=event_type,
    )
    if created and event_type == CANCELLED:
        # A cancellation that overtook its confirmation: the intent exists
        # only so the confirmation arriving later finds it voided.
        voided = await intents.transition(
            connection,
            intent.id,
            from_statuses=(intents.HELD,),
            to_status=intents.VOIDED,
            reason="cancelled before confirmation",
        )
        assert voided is not None
        intent = voided
    return intent, created


def first_status(event_type: str) -> str:
    """The status of an intent created by ``event_type``: ready once the
    stay is completed, held before."""
    return intents.READY if event_type == COMPLETED else intents.HELD


async def _advance(
    connection: asyncpg.Connection, intent: Intent, event_type: str, reward: Reward
) -> Effect:
    if event_type == COMPLETED and intent.status == intents.HELD:
        released = await intents.transition(
            connection,
            intent.id,
            from_statuses=(intents.HELD,),
            to_status=intents.READY,
            reason="booking completed",
            amount_wei=reward.amount_wei,
            wallet=reward.wallet,
            rule_version=reward.rule_version,
        )
        assert released is not None
        return Effect(INTENT_UPDATED, released, "intent released")

    if event_type == CANCELLED and intent.status in VOIDABLE:
        voided = await intents.transition(
            connection,
            intent.id,
            from_statuses=VOIDABLE,
            to_status=intents.VOIDED,
            reason="booking cancelled",
        )
        assert voided is not None
        return Effect(INTENT_UPDATED, voided, "intent voided")

    if event_type == CANCELLED and intent.status in SENT and not intent.reversed_at:
        await intents.mark_reversed(connection, intent.id)
        reversed_intent = await intents.get(connection, intent.id)
        return Effect(INTENT_UPDATED, reversed_intent, "intent reversed after mint")

    return Effect(DUPLICATE, intent)
