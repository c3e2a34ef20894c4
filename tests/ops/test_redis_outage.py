"""Redis killed and restarted mid-batch: every reward is still paid exactly once.

A real listener and a real daemon run against a Redis server of this test's
own (never the shared one on 6379). Signed webhooks arrive before, during
and after a Redis crash; the partner must never see a 500, and the chain
must show exactly one mint per intent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from eth_account import Account
from ops import processes
from ops.deployments import deployed_environ, mints_per_intent, wait_confirmed
from ops.processes import HAVEN
from ops.redis_server import RedisServer, running_redis
from standardwebhooks.webhooks import Webhook

from harness.anvil import DEV_KEYS, AnvilNode
from harness.minting import wait_for
from haven.listeners.ratelimits import REDIS_RETRY_S

pytestmark = pytest.mark.timeout(240)

PER_PHASE = 20
WALLETS = [Account.from_key(key).address for key in DEV_KEYS[1:4]]


def booking_body(index: int) -> bytes:
    return orjson.dumps(
        {
            "type": "booking.completed",
            "timestamp": "2026-12-01T10:00:00Z",
            "data": {
                "booking_id": f"AUR-REDIS-{index}",
                "guest_id": f"G-{1000 + index}",
                "wallet": WALLETS[index % len(WALLETS)],
                "total_paid_cents": 5_000 + 35 * index,
                "currency": "CAD",
                "nights": 1 + index % 4,
            },
        }
    )


async def deliver(
    session: aiohttp.ClientSession, url: str, secret: str, index: int
) -> tuple[int, dict[str, Any]]:
    """Post booking ``index`` as Aurora would; return the status and the body."""
    body = booking_body(index)
    delivery_id = f"msg_redis_{index}"
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, now, body.decode()),
    }
    async with session.post(f"{url}/webhooks/aurora", data=body, headers=headers) as r:
        return r.status, orjson.loads(await r.read())


async def keys_in(server: RedisServer) -> int:
    client = aioredis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return int(await client.dbsize())
    finally:
        await client.aclose()


async def counted_again(url: str, server: RedisServer) -> bool:
    """Send one request the IP limit counts (refused, unsigned); any key yet?"""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/webhooks/aurora",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        ) as reply,
    ):
        await reply.read()
    return await keys_in(server) > 0


async def post_across_a_redis_crash(
    url: str, secret: str, redis: RedisServer, directory: Path
) -> tuple[list[tuple[int, dict[str, Any]]], RedisServer]:
    """Post a third of the batch before, during and after a Redis crash.

    Returns every answer, in order, and the restarted server.
    """
    answers = []
    phases = [range(k * PER_PHASE, (k + 1) * PER_PHASE) for k in range(3)]
    async with aiohttp.ClientSession() as session:
        for index in phases[0]:
            answers.append(await deliver(session, url, secret, index))

        await redis.kill()
        assert not await redis.ping()
        for index in phases[1]:
            answers.append(await deliver(session, url, secret, index))

        # The same port again, empty: a restart without persistence.
        revived = RedisServer(redis.port, directory)
        await revived.start()
        for index in phases[2]:
            answers.append(await deliver(session, url, secret, index))
    return answers, revived


async def test_redis_restarted_mid_batch_loses_no_request_and_pays_each_intent_once(
    database_url: str, redis_prefix: str, anvil: AnvilNode, tmp_path: Path
):
    async with running_redis(tmp_path) as redis:
        environ = await deployed_environ(
            database_url, redis_prefix, anvil, HAVEN_REDIS_URL=redis.url
        )
        url = f"http://127.0.0.1:{environ['HAVEN_LISTEN_PORT']}"
        secret = environ["HAVEN_WEBHOOK_SECRETS_AURORA"]
        listener = await processes.start(
            "listener", [*HAVEN, "listen"], environ, tmp_path
        )
        daemon = await processes.start("daemon", [*HAVEN, "run"], environ, tmp_path)
        revived: RedisServer | None = None
        try:
            await processes.wait_http(f"{url}/healthz", listener)
            answers, revived = await post_across_a_redis_crash(
                url, secret, redis, tmp_path
            )
            await wait_confirmed(database_url, 3 * PER_PHASE, anvil, 120)
            # The listener goes back to the restarted server on its own,
            # within the period it skips the limits after a failure.
            await wait_for(
                lambda: counted_again(url, revived),
                timeout_s=3 * REDIS_RETRY_S,
                what="requests counted in the restarted Redis",
            )
            assert listener.process.returncode is None, listener.log_tail()
            assert daemon.process.returncode is None, daemon.log_tail()
        finally:
            await listener.stop()
            await daemon.stop()
            if revived is not None:
                await revived.kill()

    assert [status for status, _ in answers] == [202] * (3 * PER_PHASE), answers
    assert "Redis unavailable" in listener.log_path.read_text()
    intent_ids = {bytes.fromhex(body["intent_id"][2:]) for _, body in answers}
    assert len(intent_ids) == 3 * PER_PHASE
    minted = await mints_per_intent(anvil, environ["HAVEN_TOKEN_ADDRESS"])
    assert {i: minted[i] for i in intent_ids} == {i: 1 for i in intent_ids}
    assert sum(minted.values()) == len(intent_ids)
