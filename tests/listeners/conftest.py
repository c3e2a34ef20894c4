"""Fixtures of the listener tests: settings, a running listener and partner clients.

The listener runs on a real port with a real pool on the test's database and
real Redis under the test's prefix. Partners sign with the `standardwebhooks`
package, as a partner's own code would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from cryptography.fernet import Fernet
from standardwebhooks.webhooks import Webhook

from haven import db, settings
from haven.listeners.app import create_app
from haven.listeners.ratelimits import RateLimits

REDIS_URL = "redis://127.0.0.1:6379/0"
GENEROUS = RateLimits(per_partner="100000/minute", per_ip="100000/minute")
WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER_WALLET = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass(frozen=True)
class Secrets:
    """Aurora rotates: it has an old and a new secret. Tribe has one."""

    aurora_old: str = field(default_factory=new_secret)
    aurora_new: str = field(default_factory=new_secret)
    tribe: str = field(default_factory=new_secret)

    def signing(self, partner: str) -> str:
        return self.aurora_new if partner == "aurora" else self.tribe

    def all(self) -> list[str]:
        return [self.aurora_old, self.aurora_new, self.tribe]


@pytest.fixture
def secrets() -> Secrets:
    return Secrets()


def environ(database_url: str, redis_prefix: str, secrets: Secrets) -> dict[str, str]:
    return {
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_REDIS_URL": REDIS_URL,
        "HAVEN_REDIS_PREFIX": redis_prefix,
        "HAVEN_RPC_URL": "http://127.0.0.1:8545",
        "HAVEN_CHAIN_ID": "31337",
        "HAVEN_WEBHOOK_SECRETS_AURORA": f"{secrets.aurora_old},{secrets.aurora_new}",
        "HAVEN_WEBHOOK_SECRETS_TRIBE": secrets.tribe,
        "HAVEN_MASTER_KEY": Fernet.generate_key().decode(),
        "HAVEN_ADMIN_API_KEYS": "admin-key-" + "x" * 24,
    }


@pytest.fixture
def listener_environ(
    database_url: str, redis_prefix: str, secrets: Secrets
) -> dict[str, str]:
    """The HAVEN_* variables of a listener on this test's database and prefix."""
    return environ(database_url, redis_prefix, secrets)


@pytest.fixture
def listener_settings(listener_environ: dict[str, str]) -> settings.Settings:
    return settings.load(listener_environ)


@pytest.fixture
def make_partner(secrets: Secrets) -> Callable[[str, aiohttp.ClientSession], Partner]:
    """Build a partner client for a listener at another address."""
    return lambda url, session: Partner(url, secrets, session)


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and "error" in self.body:
            return str(self.body["error"]["code"])
        return None


def envelope(
    event_type: str, data: dict[str, Any], timestamp: str = "2026-12-01T10:00:00Z"
) -> dict[str, Any]:
    return {"type": event_type, "timestamp": timestamp, "data": data}


def booking(booking_id: str, **changes: Any) -> dict[str, Any]:
    data = {
        "booking_id": booking_id,
        "guest_id": "G-5521",
        "wallet": WALLET,
        "total_paid_cents": 45000,
        "currency": "CAD",
        "nights": 3,
    }
    data.update(changes)
    return data


def manual_signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.digest(key, message, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


class Partner:
    """A partner's sender: signs bodies with standardwebhooks and posts them."""

    WALLET = WALLET
    OTHER_WALLET = OTHER_WALLET
    envelope = staticmethod(envelope)
    booking = staticmethod(booking)
    manual_signature = staticmethod(manual_signature)

    def __init__(
        self, base_url: str, secrets: Secrets, session: aiohttp.ClientSession
    ) -> None:
        self.base_url = base_url
        self.secrets = secrets
        self.session = session

    def sign(
        self,
        partner: str,
        body: bytes,
        *,
        delivery_id: str,
        sent_at: datetime | None = None,
        secret: str | None = None,
    ) -> dict[str, str]:
        sent_at = sent_at or datetime.now(UTC)
        webhook = Webhook(secret or self.secrets.signing(partner))
        signature = webhook.sign(delivery_id, sent_at, body.decode("utf-8"))
        return {
            "webhook-id": delivery_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signature,
        }

    async def send(
        self,
        partner: str,
        payload: dict[str, Any] | str | bytes,
        *,
        delivery_id: str | None = None,
        sent_at: datetime | None = None,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        path: str | None = None,
    ) -> Reply:
        body = _bytes(payload)
        delivery_id = delivery_id or f"msg_{uuid.uuid4().hex}"
        signed = self.sign(
            partner, body, delivery_id=delivery_id, sent_at=sent_at, secret=secret
        )
        signed["Content-Type"] = content_type
        signed.update(headers or {})
        return await self.post(path or f"/webhooks/{partner}", body, signed)

    async def post(
        self, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
    ) -> Reply:
        async with self.session.request(
            method, self.base_url + path, data=body, headers=headers
        ) as response:
            raw = await response.read()
            try:
                parsed = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                parsed = raw
            return Reply(response.status, response.headers, parsed)


def _bytes(payload: dict[str, Any] | str | bytes) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    # The stdlib encoder, like a partner's, writes integers of any size.
    return json.dumps(payload).encode()


@dataclass
class Listener:
    url: str
    pool: asyncpg.Pool
    partner: Partner


StartListener = Callable[..., AbstractAsyncContextManager[Listener]]


@pytest.fixture
async def start_listener(
    listener_settings: settings.Settings,
    redis_client: aioredis.Redis,
    secrets: Secrets,
) -> AsyncIterator[StartListener]:
    """Start a listener app on a free port; options go to create_app."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    @asynccontextmanager
    async def start(
        *, dsn: str | None = None, redis: aioredis.Redis | None = None, **options: Any
    ) -> AsyncIterator[Listener]:
        options.setdefault("rate_limits", GENEROUS)
        pool = await db.create_pool(
            dsn or listener_settings.database_url.reveal(),
            min_size=0,
            max_size=10,
            timeout_s=5,
        )
        app = create_app(listener_settings, pool, redis or redis_client, **options)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        try:
            yield Listener(url, pool, Partner(url, secrets, session))
        finally:
            await server.close()
            pool.terminate()

    yield start
    await session.close()


@pytest.fixture
async def listener(start_listener: StartListener) -> AsyncIterator[Listener]:
    async with start_listener() as running:
        yield running


@pytest.fixture
def partner(listener: Listener) -> Partner:
    return listener.partner


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for assertions."""
    connection = await asyncpg.connect(database_url)
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )
    yield connection
    await connection.close()
