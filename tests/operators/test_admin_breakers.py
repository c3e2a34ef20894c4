"""Admin breakers: a daemon's circuit breakers seen and reset through the listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from operators.support import Client, Service

from haven import breaker_states
from haven.chain import ChainClient
from haven.daemon import http
from haven.daemon.breaker import CircuitBreaker
from haven.errors import RpcUnavailableError

BREAKERS = "/api/v1/admin/health/breakers"


async def trip(breaker: CircuitBreaker) -> None:
    async def down() -> None:
        raise RpcUnavailableError("test: the node is down")

    with contextlib.suppress(RpcUnavailableError):
        await breaker.call(down)


@pytest.fixture
async def daemon_breaker(service: Service) -> AsyncIterator[CircuitBreaker]:
    """A tripped breaker in a running daemon ``http`` component (no port)."""
    breaker = CircuitBreaker(
        "rpc", failure_threshold=1, attempts=1, reset_timeout_s=600
    )
    await trip(breaker)
    stopping = asyncio.Event()
    async with ChainClient(["http://127.0.0.1:9"], chain_id=31337) as chain:
        component = http.Http(service.settings, service.pool, chain, breakers=[breaker])
        running = asyncio.create_task(component.run(stopping))
        try:
            yield breaker
        finally:
            stopping.set()
            await asyncio.wait_for(running, 10)


async def listed_when_reported(client: Client, timeout_s: float = 10.0) -> list:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        reply = await client.get(BREAKERS)
        if reply.body["breakers"] or asyncio.get_running_loop().time() > deadline:
            return list(reply.body["breakers"])
        # The component reports on start, in its own task.
        await asyncio.sleep(0.05)


async def test_a_daemons_open_breaker_is_listed_with_its_state(client, daemon_breaker):
    [shown] = await listed_when_reported(client)

    assert (shown["name"], shown["state"], shown["stale"]) == ("rpc", "open", False)
    assert shown["consecutive_failures"] == 1
    assert shown["retry_in_s"] > 500


async def test_a_reset_closes_the_breaker_in_the_daemon_and_is_audited(
    client, service, daemon_breaker
):
    await listed_when_reported(client)

    reply = await client.post(
        f"{BREAKERS}/rpc/reset", headers={"X-Request-Id": "req-breaker-0001"}
    )

    assert reply.status == 200
    assert reply.body["applied"] is True
    assert [b["state"] for b in reply.body["breakers"]] == ["closed"]
    assert daemon_breaker.state == "closed"
    row = await service.pool.fetchrow(
        "SELECT * FROM admin_audit WHERE request_id = 'req-breaker-0001'"
    )
    assert (row["action"], row["subject"]) == ("breakers.reset", "rpc")
    assert row["detail"] == {"reset_id": reply.body["reset_id"], "applied": True}


async def test_resetting_a_breaker_no_daemon_runs_is_404(client, daemon_breaker):
    await listed_when_reported(client)

    reply = await client.post(f"{BREAKERS}/chain-tailer/reset")

    assert (reply.status, reply.error_code) == (404, "not_found")
    assert daemon_breaker.state == "open"


async def test_a_stopped_daemon_takes_its_breakers_off_the_list(client, service):
    breaker = CircuitBreaker("rpc")
    stopping = asyncio.Event()
    async with ChainClient(["http://127.0.0.1:9"], chain_id=31337) as chain:
        component = http.Http(service.settings, service.pool, chain, breakers=[breaker])
        running = asyncio.create_task(component.run(stopping))
        assert len(await listed_when_reported(client)) == 1
        stopping.set()
        await asyncio.wait_for(running, 10)

    reply = await client.get(BREAKERS)

    assert reply.body["breakers"] == []


async def test_a_breaker_made_after_start_up_is_reported_once_watched(client, service):
    stopping = asyncio.Event()
    async with ChainClient(["http://127.0.0.1:9"], chain_id=31337) as chain:
        component = http.Http(service.settings, service.pool, chain)
        running = asyncio.create_task(component.run(stopping))
        try:
            # As the lease's factory does when this daemon wins the submitter.
            breaker = CircuitBreaker("rpc", failure_threshold=1, attempts=1)
            await trip(breaker)
            component.watch(breaker)
            [shown] = await listed_when_reported(client)
        finally:
            stopping.set()
            await asyncio.wait_for(running, 10)

    assert (shown["name"], shown["state"]) == ("rpc", "open")


async def report_as(service: Service, process: str, silent_for_s: float) -> None:
    """Report a closed ``rpc`` breaker of ``process``, heard ``silent_for_s`` ago."""
    async with service.pool.acquire() as connection:
        snapshot = CircuitBreaker("rpc").snapshot()
        await breaker_states.report(connection, process, [snapshot], reset_id=0)
        # A killed process stops reporting: its row just grows old.
        await connection.execute(
            "UPDATE breaker_states SET reported_at = now() - make_interval(secs => $2)"
            " WHERE process = $1",
            process,
            silent_for_s,
        )


async def test_a_daemon_killed_long_ago_is_forgotten_and_a_recent_one_is_stale(
    client, service
):
    # Oldest last: no report after it deletes its row, so the listing must
    # leave it out by itself.
    await report_as(service, "host:300", 0)
    await report_as(service, "host:200", breaker_states.STALE_AFTER_S + 5)
    await report_as(service, "host:100", breaker_states.FORGET_AFTER_S + 60)

    reply = await client.get(BREAKERS)

    listed = [(row["process"], row["stale"]) for row in reply.body["breakers"]]
    assert listed == [("host:200", True), ("host:300", False)]


async def test_a_daemons_report_deletes_the_rows_of_daemons_killed_long_ago(service):
    for pid in range(101, 106):
        await report_as(service, f"host:{pid}", breaker_states.FORGET_AFTER_S + 60)
    await report_as(service, "host:200", breaker_states.STALE_AFTER_S + 5)

    await report_as(service, "host:300", 0)

    left = await service.pool.fetch(
        "SELECT process FROM breaker_states ORDER BY process"
    )
    assert [row["process"] for row in left] == ["host:200", "host:300"]
