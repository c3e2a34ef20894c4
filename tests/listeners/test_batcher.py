"""Group commit: concurrent deliveries share a transaction, and only succeed together
when each would have alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from loguru import logger

from harness.anvil import free_port
from harness.databases import with_port
from haven import db, intents, logs
from haven.errors import DatabaseUnavailableError
from haven.listeners import events, intake, rules
from haven.listeners.batcher import Batcher
from haven.listeners.deliveries import Delivery
from haven.listeners.rules import RuleBook

WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture
def rule_book(listener_settings) -> RuleBook:
    return rules.load(listener_settings.reward_rules)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    opened = await db.create_pool(database_url, min_size=0, max_size=4)
    yield opened
    await opened.close()


def entry(
    rule_book: RuleBook,
    booking_id: str,
    *,
    event_type: str = "booking.completed",
    delivery_id: str | None = None,
    request_id: str = "req-batch",
) -> intake.Entry:
    payload = {
        "type": event_type,
        "timestamp": "2026-12-01T10:00:00Z",
        "data": {
            "booking_id": booking_id,
            "guest_id": "G-5521",
            "wallet": WALLET,
            "total_paid_cents": 45000,
            "currency": "CAD",
            "nights": 3,
        },
    }
    event = events.read("aurora", payload)
    delivery = Delivery.of(
        "aurora",
        delivery_id or f"msg_{booking_id}_{event_type}",
        json.dumps(payload).encode(),
        events.canonical(payload),
        source="webhook",
        request_id=request_id,
    )
    return intake.Entry(delivery, event, rule_book.reward_for(event))


async def test_deliveries_waiting_together_commit_in_one_transaction(
    pool, rule_book, conn
):
    batcher = Batcher(pool, max_running=1)
    entries = [entry(rule_book, f"AUR-G{n}") for n in range(20)]

    answers = await asyncio.gather(*(batcher.apply(e) for e in entries))

    assert [a.body["outcome"] for a in answers] == ["intent_created"] * 20
    assert len({a.body["intent_id"] for a in answers}) == 20
    # now() is a transaction's start: the first delivery went alone at once,
    # the nineteen that queued behind it shared the next transaction.
    stamps = await conn.fetch(
        "SELECT created_at, count(*) FROM intents GROUP BY 1 ORDER BY 1"
    )
    assert [row["count"] for row in stamps] == [1, 19]
    assert await conn.fetchval("SELECT count(*) FROM partner_events") == 20
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status_code = 202"
        )
        == 20
    )


async def test_one_delivery_id_twice_in_a_flood_is_applied_once_and_replayed(
    pool, rule_book, conn
):
    batcher = Batcher(pool, max_running=1)
    twin = entry(rule_book, "AUR-T1", delivery_id="msg_twin")
    entries = [entry(rule_book, "AUR-T0"), twin, entry(rule_book, "AUR-T2"), twin]

    answers = await asyncio.gather(*(batcher.apply(e) for e in entries))

    assert answers[1].outcome == "intent_created"
    assert answers[3].outcome == "replayed"
    assert answers[3].body == answers[1].body
    assert await conn.fetchval("SELECT count(*) FROM intents") == 3


async def test_a_booking_confirmed_and_completed_in_one_batch_ends_ready(
    pool, rule_book, conn
):
    batcher = Batcher(pool, max_running=1)
    first = entry(rule_book, "AUR-W0")
    confirmed = entry(rule_book, "AUR-W1", event_type="booking.confirmed")
    completed = entry(rule_book, "AUR-W1", event_type="booking.completed")

    answers = await asyncio.gather(
        batcher.apply(first), batcher.apply(confirmed), batcher.apply(completed)
    )

    assert [(a.body["outcome"], a.body["intent_status"]) for a in answers[1:]] == [
        ("intent_created", "held"),
        ("intent_updated", "ready"),
    ]
    history = await conn.fetch(
        "SELECT from_status, to_status FROM intent_events WHERE intent_id = $1 "
        "ORDER BY id",
        intents.derive_id("aurora", confirmed.reward.kind, "AUR-W1"),
    )
    assert [(r["from_status"], r["to_status"]) for r in history] == [
        (None, "held"),
        ("held", "ready"),
    ]


async def test_a_delivery_that_fails_the_batch_fails_only_itself(pool, rule_book, conn):
    batcher = Batcher(pool, max_running=1)
    # PostgreSQL refuses a NUL character in text: this one cannot be stored.
    poisoned = entry(rule_book, "AUR-P3", request_id="req\x00nul")
    entries = [entry(rule_book, f"AUR-P{n}") for n in range(6)]
    entries[3] = poisoned

    answers = await asyncio.gather(
        *(batcher.apply(e) for e in entries), return_exceptions=True
    )

    assert isinstance(answers[3], asyncpg.DataError)
    good = [a for n, a in enumerate(answers) if n != 3]
    assert [a.body["outcome"] for a in good] == ["intent_created"] * 5
    keys = await conn.fetch("SELECT source_key FROM intents ORDER BY 1")
    assert [r["source_key"] for r in keys] == [f"AUR-P{n}" for n in (0, 1, 2, 4, 5)]
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE delivery_id LIKE '%P3%'"
        )
        == 0
    )


async def test_each_deliverys_log_lines_carry_its_own_request_id(pool, rule_book):
    batcher = Batcher(pool, max_running=1)
    records: list[Any] = []
    sink = logger.add(lambda message: records.append(message.record), level="INFO")

    async def send(number: int) -> None:
        request_id = f"req-own-{number}"
        # As the webhook handler does: its request's id is in the context.
        with logs.correlated(request_id):
            await batcher.apply(
                entry(rule_book, f"AUR-L{number}", request_id=request_id)
            )

    try:
        await asyncio.gather(*(send(n) for n in range(6)))
    finally:
        logger.remove(sink)

    created = [r for r in records if r["message"] == "intent created ready"]
    by_booking = {r["extra"]["delivery_id"]: r["extra"]["request_id"] for r in created}
    assert by_booking == {
        f"msg_AUR-L{n}_booking.completed": f"req-own-{n}" for n in range(6)
    }


async def test_two_listeners_moving_the_same_bookings_never_deadlock(
    database_url, rule_book, conn
):
    bookings = [f"AUR-K{n:03d}" for n in range(200)]
    pools = [await db.create_pool(database_url, max_size=4) for _ in range(2)]
    first, second = Batcher(pools[0]), Batcher(pools[1])
    records: list[Any] = []
    sink = logger.add(lambda message: records.append(message.record), level="WARNING")
    try:
        await asyncio.gather(
            *(
                first.apply(entry(rule_book, b, event_type="booking.confirmed"))
                for b in bookings
            )
        )

        # Each listener completes half the bookings and cancels the other
        # half, the other listener the reverse: a batch locks the intents
        # it completes and then those it cancels, which the other's batch
        # holds, and the other way round.
        half = len(bookings) // 2

        def moves(batcher: Batcher, completed: list[str], cancelled: list[str]):
            kinds = [("booking.completed", completed), ("booking.cancelled", cancelled)]
            return [
                batcher.apply(
                    entry(
                        rule_book,
                        b,
                        event_type=kind,
                        delivery_id=f"msg_{id(batcher)}_{b}_{kind}",
                    )
                )
                for kind, chosen in kinds
                for b in chosen
            ]

        await asyncio.gather(
            *moves(first, bookings[:half], bookings[half:]),
            *moves(second, bookings[half:], bookings[:half]),
        )
    finally:
        logger.remove(sink)
        for batcher, pool in zip((first, second), pools, strict=True):
            await batcher.close()
            await pool.close()

    assert [r["message"] for r in records if "batch" in r["message"]] == []
    statuses = await conn.fetch("SELECT DISTINCT status FROM intents")
    assert [r["status"] for r in statuses] == ["voided"]


async def test_without_postgresql_every_waiting_delivery_is_refused_and_none_kept(
    database_url, rule_book, conn
):
    closed = await db.create_pool(
        with_port(database_url, free_port()), min_size=0, max_size=2, timeout_s=2
    )
    batcher = Batcher(closed, max_running=1)
    try:
        answers = await asyncio.gather(
            *(batcher.apply(entry(rule_book, f"AUR-D{n}")) for n in range(5)),
            return_exceptions=True,
        )
    finally:
        await closed.close()

    assert all(isinstance(a, DatabaseUnavailableError) for a in answers), answers
    assert await conn.fetchval("SELECT count(*) FROM intents") == 0


async def test_close_returns_once_everything_handed_over_is_committed(
    pool, rule_book, conn
):
    batcher = Batcher(pool, max_running=1)
    waiting = [
        asyncio.create_task(batcher.apply(entry(rule_book, f"AUR-C{n}")))
        for n in range(10)
    ]
    await asyncio.sleep(0)  # every handler has handed its delivery over

    await batcher.close()

    assert batcher.waiting == 0
    assert all(task.done() for task in waiting)
    assert await conn.fetchval("SELECT count(*) FROM intents") == 10


def test_a_batcher_needs_room_for_one_delivery(pool):
    with pytest.raises(ValueError):
        Batcher(pool, max_batch=0)
