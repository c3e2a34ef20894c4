"""The whole slice on real parts: webhook → intent → mint → tailed transfer →
confirmed → reconciled report."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from cryptography.fernet import Fernet
from standardwebhooks.webhooks import Webhook

from harness.anvil import DEV_ADDRESSES, DEV_KEYS, AnvilNode, free_port
from haven import db, deploy, intents, settings, token
from haven.chain import ChainClient
from haven.daemon import service
from haven.listeners import app as listener_app
from haven.reconciler import reports
from haven.types import ONE_HNV, checksum

AURORA_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TRIBE_SECRET = "whsec_dGhpcyBpcyBhIHRyaWJlIHNlY3JldCE="
GUEST = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
MASTER_KEY = Fernet.generate_key().decode()


def slice_env(database_url: str, redis_prefix: str, node: AnvilNode) -> dict[str, str]:
    return {
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_REDIS_PREFIX": redis_prefix,
        "HAVEN_RPC_URL": node.url,
        "HAVEN_CHAIN_ID": str(node.chain_id),
        "HAVEN_CONFIRMATIONS": "3",
        "HAVEN_POLL_INTERVAL_MS": "50",
        "HAVEN_WEBHOOK_SECRETS_AURORA": AURORA_SECRET,
        "HAVEN_WEBHOOK_SECRETS_TRIBE": TRIBE_SECRET,
        "HAVEN_MASTER_KEY": MASTER_KEY,
        "HAVEN_ADMIN_API_KEYS": "slice-admin-key-0123456789abcdef",
        "HAVEN_DEPLOYER_KEY": DEV_KEYS[0],
        "HAVEN_LISTEN_PORT": str(free_port()),
        "HAVEN_DAEMON_PORT": "0",
    }


async def post_booking_completed(url: str) -> aiohttp.ClientResponse:
    body = orjson.dumps(
        {
            "type": "booking.completed",
            "timestamp": "2026-12-01T10:00:00Z",
            "data": {
                "booking_id": "AUR-100234",
                "guest_id": "G-5521",
                "wallet": GUEST,
                "total_paid_cents": 45000,
                "currency": "CAD",
                "nights": 3,
            },
        }
    ).decode()
    now = datetime.now(UTC)
    signature = Webhook(AURORA_SECRET).sign("msg_slice_1", now, body)
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_slice_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/webhooks/aurora", data=body, headers=headers) as r,
    ):
        await r.read()
        return r


async def wait_for_status(
    pool: db.Pool, intent_id: bytes, status: str, node: AnvilNode
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with pool.acquire() as connection:
            found = await intents.get(connection, intent_id)
        if found is not None and found.status == status:
            return
        # Confirmations need blocks on an automining chain with no other traffic.
        await node.mine(1)
        await asyncio.sleep(0.05)
    raise AssertionError(f"intent never reached {status}: {found}")


async def test_signed_booking_becomes_a_confirmed_reconciled_mint(
    database_url, redis_prefix, anvil
):
    loaded = settings.load(slice_env(database_url, redis_prefix, anvil))
    deployed = await deploy.deploy(loaded, fund_wei=10 * 10**18)
    loaded = settings.load(
        slice_env(database_url, redis_prefix, anvil)
        | {
            "HAVEN_TOKEN_ADDRESS": deployed.token_address,
            "HAVEN_START_BLOCK": str(deployed.deploy_block),
        }
    )
    pool = await db.create_pool(database_url)
    redis = aioredis.from_url("redis://127.0.0.1:6379/0")
    runner = web.AppRunner(listener_app.create_app(loaded, pool, redis))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", loaded.listen_port)
    await site.start()
    stopping = asyncio.Event()
    daemon = asyncio.create_task(service.run(loaded, stopping=stopping))
    try:
        response = await post_booking_completed(
            f"http://127.0.0.1:{loaded.listen_port}"
        )
        assert response.status == 202
        intent_id = intents.derive_id("aurora", "booking", "AUR-100234")

        await wait_for_status(pool, intent_id, intents.CONFIRMED, anvil)

        async with ChainClient(loaded.rpc_url, chain_id=loaded.chain_id) as chain:
            balance = token.decode_uint(
                await chain.eth_call(
                    deployed.token_address, token.balance_of_data(checksum(GUEST))
                )
            )
            report = await reports.build(pool, chain, loaded)
        assert balance == 1080 * ONE_HNV
        assert report.verdict == "reconciled"
        assert deployed.minters[0] not in DEV_ADDRESSES
    finally:
        stopping.set()
        await asyncio.wait_for(daemon, 30)
        await runner.cleanup()
        await redis.aclose()
        await pool.close()
