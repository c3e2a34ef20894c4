"""Booking lifecycles: any order of events ends where the in-order sequence ends."""

from __future__ import annotations

import asyncio
import itertools

from haven import intents

EVENTS = ("booking.confirmed", "booking.completed", "booking.cancelled")


def expected_status(received: tuple[str, ...]) -> str:
    """The end state of the in-order sequence of the same events."""
    if "booking.cancelled" in received:
        return "voided"
    if "booking.completed" in received:
        return "ready"
    return "held"


ORDERINGS = [
    ordering
    for size in (1, 2, 3)
    for subset in itertools.combinations(EVENTS, size)
    for ordering in itertools.permutations(subset)
]


async def test_every_ordering_of_booking_events_ends_as_in_order(partner, conn):
    for number, ordering in enumerate(ORDERINGS):
        booking_id = f"AUR-O{number}"
        for event_type in ordering:
            body = partner.envelope(event_type, partner.booking(booking_id))
            reply = await partner.send("aurora", body)
            assert reply.status == 202, (ordering, reply.body)

        intent_id = intents.derive_id("aurora", "booking", booking_id)
        status = await conn.fetchval(
            "SELECT status FROM intents WHERE id = $1", intent_id
        )
        assert status == expected_status(ordering), ordering


async def test_completion_prices_the_reward_even_after_a_confirmation(partner, conn):
    confirmed = partner.booking("AUR-P1", total_paid_cents=10000, nights=1)
    completed = partner.booking(
        "AUR-P1", total_paid_cents=45000, nights=3, wallet=partner.OTHER_WALLET
    )
    await partner.send("aurora", partner.envelope("booking.confirmed", confirmed))

    reply = await partner.send(
        "aurora", partner.envelope("booking.completed", completed)
    )

    assert reply.body["outcome"] == "intent_updated"
    assert reply.body["intent_status"] == "ready"
    row = await conn.fetchrow("SELECT amount_wei, wallet FROM intents")
    assert row["amount_wei"] == 1080 * 10**18
    assert row["wallet"] == partner.OTHER_WALLET


async def test_a_completion_then_a_late_confirmation_keeps_the_completion_price(
    partner, conn
):
    completed = partner.booking("AUR-P2", total_paid_cents=45000, nights=3)
    confirmed = partner.booking("AUR-P2", total_paid_cents=10000, nights=1)
    await partner.send("aurora", partner.envelope("booking.completed", completed))

    reply = await partner.send(
        "aurora", partner.envelope("booking.confirmed", confirmed)
    )

    assert reply.body["outcome"] == "duplicate"
    assert await conn.fetchval("SELECT amount_wei FROM intents") == 1080 * 10**18


async def test_a_cancellation_of_a_ready_intent_voids_it(partner, conn):
    booking = partner.booking("AUR-C1")
    await partner.send("aurora", partner.envelope("booking.completed", booking))

    reply = await partner.send("aurora", partner.envelope("booking.cancelled", booking))

    assert (reply.body["outcome"], reply.body["intent_status"]) == (
        "intent_updated",
        "voided",
    )
    history = await conn.fetch(
        "SELECT from_status, to_status FROM intent_events ORDER BY id"
    )
    assert [(r["from_status"], r["to_status"]) for r in history] == [
        (None, "ready"),
        ("ready", "voided"),
    ]


async def test_a_cancellation_after_the_mint_was_sent_marks_a_reversal(partner, conn):
    for sent_status in ("submitted", "mined", "confirmed"):
        booking = partner.booking(f"AUR-C2-{sent_status}")
        created = await partner.send(
            "aurora", partner.envelope("booking.completed", booking)
        )
        intent_id = bytes.fromhex(created.body["intent_id"][2:])
        await conn.execute(
            "UPDATE intents SET status = $1 WHERE id = $2", sent_status, intent_id
        )

        cancel = partner.envelope("booking.cancelled", booking)
        first = await partner.send("aurora", cancel)
        second = await partner.send("aurora", cancel)

        assert first.body["outcome"] == "intent_updated"
        assert first.body["intent_id"] == created.body["intent_id"]
        assert first.body["intent_status"] == sent_status
        assert second.body["outcome"] == "duplicate"
        row = await conn.fetchrow(
            "SELECT status, reversed_at FROM intents WHERE id = $1", intent_id
        )
        assert row["status"] == sent_status
        assert row["reversed_at"] is not None

    reversals = await conn.fetchval(
        "SELECT count(*) FROM intent_events WHERE to_status = 'reversed'"
    )
    assert reversals == 3


async def test_a_cancellation_racing_the_daemon_waits_and_sees_the_mint(
    listener, partner, conn, database_url
):
    booking = partner.booking("AUR-RACE")
    await partner.send("aurora", partner.envelope("booking.completed", booking))
    intent_id = intents.derive_id("aurora", "booking", "AUR-RACE")
    daemon = await listener.pool.acquire()
    try:
        transaction = daemon.transaction()
        await transaction.start()
        # The daemon locks the ready intent to send it ...
        await intents.get(daemon, intent_id, for_update=True)
        cancel = asyncio.create_task(
            partner.send("aurora", partner.envelope("booking.cancelled", booking))
        )
        await _wait_for_a_lock_wait(conn)
        # ... and records it as submitted while the cancellation waits.
        await intents.transition(
            daemon,
            intent_id,
            from_statuses=(intents.READY,),
            to_status=intents.SUBMITTED,
        )
        await transaction.commit()
    finally:
        await listener.pool.release(daemon)

    reply = await cancel

    assert reply.body["intent_status"] == "submitted"
    row = await conn.fetchrow("SELECT status, reversed_at FROM intents")
    assert row["status"] == "submitted"
    assert row["reversed_at"] is not None


async def _wait_for_a_lock_wait(conn) -> None:
    """Wait until some backend of this database waits on a row lock."""
    # PostgreSQL announces no lock wait; its activity view is the only
    # signal, so it is read until it shows one.
    for _ in range(1000):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no backend ever waited on the intent's row lock")


async def test_concurrent_confirmation_and_cancellation_end_voided(partner, conn):
    for number in range(5):
        booking = partner.booking(f"AUR-CC{number}")
        replies = await asyncio.gather(
            partner.send("aurora", partner.envelope("booking.confirmed", booking)),
            partner.send("aurora", partner.envelope("booking.cancelled", booking)),
        )
        assert {reply.status for reply in replies} == {202}

    statuses = await conn.fetch("SELECT status FROM intents")
    assert [row["status"] for row in statuses] == ["voided"] * 5
