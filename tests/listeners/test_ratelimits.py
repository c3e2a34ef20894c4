"""Rate limits in Redis: per client IP, per partner, and 429 with Retry-After."""

from __future__ import annotations

import redis.asyncio as aioredis

from harness.anvil import free_port
from haven.listeners.ratelimits import RateLimits


def body(partner, number: int) -> dict:
    return partner.envelope("booking.confirmed", partner.booking(f"AUR-L{number}"))


async def test_a_client_past_its_ip_limit_gets_429_with_retry_after(
    start_listener, redis_client, redis_prefix
):
    limits = RateLimits(per_partner="1000/minute", per_ip="3/minute")
    async with start_listener(rate_limits=limits) as listener:
        partner = listener.partner
        replies = [await partner.send("aurora", body(partner, n)) for n in range(4)]
        forged = await partner.send("tribe", b"{}", headers={"webhook-signature": "x"})

    assert [r.status for r in replies] == [202, 202, 202, 429]
    assert replies[3].error_code == "rate_limited"
    assert 1 <= int(replies[3].headers["Retry-After"]) <= 60
    assert forged.status == 429
    keys = [key async for key in redis_client.scan_iter(match=f"{redis_prefix}:*")]
    assert keys and all(
        k.startswith(f"{redis_prefix}:ratelimit".encode()) for k in keys
    )


async def test_forgeries_do_not_spend_a_partners_budget(start_listener, conn):
    limits = RateLimits(per_partner="2/minute", per_ip="1000/minute")
    async with start_listener(rate_limits=limits) as listener:
        partner = listener.partner
        forged = [
            await partner.send(
                "aurora", body(partner, n), headers={"webhook-signature": "v1,AAAA"}
            )
            for n in range(5)
        ]
        authentic = [await partner.send("aurora", body(partner, n)) for n in range(3)]
        other_partner = await partner.send(
            "tribe",
            partner.envelope(
                "coaching.completed",
                {"member_id": "M", "wallet": partner.WALLET, "session_id": "S"},
            ),
        )

    assert {r.status for r in forged} == {401}
    assert [r.status for r in authentic] == [202, 202, 429]
    assert int(authentic[2].headers["Retry-After"]) >= 1
    assert other_partner.status == 202
    logged = await conn.fetchval(
        "SELECT count(*) FROM webhook_attempts WHERE status_code = 429"
    )
    assert logged == 1


async def test_an_unreachable_redis_lets_requests_through(start_listener, conn):
    dead = aioredis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1
    )
    limits = RateLimits(per_partner="1/minute", per_ip="1/minute")
    try:
        async with start_listener(redis=dead, rate_limits=limits) as listener:
            partner = listener.partner
            replies = [await partner.send("aurora", body(partner, n)) for n in range(3)]
    finally:
        await dead.aclose()

    assert [r.status for r in replies] == [202, 202, 202]
