"""Fixtures of the operators' tests: a running listener with the admin API.

The listener runs on a real port over the test's own database and Redis
prefix; an admin client sends requests with or without a key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from operators.support import (
    REDIS_URL,
    Client,
    Service,
    StartService,
    environ,
    listener_app,
)

from haven import db, settings


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()


@pytest.fixture
async def start_service(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[StartService]:
    """Start a listener on a free port; ``environ`` overrides go to the settings.

    ``redis`` replaces the test's Redis client (e.g. one of a port where
    nothing listens).
    """
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    @asynccontextmanager
    async def start(
        redis: aioredis.Redis | None = None, **overrides: str
    ) -> AsyncIterator[Service]:
        loaded = settings.load(environ(database_url, redis_prefix) | overrides)
        pool = await db.create_pool(
            loaded.database_url.reveal(), min_size=0, max_size=5, timeout_s=5
        )
        app = listener_app(loaded, pool, redis or redis_client)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        try:
            yield Service(url, pool, Client(url, session), loaded)
        finally:
            await server.close()
            await pool.close()

    yield start
    await session.close()


@pytest.fixture
async def service(start_service: StartService) -> AsyncIterator[Service]:
    async with start_service() as running:
        yield running


@pytest.fixture
def client(service: Service) -> Client:
    return service.client
