"""Shared fixtures: real PostgreSQL, Redis and anvil, isolated per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from harness import databases
from harness.anvil import AnvilNode, running_anvil
from haven import migrations

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
async def template_database() -> AsyncIterator[str]:
    """A database migrated once per session, copied by each test."""
    name = await databases.create_database(prefix="haven_tpl")
    await migrations.apply(databases.dsn_for(name))
    yield name
    await databases.drop_database(name)


@pytest.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    """DSN of a fresh, fully migrated database for this test alone."""
    name = await databases.create_database(template=template_database)
    yield databases.dsn_for(name)
    await databases.drop_database(name)


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    """DSN of a fresh database with no schema at all."""
    name = await databases.create_database()
    yield databases.dsn_for(name)
    await databases.drop_database(name)


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"haven-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def anvil() -> AsyncIterator[AnvilNode]:
    """A fresh anvil node for this test alone."""
    async with running_anvil() as node:
        yield node
