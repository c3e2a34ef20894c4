"""Rate limits in Redis: per client IP, per partner, and 429 with Retry-After."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
import redis.asyncio as aioredis
from loguru import logger
from ops.redis_server import running_redis

from harness.anvil import free_port
from haven import settings
from haven.listeners.answers import Rejection
from haven.listeners.ratelimits import Limiter, RateLimits, client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


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


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(
    start_listener,
):
    limits = RateLimits(
        per_partner="1000/minute", per_ip="2/minute", trusted_proxies=("127.0.0.1/32",)
    )
    async with start_listener(rate_limits=limits) as listener:
        partner = listener.partner
        statuses = []
        for n, client in enumerate(["198.51.100.1"] * 3 + ["198.51.100.2"]):
            reply = await partner.send(
                "aurora", body(partner, 100 + n), headers={"X-Forwarded-For": client}
            )
            statuses.append(reply.status)

    assert statuses == [202, 202, 429, 202]


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


async def test_a_redis_outage_is_logged_once_when_lost_and_once_when_back(
    tmp_path, redis_prefix
):
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message}")
    try:
        async with running_redis(tmp_path) as server:
            client = aioredis.from_url(
                server.url, socket_timeout=1, socket_connect_timeout=1
            )
            limiter = Limiter(
                client, prefix=redis_prefix, limits=RateLimits(), redis_retry_s=0
            )
            await limiter.check_ip("203.0.113.7")
            await server.kill()
            for _ in range(3):
                await limiter.check_ip("203.0.113.7")
                await limiter.check_partner("aurora")
            await server.start()
            await limiter.check_ip("203.0.113.7")
            await limiter.check_partner("aurora")
            await client.aclose()
    finally:
        logger.remove(sink)

    about_limits = [line.strip() for line in lines if "rate limit" in line]
    assert [line.split(" ", 1)[0] for line in about_limits] == ["WARNING", "INFO"]
    assert "Redis unavailable" in about_limits[0]


async def test_a_hanging_redis_is_asked_once_per_retry_period_not_per_request(
    redis_prefix,
):
    received: list[bytes] = []

    async def swallow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                received.append(chunk)
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2)
    try:
        limiter = Limiter(client, prefix=redis_prefix, limits=RateLimits())
        await limiter.check_ip("203.0.113.7")
        asked = len(received)
        for _ in range(5):
            await limiter.check_ip("203.0.113.7")
            await limiter.check_partner("aurora")
        skipped = len(received) == asked
        again = Limiter(
            client, prefix=redis_prefix, limits=RateLimits(), redis_retry_s=0
        )
        await again.check_ip("203.0.113.7")
        await again.check_ip("203.0.113.7")
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()

    assert asked > 0
    assert skipped
    # With no retry period, each request asks the hanging Redis again.
    assert len(received) > asked + 1


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # No header, or a peer we do not trust: the peer is the client.
        ("203.0.113.7", None, "203.0.113.7"),
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),
        # A trusted proxy: the address it saw connecting.
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        # Hops the client wrote itself (left of the first untrusted) are ignored.
        ("10.0.0.2", "1.1.1.1, 198.51.100.1", "198.51.100.1"),
        # Chained trusted proxies are walked through, right to left.
        ("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.0.0.9", "198.51.100.1"),
        ("fd00::2", "2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1"),
        # Garbage written by a proxy stops at the proxy that wrote it.
        ("10.0.0.2", "198.51.100.1, not-an-ip", "10.0.0.2"),
        # Nothing but proxies: the left-most one.
        ("10.0.0.2", "10.0.0.5", "10.0.0.5"),
        ("unknown", "198.51.100.1", "unknown"),
    ],
)
def test_the_client_is_the_right_most_address_no_trusted_proxy_vouches_past(
    peer, forwarded_for, client
):
    assert client_address(peer, forwarded_for, PROXIES) == client


def test_without_trusted_proxies_the_forwarded_header_is_never_believed():
    assert client_address("10.0.0.2", "198.51.100.1", ()) == "10.0.0.2"


def test_rate_limits_and_trusted_proxies_come_from_the_settings(listener_environ):
    loaded = settings.load(
        listener_environ
        | {
            "HAVEN_WEBHOOK_RATE_LIMIT_PARTNER": "7/second",
            "HAVEN_WEBHOOK_RATE_LIMIT_IP": "9/minute",
            "HAVEN_TRUSTED_PROXIES": "10.0.0.0/8,fd00::/8",
        }
    )

    assert RateLimits.from_settings(loaded) == RateLimits(
        per_partner="7/second",
        per_ip="9/minute",
        trusted_proxies=("10.0.0.0/8", "fd00::/8"),
    )


async def test_clients_behind_a_trusted_proxy_get_a_budget_each(
    redis_client, redis_prefix
):
    limits = RateLimits(per_ip="2/minute", trusted_proxies=("10.0.0.0/8",))
    limiter = Limiter(redis_client, prefix=redis_prefix, limits=limits)

    for client in ("198.51.100.1", "198.51.100.2"):
        for _ in range(2):
            await limiter.check_ip("10.0.0.2", forwarded_for=client)
    with pytest.raises(Rejection) as refused:
        await limiter.check_ip("10.0.0.3", forwarded_for="198.51.100.1")

    assert refused.value.status_code == 429


async def test_a_forged_forwarded_header_does_not_escape_the_ip_limit(
    redis_client, redis_prefix
):
    limits = RateLimits(per_ip="2/minute", trusted_proxies=("10.0.0.0/8",))
    limiter = Limiter(redis_client, prefix=redis_prefix, limits=limits)

    await limiter.check_ip("203.0.113.7", forwarded_for="198.51.100.1")
    await limiter.check_ip("203.0.113.7", forwarded_for="198.51.100.2")
    with pytest.raises(Rejection) as refused:
        await limiter.check_ip("203.0.113.7", forwarded_for="10.0.0.2, 198.51.100.3")

    assert refused.value.status_code == 429


async def _refusals(checks) -> list[int | None]:
    """Run ``checks`` together; None for each admitted, its Retry-After if refused."""
    results = await asyncio.gather(*checks, return_exceptions=True)
    waits: list[int | None] = []
    for result in results:
        if isinstance(result, Rejection):
            assert result.status_code == 429
            waits.append(result.retry_after_s)
        else:
            assert result is None
            waits.append(None)
    return waits


async def test_concurrent_hits_near_the_limit_admit_exactly_the_room_left(
    redis_client, redis_prefix
):
    limiter = Limiter(
        redis_client, prefix=redis_prefix, limits=RateLimits(per_partner="5/minute")
    )
    await limiter.check_partner("aurora")

    first = await _refusals(limiter.check_partner("aurora") for _ in range(6))
    later = await _refusals(limiter.check_partner("aurora") for _ in range(3))

    assert first[:4] == [None] * 4
    assert all(wait is not None and 1 <= wait <= 60 for wait in first[4:] + later)


async def test_concurrent_hits_of_one_key_are_counted_in_one_redis_call(
    tmp_path, redis_prefix
):
    async def scripts_run(client: aioredis.Redis) -> int:
        stats = await client.info("commandstats")
        return sum(
            stats.get(f"cmdstat_{name}", {}).get("calls", 0)
            for name in ("eval", "evalsha")
        )

    async with running_redis(tmp_path) as server:
        client = aioredis.from_url(server.url, socket_timeout=2)
        try:
            limiter = Limiter(client, prefix=redis_prefix, limits=RateLimits())
            await limiter.check_partner("aurora")
            before = await scripts_run(client)
            admitted = await _refusals(
                limiter.check_partner("aurora") for _ in range(20)
            )
            after = await scripts_run(client)
            keys = [key async for key in client.scan_iter(match=f"{redis_prefix}:*")]
            counted = await client.llen(keys[0])
        finally:
            await client.aclose()

    assert admitted == [None] * 20
    assert after - before == 1
    # The one call counted all twenty: the window holds every hit.
    assert len(keys) == 1
    assert counted == 21
