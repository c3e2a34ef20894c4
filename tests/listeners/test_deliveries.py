"""Replays and idempotency: delivery ids, business keys and concurrent deliveries."""

from __future__ import annotations

import asyncio
import dataclasses
from fractions import Fraction

import asyncpg

from haven import intents
from haven.listeners import deliveries, rules
from haven.types import Wei, checksum


def confirmed(partner, booking_id: str) -> dict:
    return partner.envelope("booking.confirmed", partner.booking(booking_id))


async def test_the_same_delivery_again_gets_the_original_answer(partner, conn):
    body = confirmed(partner, "AUR-D1")
    first = await partner.send("aurora", body, delivery_id="msg_d1")

    again = await partner.send("aurora", body, delivery_id="msg_d1")

    assert again.status == first.status == 202
    assert again.body == first.body
    assert again.body["outcome"] == "intent_created"
    assert again.headers[deliveries.REPLAY_HEADER] == "true"
    assert deliveries.REPLAY_HEADER not in first.headers
    assert await conn.fetchval("SELECT count(*) FROM intents") == 1
    assert await conn.fetchval("SELECT count(*) FROM partner_events") == 1


async def test_a_delivery_id_reused_with_another_body_is_409_and_an_alert(
    partner, conn
):
    await partner.send("aurora", confirmed(partner, "AUR-D2"), delivery_id="msg_d2")
    tampered = partner.envelope(
        "booking.completed", partner.booking("AUR-D2", total_paid_cents=9_999_999)
    )

    reply = await partner.send("aurora", tampered, delivery_id="msg_d2")

    assert reply.status == 409
    assert reply.error_code == "delivery_id_reused"
    alert = await conn.fetchrow("SELECT * FROM security_alerts")
    assert (alert["kind"], alert["partner"], alert["subject"]) == (
        "delivery_id_reused",
        "aurora",
        "msg_d2",
    )
    assert alert["request_id"] == reply.headers["X-Request-Id"]
    intent = await conn.fetchrow("SELECT status, amount_wei FROM intents")
    assert (intent["status"], intent["amount_wei"]) == ("held", 1080 * 10**18)


async def test_a_reused_delivery_id_with_a_malformed_body_is_still_a_conflict(
    partner,
):
    await partner.send("aurora", confirmed(partner, "AUR-D3"), delivery_id="msg_d3")

    reply = await partner.send("aurora", b"{not json", delivery_id="msg_d3")

    assert reply.status == 409


async def test_the_same_json_in_other_bytes_under_the_same_id_is_a_replay(partner):
    compact = b'{"type":"booking.confirmed","timestamp":"2026-12-01T10:00:00Z",'
    compact += b'"data":{"booking_id":"AUR-D4","guest_id":"G","wallet":"'
    compact += partner.WALLET.encode()
    compact += b'","total_paid_cents":100,"currency":"CAD","nights":1}}'
    spaced = b"  " + compact.replace(b',"', b', "').replace(b'":', b'" :') + b"\n"
    first = await partner.send("aurora", compact, delivery_id="msg_d4")

    again = await partner.send("aurora", spaced, delivery_id="msg_d4")

    assert again.status == 202
    assert again.body == first.body


async def test_a_refused_delivery_can_be_corrected_under_the_same_id(partner):
    wrong = partner.envelope(
        "booking.confirmed", partner.booking("AUR-D5", currency="XXX")
    )
    refused = await partner.send("aurora", wrong, delivery_id="msg_d5")

    fixed = await partner.send(
        "aurora", confirmed(partner, "AUR-D5"), delivery_id="msg_d5"
    )

    assert refused.status == 422
    assert fixed.status == 202


async def test_a_re_emitted_event_under_a_new_id_answers_the_same_intent(partner, conn):
    body = confirmed(partner, "AUR-D6")
    first = await partner.send("aurora", body, delivery_id="msg_d6_a")

    again = await partner.send("aurora", body, delivery_id="msg_d6_b")

    assert again.status == 202
    assert again.body["outcome"] == "duplicate"
    assert again.body["intent_id"] == first.body["intent_id"]
    assert await conn.fetchval("SELECT count(*) FROM intents") == 1
    outcomes = await conn.fetch(
        "SELECT outcome FROM partner_events ORDER BY delivery_id"
    )
    assert [row["outcome"] for row in outcomes] == ["applied", "ignored"]


async def test_fifty_concurrent_identical_deliveries_make_one_intent(partner, conn):
    body = partner.envelope("booking.completed", partner.booking("AUR-D7"))

    replies = await asyncio.gather(
        *(partner.send("aurora", body, delivery_id="msg_d7") for _ in range(50))
    )

    assert {reply.status for reply in replies} == {202}
    assert len({reply.body["intent_id"] for reply in replies}) == 1
    created = [r for r in replies if deliveries.REPLAY_HEADER not in r.headers]
    assert len(created) == 1
    assert all(reply.body == created[0].body for reply in replies)
    assert await conn.fetchval("SELECT count(*) FROM intents") == 1
    assert await conn.fetchval("SELECT count(*) FROM intent_events") == 1
    assert await conn.fetchval("SELECT count(*) FROM webhook_attempts") == 50


async def test_fifty_concurrent_re_emissions_under_new_ids_make_one_intent(
    partner, conn
):
    body = partner.envelope("booking.completed", partner.booking("AUR-D8"))

    replies = await asyncio.gather(
        *(partner.send("aurora", body, delivery_id=f"msg_d8_{n}") for n in range(50))
    )

    assert {reply.status for reply in replies} == {202}
    assert len({reply.body["intent_id"] for reply in replies}) == 1
    outcomes = sorted(reply.body["outcome"] for reply in replies)
    assert outcomes == ["duplicate"] * 49 + ["intent_created"]
    assert await conn.fetchval("SELECT count(*) FROM intents") == 1


async def test_two_listeners_on_one_database_make_one_intent_per_event(
    start_listener, conn
):
    async with start_listener() as one, start_listener() as two:
        bodies = [
            one.partner.envelope("booking.completed", one.partner.booking(f"AUR-2L{n}"))
            for n in range(5)
        ]
        sends = [
            listener.partner.send("aurora", body, delivery_id=f"msg_2l_{n}")
            for n, body in enumerate(bodies)
            for listener in (one, two, one, two)
        ]
        replies = await asyncio.gather(*sends)

    assert {reply.status for reply in replies} == {202}
    assert await conn.fetchval("SELECT count(*) FROM intents") == 5
    per_delivery: dict[str, set[str]] = {}
    for reply in replies:
        per_delivery.setdefault(reply.body["delivery_id"], set()).add(
            reply.body["intent_id"]
        )
    assert all(len(ids) == 1 for ids in per_delivery.values())


async def test_pruning_never_deletes_deliveries_younger_than_seven_days(
    listener, partner, conn
):
    await partner.send("aurora", confirmed(partner, "AUR-D9"), delivery_id="msg_new")
    await partner.send("aurora", confirmed(partner, "AUR-D10"), delivery_id="msg_old")
    await conn.execute(
        "UPDATE webhook_deliveries SET received_at = now() - interval '31 days' "
        "WHERE delivery_id = 'msg_old'"
    )

    pruned = await deliveries.prune(listener.pool, older_than_s=0)

    assert pruned == 1
    remaining = await conn.fetch("SELECT delivery_id FROM webhook_deliveries")
    assert [row["delivery_id"] for row in remaining] == ["msg_new"]


async def test_a_delivery_pruned_long_ago_and_resent_makes_no_second_intent(
    listener, partner, conn
):
    body = confirmed(partner, "AUR-D11")
    first = await partner.send("aurora", body, delivery_id="msg_d11")
    await conn.execute("DELETE FROM webhook_deliveries")

    again = await partner.send("aurora", body, delivery_id="msg_d11")

    assert again.status == 202
    assert again.body["intent_id"] == first.body["intent_id"]
    assert again.body["outcome"] == "duplicate"
    assert await conn.fetchval("SELECT count(*) FROM intents") == 1


async def test_deliveries_are_unique_per_partner_not_globally(partner, conn):
    tribe_body = partner.envelope(
        "coaching.completed",
        {"member_id": "M-1", "wallet": partner.WALLET, "session_id": "S-1"},
    )
    aurora = await partner.send(
        "aurora", confirmed(partner, "AUR-D12"), delivery_id="msg_same"
    )

    tribe = await partner.send("tribe", tribe_body, delivery_id="msg_same")

    assert (aurora.status, tribe.status) == (202, 202)
    assert tribe.body["outcome"] == "intent_created"
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM webhook_deliveries")
    assert len(rows) == 2


async def test_concurrent_creations_of_one_intent_all_succeed(database_url, conn):
    # Every round starts one transaction per connection and releases their
    # inserts of the same business key together, so two of them often pass
    # PostgreSQL's conflict pre-check before either row is indexed.
    rounds, racers = 30, 12
    connections = [await asyncpg.connect(database_url) for _ in range(racers)]
    try:
        for round_number in range(rounds):
            results = await _race_creations(connections, f"AUR-R{round_number}")
            assert sorted(created for _, created in results) == [False] * (
                racers - 1
            ) + [True]
            assert len({intent.id for intent, _ in results}) == 1
    finally:
        for connection in connections:
            await connection.close()

    assert await conn.fetchval("SELECT count(*) FROM intents") == rounds
    assert await conn.fetchval("SELECT count(*) FROM intent_events") == rounds


async def _race_creations(
    connections: list[asyncpg.Connection], booking_id: str
) -> list[tuple[intents.Intent, bool]]:
    started = 0
    go = asyncio.Event()

    async def create(connection: asyncpg.Connection) -> tuple[intents.Intent, bool]:
        nonlocal started
        async with connection.transaction():
            await connection.execute("SELECT 1")
            started += 1
            if started == len(connections):
                go.set()
            await go.wait()
            return await intents.create(
                connection,
                partner="aurora",
                kind="booking",
                source_key=booking_id,
                wallet=checksum("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
                amount_wei=Wei(10**18),
                rule_version="test",
                status=intents.READY,
            )

    return await asyncio.gather(*(create(c) for c in connections))


async def test_a_delivery_accepted_before_the_rules_changed_is_still_replayed(
    start_listener, conn
):
    async with start_listener(rule_book=_with_usd()) as first:
        confirmed_in_usd = first.partner.envelope(
            "booking.confirmed", first.partner.booking("AUR-D-USD", currency="USD")
        )
        body = await first.partner.send(
            "aurora", confirmed_in_usd, delivery_id="msg_usd"
        )
    # The packaged rules price no USD: a new delivery of this body is 422.
    async with start_listener() as second:
        again = await second.partner.send(
            "aurora", confirmed_in_usd, delivery_id="msg_usd"
        )
        refused = await second.partner.send(
            "aurora", confirmed_in_usd, delivery_id="msg_usd_new"
        )

    assert body.status == again.status == 202
    assert again.body == body.body
    assert again.headers[deliveries.REPLAY_HEADER] == "true"
    assert (refused.status, refused.error_code) == (422, "invalid_event")
    assert await conn.fetchval("SELECT count(*) FROM intents") == 1


def _with_usd() -> rules.RuleBook:
    packaged = rules.load()
    return dataclasses.replace(
        packaged, cad_per_unit={**packaged.cad_per_unit, "USD": Fraction(137, 100)}
    )
