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

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Entry:
    """One delivery to apply: its event, the reward the rules gave it (None
    when the event earns none or is of an unknown type) and, for a webhook,
    its attempt."""

    delivery: Delivery
    event: events.Event
    reward: Reward | None
    attempt: Attempt | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(partner, delivery id): no two entries of one batch may share it."""
        return (self.delivery.partner, self.delivery.delivery_id)


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
    priced = await price(pool, rules, delivery, event, attempt=attempt)
    if isinstance(priced, Answer):
        return priced
    (answer,) = await apply_many(pool, [priced])
    return answer


async def price(
    pool: asyncpg.Pool,
    rules: RuleBook,
    delivery: Delivery,
    event: events.Event,
    *,
    attempt: Attempt | None = None,
) -> Entry | Answer:
    """Price ``event`` by ``rules`` into an entry to apply.

    When the rules refuse one of its values, a delivery id answered before
    gets that answer again (the rules may have changed since); a new one
    raises InvalidEventError.
    """
    try:
        reward = rules.reward_for(event) if event.is_known else None
    except InvalidEventError:
        known = await recall(pool, delivery)
        if known is not None:
            return known
        raise
    return Entry(delivery, event, reward, attempt)


async def apply_many(pool: asyncpg.Pool, entries: Sequence[Entry]) -> list[Answer]:
    """Apply ``entries`` in one transaction; return their answers in order.

    Each entry is answered as :func:`apply` would answer it alone; what one
    changes, the next sees. Either every entry is applied or none is: any
    error rolls the whole batch back (DatabaseUnavailableError if
    PostgreSQL is down). Delivery ids must be distinct (ValueError).

    The common entries cost a fixed number of statements whatever their
    number: the claims, the new intents and the closing rows are each
    written set-wise. An entry that meets existing state (a known delivery
    id, an intent to move) takes its own statements.
    """
    if not entries:
        return []
    async with db.transaction(pool) as connection:
        claimed = await deliveries.claim_many(
            connection, [entry.delivery for entry in entries]
        )
        answers: dict[int, Answer] = {}
        fresh: list[int] = []
        for index, item in enumerate(entries):
            if item.key in claimed:
                fresh.append(index)
                continue
            stored = await deliveries.get(connection, *item.key)
            assert stored is not None
            answers[index] = await _settle_known(connection, stored, item.delivery)

        made = await _effects(connection, [entries[index] for index in fresh])
        closes: list[tuple[Entry, Effect, Answer]] = []
        for index, effect in zip(fresh, made, strict=True):
            item = entries[index]
            answers[index] = _answer(effect, item.event, item.delivery)
            closes.append((item, effect, answers[index]))
        await _close(connection, closes)

    for item, effect, _ in closes:
        if item.attempt is not None:
            item.attempt.logged = True
        _log(effect, item.event, item.delivery)
    return [answers[index] for index in range(len(entries))]


async def _effects(
    connection: asyncpg.Connection, entries: Sequence[Entry]
) -> list[Effect]:
    """Apply each entry's effect, creating the new intents set-wise.

    A rewarded entry whose intent does not exist yet is created with the
    others in one statement; an entry whose intent exists (a booking's
    next event), or was taken meanwhile by a concurrent transaction or an
    earlier entry, goes on to the path of one event, which finds it.
    """
    candidates = [_new_intent(item) for item in entries]
    # Every existing intent the batch may touch (a booking's earlier event, a
    # cancellation's booking, a re-emitted event) is locked here, at once and
    # in id order, before anything is decided: one order for every
    # transaction, so two listeners' batches never each hold an intent the
    # other waits for.
    touched = {found for found in map(_touched, entries) if found is not None}
    existing = (
        await intents.get_many(connection, sorted(touched), for_update=True)
        if touched
        else {}
    )
    # The first entry of each free intent id creates it; a later one of the
    # same id finds it created, as it would after the first in its own
    # transaction.
    news: dict[int, intents.NewIntent] = {}
    taken = set(existing)
    for index, new in enumerate(candidates):
        if new is not None and new.id not in taken:
            news[index] = new
            taken.add(new.id)
    created = await intents.create_many(connection, list(news.values())) if news else {}

    made: list[Effect] = []
    for index, item in enumerate(entries):
        new = news.get(index)
        if new is not None and new.id in created:
            intent = created[new.id]
            change = f"intent created {intent.status}"
            made.append(Effect(effects.INTENT_CREATED, intent, change))
        else:
            effect = await _effect(connection, item.event, item.reward, item.delivery)
            made.append(effect)
    return made


def _touched(item: Entry) -> bytes | None:
    """The id of the intent an entry may create or change, if any."""
    reward, data = item.reward, item.event.data
    if reward is None or data is None or isinstance(data, events.Stake):
        return None
    partner = (
        bookings.PARTNER if isinstance(data, events.Booking) else item.event.partner
    )
    return intents.derive_id(partner, reward.kind, reward.source_key)


def _new_intent(item: Entry) -> intents.NewIntent | None:
    """The intent an entry creates if its key is free, or None when its
    effect is not a plain creation (no reward, a stake, a cancellation)."""
    reward, data = item.reward, item.event.data
    if reward is None or data is None or isinstance(data, events.Stake):
        return None
    partner, status, reason = item.event.partner, intents.READY, None
    if isinstance(data, events.Booking):
        if item.event.type == bookings.CANCELLED:
            return None
        partner = bookings.PARTNER
        status, reason = bookings.first_status(item.event.type), item.event.type
    return intents.NewIntent(
        partner=partner,
        kind=reward.kind,
        source_key=reward.source_key,
        wallet=reward.wallet,
        amount_wei=reward.amount_wei,
        rule_version=reward.rule_version,
        status=status,
        request_id=item.delivery.request_id,
        reason=reason,
    )


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


# The closing statement of a batch writes three tables in one round trip:
# each delivery's event (``partner_events``, shaped by events.py), its
# answer replacing the claim's placeholder (``webhook_deliveries``) and, for
# a webhook, its attempt (``webhook_attempts``, shaped by attempts.py). It
# takes one array per column. It is the busiest statement of the listener.
_CLOSE = f"""
WITH closing AS (
    SELECT *
      FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                  $5::text[], $6::text[], $7::bytea[], $8::text[],
                  $9::integer[], $10::text[],
                  $11::text[], $12::text[], $13::integer[], $14::text[],
                  $15::text[], $16::text[], $17::text[])
           AS closing (partner, delivery_id, event_type, occurred_at, payload,
                       outcome, intent_id, request_id, status_code, response,
                       a_partner, a_delivery_id, a_status_code, a_outcome,
                       a_reason, a_remote_addr, a_request_id)
), event AS (
    INSERT INTO partner_events (partner, delivery_id, event_type, occurred_at,
                                payload, outcome, intent_id, request_id)
    SELECT partner, delivery_id, event_type, occurred_at, payload::jsonb,
           outcome, intent_id, request_id
      FROM closing
    ON CONFLICT (partner, delivery_id) DO NOTHING
), attempt AS (
    INSERT INTO webhook_attempts ({attempts.COLUMNS})
    SELECT a_partner, a_delivery_id, a_status_code, a_outcome, a_reason,
           a_remote_addr, a_request_id
      FROM closing
     WHERE a_partner IS NOT NULL
)
UPDATE webhook_deliveries AS delivery
   SET status_code = closing.status_code, response = closing.response::jsonb
  FROM closing
 WHERE delivery.partner = closing.partner
   AND delivery.delivery_id = closing.delivery_id
"""
_NO_ATTEMPT = (None,) * 7


async def _close(
    connection: asyncpg.Connection, closes: Sequence[tuple[Entry, Effect, Answer]]
) -> None:
    rows = [
        (
            item.delivery.partner,
            item.delivery.delivery_id,
            item.event.type,
            item.event.occurred_at,
            db.jsonb_text(events.stored_payload(item.event)),
            effect.stored_outcome,
            effect.intent.id if effect.intent else None,
            item.delivery.request_id,
            answer.status_code,
            db.jsonb_text(answer.body),
            *(attempts.columns(item.attempt, answer) if item.attempt else _NO_ATTEMPT),
        )
        for item, effect, answer in closes
    ]
    if rows:
        columns = zip(*rows, strict=True)
        await connection.execute(_CLOSE, *(list(column) for column in columns))


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
        request_id=delivery.request_id,
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
    # Bound here, not taken from the context: a batch runs in no request's.
    logger.bind(
        request_id=delivery.request_id,
        partner=delivery.partner,
        delivery_id=delivery.delivery_id,
        event_type=event.type,
        intent_id=intent_id_hex(intent.id) if intent else None,
        amount_wei=intent.amount_wei if intent else None,
        source=delivery.source,
    ).info(effect.change)
