"""Helpers of the operators' tests: settings, an HTTP client and seeding.

Intents and attempts are seeded through their owners' modules, as the
intake and the submitter write them.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from cryptography.fernet import Fernet

from haven import db, intents, settings
from haven.daemon import attempts
from haven.listeners.app import create_app
from haven.listeners.ratelimits import RateLimits
from haven.types import ChecksumAddress, IntentId, Nonce, TxHash, Wei

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "operator-key-" + "k" * 24
OTHER_ADMIN_KEY = "second-operator-key-" + "q" * 24
NO_NODE_URL = "http://127.0.0.1:9"
GENEROUS = RateLimits(
    per_partner="100000/minute",
    per_ip="100000/minute",
    admin_refusals="100000/minute",
)
WALLET = ChecksumAddress("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
SIGNER = ChecksumAddress("0x90F79bf6EB2c4f870365E785982E1f101E93b906")


def whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def environ(
    database_url: str, redis_prefix: str, rpc_url: str = NO_NODE_URL
) -> dict[str, str]:
    return {
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_REDIS_URL": REDIS_URL,
        "HAVEN_REDIS_PREFIX": redis_prefix,
        "HAVEN_RPC_URL": rpc_url,
        "HAVEN_CHAIN_ID": "31337",
        "HAVEN_WEBHOOK_SECRETS_AURORA": whsec(),
        "HAVEN_WEBHOOK_SECRETS_TRIBE": whsec(),
        "HAVEN_MASTER_KEY": Fernet.generate_key().decode(),
        "HAVEN_ADMIN_API_KEYS": f"{ADMIN_KEY},{OTHER_ADMIN_KEY}",
        # A daemon component started here serves no metrics port, so these
        # tests run beside a haven already listening on the default one.
        "HAVEN_DAEMON_PORT": "0",
    }


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any
    text: str

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and "error" in self.body:
            return str(self.body["error"]["code"])
        return None


class Client:
    """Sends requests to the running listener, with the admin key by default."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        key: str | None = ADMIN_KEY,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        if json is not None:
            data = orjson.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base_url + path, data=data, headers=sent
        ) as response:
            raw = await response.read()
        text = raw.decode("utf-8", "replace")
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return Reply(response.status, response.headers, body, text)

    async def get(self, path: str, **options: Any) -> Reply:
        return await self.request("GET", path, **options)

    async def post(self, path: str, **options: Any) -> Reply:
        return await self.request("POST", path, **options)


@dataclass
class Service:
    url: str
    pool: asyncpg.Pool
    client: Client
    settings: settings.Settings


StartService = Callable[..., AbstractAsyncContextManager[Service]]


def listener_app(
    loaded: settings.Settings, pool: asyncpg.Pool, redis: aioredis.Redis
) -> web.Application:
    """Build the listener app, which carries the operators' surface."""
    return create_app(loaded, pool, redis, rate_limits=GENEROUS)


# --- seeding, as the intake and the submitter write


async def seed_intent(
    pool: asyncpg.Pool,
    source_key: str,
    *,
    status: str = intents.READY,
    amount_wei: int = 10 * 10**18,
    partner: str = "aurora",
    kind: str = "booking",
    request_id: str | None = None,
) -> IntentId:
    """Create an intent in ``held``, ``ready`` or ``approval``; return its id."""
    async with db.transaction(pool) as connection:
        created, _ = await intents.create(
            connection,
            partner=partner,
            kind=kind,
            source_key=source_key,
            wallet=WALLET,
            amount_wei=Wei(amount_wei),
            rule_version="test.1",
            status=status,
            request_id=request_id,
        )
    return created.id


async def seed_signer(pool: asyncpg.Pool, address: str = SIGNER) -> None:
    await pool.execute(
        "INSERT INTO signers (address, encrypted_key, status) "
        "VALUES ($1, $2, 'active') ON CONFLICT DO NOTHING",
        address,
        b"not-a-real-key",
    )


async def seed_submitted(
    pool: asyncpg.Pool, intent_id: bytes, *, nonce: int, sent_block: int | None = 1
) -> TxHash:
    """Sign (pretend) and broadcast one attempt of a ready intent at ``nonce``."""
    tx_hash = TxHash("0x" + os.urandom(32).hex())
    await seed_signer(pool)
    async with db.transaction(pool) as connection:
        await intents.transition(
            connection,
            intent_id,
            from_statuses=(intents.READY,),
            to_status=intents.SUBMITTED,
            signer=SIGNER,
            nonce=nonce,
            tx_hash=bytes.fromhex(tx_hash[2:]),
        )
        await attempts.record(
            connection,
            intent_id=intent_id,
            signer=SIGNER,
            nonce=Nonce(nonce),
            tx_hash=tx_hash,
            raw_tx=b"\x02raw",
            max_fee_wei=Wei(2 * 10**9),
            max_priority_fee_wei=Wei(10**9),
            gas_limit=200_000,
        )
        if sent_block is not None:
            await attempts.mark_sent(connection, [tx_hash], block_number=sent_block)
    return tx_hash


async def fail_intent(pool: asyncpg.Pool, intent_id: bytes, tx_hash: TxHash) -> None:
    """Mark a submitted intent failed, as a reverted receipt would."""
    async with db.transaction(pool) as connection:
        await attempts.set_status(
            connection, tx_hash, attempts.FAILED, error="execution reverted"
        )
        await intents.transition(
            connection,
            intent_id,
            from_statuses=(intents.SUBMITTED,),
            to_status=intents.FAILED,
            reason="reverted: execution reverted",
        )
