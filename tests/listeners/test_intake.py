"""Every event kind through the running listener, with its exact amount in wei."""

from __future__ import annotations

from haven import intents

HNV = 10**18


def tribe(partner, kind: str, **data) -> dict:
    data.setdefault("member_id", "M-100")
    data.setdefault("wallet", partner.WALLET)
    return partner.envelope(kind, data)


def review(partner, booking_id: str, rating: int) -> dict:
    return partner.envelope(
        "review.submitted",
        {
            "booking_id": booking_id,
            "guest_id": "G-1",
            "wallet": partner.WALLET,
            "rating": rating,
        },
    )


async def amount_of(conn, reply) -> int:
    intent_id = bytes.fromhex(reply.body["intent_id"][2:])
    return int(
        await conn.fetchval("SELECT amount_wei FROM intents WHERE id = $1", intent_id)
    )


async def test_a_booking_earns_two_hnv_per_cad_with_a_long_stay_bonus(partner, conn):
    cases = [
        (45000, 3, 1080 * HNV),
        (45000, 2, 1080 * HNV),
        (45000, 1, 900 * HNV),
        (1, 1, 2 * HNV // 100),
        (12345, 2, 12345 * 2 * HNV * 120 // (100 * 100)),
    ]
    for number, (cents, nights, amount_wei) in enumerate(cases):
        data = partner.booking(f"AUR-A{number}", total_paid_cents=cents, nights=nights)

        reply = await partner.send(
            "aurora", partner.envelope("booking.confirmed", data)
        )

        assert (reply.body["outcome"], reply.body["intent_status"]) == (
            "intent_created",
            "held",
        )
        assert await amount_of(conn, reply) == amount_wei, (cents, nights)


async def test_a_high_review_earns_50_hnv_once_per_booking(partner, conn):
    first = await partner.send("aurora", review(partner, "AUR-RV1", 5))
    second = await partner.send("aurora", review(partner, "AUR-RV1", 4))

    assert (first.body["outcome"], first.body["intent_status"]) == (
        "intent_created",
        "ready",
    )
    assert await amount_of(conn, first) == 50 * HNV
    assert second.body["outcome"] == "duplicate"
    assert second.body["intent_id"] == first.body["intent_id"]


async def test_a_low_review_is_recorded_with_no_reward(partner, conn):
    for rating in (1, 2, 3):
        reply = await partner.send("aurora", review(partner, f"AUR-RV{rating}", rating))

        assert reply.status == 202
        assert reply.body["outcome"] == "recorded"
        assert reply.body["intent_id"] is None

    assert await conn.fetchval("SELECT count(*) FROM intents") == 0
    stored = await conn.fetch("SELECT outcome FROM partner_events")
    assert [row["outcome"] for row in stored] == ["recorded"] * 3


async def test_a_low_review_then_a_high_one_rewards_the_booking_once(partner, conn):
    await partner.send("aurora", review(partner, "AUR-RV9", 2))
    reply = await partner.send("aurora", review(partner, "AUR-RV9", 5))

    assert reply.body["outcome"] == "intent_created"
    assert await conn.fetchval("SELECT count(*) FROM intents") == 1


async def test_event_attendance_is_tiered_by_event_type(partner, conn):
    tiers = [("meetup", 25), ("workshop", 50), ("summit", 75), ("retreat", 100)]
    for event_type, amount_hnv in tiers:
        event_id = f"E-{event_type}"
        body = tribe(
            partner, "event.attended", event_id=event_id, event_type=event_type
        )

        reply = await partner.send("tribe", body)

        assert reply.body["outcome"] == "intent_created"
        assert await amount_of(conn, reply) == amount_hnv * HNV
        key = f'["{event_id}", "M-100"]'
        expected = intents.derive_id("tribe", "event_attendance", key)
        assert reply.body["intent_id"] == "0x" + expected.hex()


async def test_attendance_is_rewarded_once_per_member_and_event(partner, conn):
    same = tribe(partner, "event.attended", event_id="E-2", event_type="meetup")
    other_member = tribe(
        partner, "event.attended", event_id="E-2", event_type="meetup", member_id="M-2"
    )

    replies = [await partner.send("tribe", body) for body in (same, same, other_member)]

    assert [r.body["outcome"] for r in replies] == [
        "intent_created",
        "duplicate",
        "intent_created",
    ]


async def test_an_unpriced_event_type_is_answered_422(partner):
    body = tribe(partner, "event.attended", event_id="E-3", event_type="rave")

    reply = await partner.send("tribe", body)

    assert reply.status == 422
    assert reply.body["error"]["fields"][0]["path"] == "data.event_type"


async def test_contributions_and_coaching_earn_their_fixed_reward(partner, conn):
    contribution = tribe(partner, "contribution.recorded", contribution_id="X-1")
    coaching = tribe(partner, "coaching.completed", session_id="X-1")

    replies = [await partner.send("tribe", body) for body in (contribution, coaching)]

    assert [r.body["intent_status"] for r in replies] == ["ready", "ready"]
    assert [await amount_of(conn, r) for r in replies] == [50 * HNV, 75 * HNV]


async def test_a_referral_earns_100_hnv_once_per_referred_member(partner, conn):
    first = tribe(
        partner, "referral.completed", referral_id="RF-1", referred_member_id="M-9"
    )
    by_someone_else = tribe(
        partner,
        "referral.completed",
        referral_id="RF-2",
        referred_member_id="M-9",
        member_id="M-200",
        wallet=partner.OTHER_WALLET,
    )

    one = await partner.send("tribe", first)
    two = await partner.send("tribe", by_someone_else)

    assert await amount_of(conn, one) == 100 * HNV
    assert two.body["outcome"] == "duplicate"
    assert two.body["intent_id"] == one.body["intent_id"]
    assert await conn.fetchval("SELECT wallet FROM intents") == partner.WALLET


async def test_staking_is_recorded_with_every_digit_and_no_reward(partner, conn):
    stake = tribe(
        partner, "staking.changed", stake_id="ST-1", action="stake", amount_wei=10**21
    )
    unstake = tribe(
        partner,
        "staking.changed",
        stake_id="ST-1",
        action="unstake",
        amount_wei=str(10**21 + 1),
    )

    replies = [await partner.send("tribe", body) for body in (stake, unstake, stake)]

    assert [r.body["outcome"] for r in replies] == ["recorded", "recorded", "duplicate"]
    assert all(r.body["intent_id"] is None for r in replies)
    rows = await conn.fetch(
        "SELECT action, amount_wei FROM staking_records ORDER BY action"
    )
    assert [(r["action"], int(r["amount_wei"])) for r in rows] == [
        ("stake", 10**21),
        ("unstake", 10**21 + 1),
    ]
    assert await conn.fetchval("SELECT count(*) FROM intents") == 0
    payload = await conn.fetchval(
        "SELECT payload FROM partner_events WHERE delivery_id IS NOT NULL LIMIT 1"
    )
    assert payload["data"]["amount_wei"] in (str(10**21), 10**21)


async def test_a_negative_or_non_integer_stake_amount_is_answered_422(partner):
    for amount in [-1, 1.5, "12.0", "0x10", True, 2**256]:
        body = tribe(
            partner,
            "staking.changed",
            stake_id="ST-2",
            action="stake",
            amount_wei=amount,
        )

        reply = await partner.send("tribe", body)

        assert reply.status == 422, amount
        assert reply.body["error"]["fields"][0]["path"] == "data.amount_wei"


async def test_an_authentic_event_of_an_unknown_type_is_parked_with_202(partner, conn):
    cases = [("aurora", "booking.modified"), ("tribe", "booking.confirmed")]
    for partner_name, event_type in cases:
        body = partner.envelope(event_type, {"anything": ["goes", 1, None]})

        reply = await partner.send(partner_name, body)

        assert reply.status == 202
        assert (reply.body["outcome"], reply.body["intent_id"]) == ("parked", None)
        row = await conn.fetchrow(
            "SELECT outcome, payload FROM partner_events "
            "WHERE partner = $1 AND event_type = $2",
            partner_name,
            event_type,
        )
        assert row["outcome"] == "parked"
        assert row["payload"] == body

    assert await conn.fetchval("SELECT count(*) FROM intents") == 0


async def test_a_referral_of_oneself_is_answered_422(partner):
    body = tribe(
        partner, "referral.completed", referral_id="RF-3", referred_member_id="M-100"
    )

    reply = await partner.send("tribe", body)

    assert reply.status == 422
