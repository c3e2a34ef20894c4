"""Liveness and readiness: every dependency checked, none secret.

The listener is ready while PostgreSQL answers: it takes webhooks without
Redis (rate limits go uncounted) and without the chain, so those only
degrade it. The daemon is ready only with PostgreSQL, the chain and a
tailer close to the head.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from operators.support import NO_NODE_URL, environ

from harness.anvil import free_port
from haven import db, settings
from haven.chain import ChainClient
from haven.daemon import http
from haven.listeners import health


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1, socket_connect_timeout=1
    )
    yield client
    await client.aclose()


@asynccontextmanager
async def daemon_readyz(
    database_url: str, redis_prefix: str, rpc_url: str, **overrides: str
) -> AsyncIterator[tuple[int, dict]]:
    """Host the daemon's health app and yield the status and body of /readyz."""
    loaded = settings.load(environ(database_url, redis_prefix, rpc_url) | overrides)
    pool = await db.create_pool(database_url, min_size=0, max_size=2)
    async with ChainClient(loaded.rpc_url, chain_id=loaded.chain_id) as chain:
        server = TestServer(http.Http(loaded, pool, chain).app(), host="127.0.0.1")
        await server.start_server()
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(server.make_url("/readyz")) as response,
            ):
                yield response.status, await response.json()
        finally:
            await server.close()
            await pool.close()


async def test_healthz_answers_while_the_process_runs_without_a_key(client):
    reply = await client.get("/healthz", key=None)

    assert (reply.status, reply.body) == (200, {"status": "alive"})


async def test_readyz_is_ready_when_every_dependency_answers(start_service, anvil):
    async with start_service(HAVEN_RPC_URL=anvil.url) as service:
        reply = await service.client.get("/readyz", key=None)

    assert reply.status == 200
    assert reply.body["status"] == "ready"
    checks = reply.body["checks"]
    assert set(checks) == {"postgres", "redis", "chain", "tail"}
    assert all(check["ok"] for check in checks.values())
    required = {name for name, check in checks.items() if check["required"]}
    assert required == {"postgres"}


async def test_the_listener_stays_ready_degraded_without_redis_and_the_node(
    start_service, dead_redis
):
    async with start_service(redis=dead_redis) as service:
        reply = await service.client.get("/readyz", key=None)

    assert reply.status == 200
    assert reply.body["status"] == "degraded"
    checks = reply.body["checks"]
    assert checks["postgres"] == {"ok": True, "detail": None, "required": True}
    assert checks["chain"] == {
        "ok": False,
        "detail": "unreachable (RpcUnavailableError)",
        "required": False,
    }
    assert checks["redis"]["ok"] is False
    assert checks["redis"]["required"] is False
    assert checks["redis"]["detail"].startswith("unreachable (")
    assert NO_NODE_URL.removeprefix("http://") not in reply.text


async def test_the_listener_is_not_ready_without_postgres(start_service, anvil):
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/haven"
    async with start_service(
        HAVEN_DATABASE_URL=nowhere, HAVEN_RPC_URL=anvil.url
    ) as service:
        reply = await service.client.get("/readyz", key=None)

    assert (reply.status, reply.body["status"]) == (503, "not_ready")
    assert reply.body["checks"]["postgres"]["ok"] is False
    assert reply.body["checks"]["chain"]["ok"] is True
    assert nowhere not in reply.text


async def test_the_listener_is_degraded_when_the_tailer_lags(start_service, anvil):
    await anvil.mine(10)
    async with start_service(
        HAVEN_RPC_URL=anvil.url, HAVEN_READY_MAX_TAIL_LAG_BLOCKS="5"
    ) as service:
        reply = await service.client.get("/readyz", key=None)

    assert (reply.status, reply.body["status"]) == (200, "degraded")
    tail = reply.body["checks"]["tail"]
    assert tail == {
        "ok": False,
        "detail": "10 blocks behind the head (at most 5)",
        "required": False,
    }


async def test_the_daemon_is_not_ready_when_the_node_is_down(
    database_url, redis_prefix
):
    async with daemon_readyz(database_url, redis_prefix, NO_NODE_URL) as answer:
        status, body = answer

    assert (status, body["status"]) == (503, "not_ready")
    assert set(body["checks"]) == {"postgres", "chain", "tail"}
    assert body["checks"]["chain"] == {
        "ok": False,
        "detail": "unreachable (RpcUnavailableError)",
        "required": True,
    }
    assert body["checks"]["postgres"]["ok"] is True


async def test_the_daemon_is_not_ready_when_the_tailer_lags_past_the_bound(
    database_url, redis_prefix, anvil
):
    await anvil.mine(10)
    async with daemon_readyz(
        database_url, redis_prefix, anvil.url, HAVEN_READY_MAX_TAIL_LAG_BLOCKS="5"
    ) as answer:
        status, body = answer

    assert (status, body["status"]) == (503, "not_ready")
    assert body["checks"]["chain"]["ok"] is True
    assert body["checks"]["tail"] == {
        "ok": False,
        "detail": "10 blocks behind the head (at most 5)",
        "required": True,
    }


async def test_an_unreachable_redis_fails_its_check_only(service, anvil, dead_redis):
    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as chain:
        readiness = health.Readiness(service.pool, chain, dead_redis, 64)
        checks = await readiness.check()

    assert checks["redis"]["ok"] is False
    assert checks["redis"]["detail"].startswith("unreachable (")
    assert checks["postgres"]["ok"] and checks["chain"]["ok"] and checks["tail"]["ok"]
    assert health.readiness_status(checks) == health.NOT_READY
