"""Liveness and readiness of the listener: every dependency checked, none secret."""

from __future__ import annotations

import redis.asyncio as aioredis

from haven.chain import ChainClient
from haven.listeners import health


async def test_healthz_answers_while_the_process_runs_without_a_key(client):
    reply = await client.get("/healthz", key=None)

    assert (reply.status, reply.body) == (200, {"status": "alive"})


async def test_readyz_is_ready_when_every_dependency_answers(start_service, anvil):
    async with start_service(HAVEN_RPC_URL=anvil.url) as service:
        reply = await service.client.get("/readyz", key=None)

    assert reply.status == 200
    assert reply.body["status"] == "ready"
    assert set(reply.body["checks"]) == {"postgres", "redis", "chain", "tail"}
    assert all(check["ok"] for check in reply.body["checks"].values())


async def test_readyz_is_503_and_says_why_when_the_node_is_down(client):
    reply = await client.get("/readyz", key=None)

    assert reply.status == 503
    checks = reply.body["checks"]
    assert checks["postgres"]["ok"] is True
    assert checks["chain"] == {
        "ok": False,
        "detail": "unreachable (RpcUnavailableError)",
    }
    assert "127.0.0.1:9" not in reply.text


async def test_readyz_is_503_when_the_tailer_lags_past_the_bound(start_service, anvil):
    await anvil.mine(10)
    async with start_service(
        HAVEN_RPC_URL=anvil.url, HAVEN_READY_MAX_TAIL_LAG_BLOCKS="5"
    ) as service:
        reply = await service.client.get("/readyz", key=None)

    assert reply.status == 503
    assert reply.body["checks"]["chain"]["ok"] is True
    tail = reply.body["checks"]["tail"]
    assert tail["ok"] is False
    assert tail["detail"] == "10 blocks behind the head (at most 5)"


async def test_an_unreachable_redis_fails_its_check_only(service, anvil):
    broken = aioredis.from_url(
        "redis://127.0.0.1:1/0", socket_timeout=1, socket_connect_timeout=1
    )
    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as chain:
        readiness = health.Readiness(service.pool, chain, broken, 64)
        checks = await readiness.check()
    await broken.aclose()

    assert checks["redis"]["ok"] is False
    assert checks["redis"]["detail"].startswith("unreachable (")
    assert checks["postgres"]["ok"] and checks["chain"]["ok"] and checks["tail"]["ok"]
