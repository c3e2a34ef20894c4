"""Prometheus metrics of the listener and the daemon: state read at scrape time."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import orjson
from operators.support import (
    SIGNER,
    environ,
    seed_intent,
    seed_signer,
    seed_submitted,
)
from prometheus_client.parser import text_string_to_metric_families

from harness.anvil import free_port
from haven import db, intents, readings, settings
from haven.chain import ChainClient
from haven.daemon import http
from haven.daemon.breaker import CircuitBreaker
from haven.errors import RpcUnavailableError
from haven.reconciler import breaks


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Index the samples of an exposition by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def test_intents_by_status_and_in_flight_are_read_from_the_books(client, service):
    for n in range(3):
        await seed_intent(service.pool, f"AUR-m{n}")
    flying = await seed_intent(service.pool, "AUR-fly")
    await seed_submitted(service.pool, flying, nonce=0)
    await seed_intent(service.pool, "AUR-held", status=intents.APPROVAL)

    reply = await client.get("/metrics", key=None)

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    found = samples(reply.text)
    assert value(found, "haven_intents", status="ready") == 3
    assert value(found, "haven_intents", status="submitted") == 1
    assert value(found, "haven_intents", status="approval") == 1
    assert value(found, "haven_intents", status="confirmed") == 0
    signer = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
    assert value(found, "haven_signer_in_flight", signer=signer) == 1
    assert value(found, "haven_signer_queued", signer="unassigned") == 3
    assert (
        value(
            found, "haven_breaks_open", **{"class": "unexpected_mint", "priority": "P1"}
        )
        == 0
    )
    assert value(found, "haven_scrape_source_up", source="postgres") == 1
    assert value(found, "haven_scrape_source_up", source="chain") == 0


async def test_queued_splits_signed_but_unsent_nonces_per_signer_from_sent_ones(
    client, service
):
    idle = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    await seed_signer(service.pool, idle)
    sent = await seed_intent(service.pool, "AUR-sent")
    await seed_submitted(service.pool, sent, nonce=0)
    # Signed and committed, but no node has taken it yet (e.g. refused).
    unsent = await seed_intent(service.pool, "AUR-unsent")
    await seed_submitted(service.pool, unsent, nonce=1, sent_block=None)
    await seed_intent(service.pool, "AUR-waiting")

    found = samples((await client.get("/metrics", key=None)).text)

    assert value(found, "haven_signer_in_flight", signer=SIGNER) == 1
    assert value(found, "haven_signer_queued", signer=SIGNER) == 1
    assert value(found, "haven_signer_in_flight", signer=idle) == 0
    assert value(found, "haven_signer_queued", signer=idle) == 0
    assert value(found, "haven_signer_queued", signer="unassigned") == 1


async def test_open_breaks_are_counted_by_class_and_aged_from_first_sighting(
    client, service
):
    first_seen = datetime.now(UTC) - timedelta(days=3)
    found_breaks = [
        breaks.Break(breaks.AMOUNT_MISMATCH, f"0x{n:064x}", {"n": str(n)})
        for n in range(2)
    ]
    found_breaks.append(breaks.Break(breaks.SUPPLY_DRIFT, "token", {"drift": "1"}))
    async with db.transaction(service.pool) as connection:
        await breaks.record_seen(connection, found_breaks[:1], at=first_seen)
        await breaks.record_seen(connection, found_breaks[1:], at=datetime.now(UTC))
        await breaks.record_seen(
            connection,
            [breaks.Break(breaks.STALE_INTENT, "0x01", {})],
            at=first_seen,
        )
        await breaks.resolve_unseen(connection, found_breaks, at=datetime.now(UTC))

    found = samples((await client.get("/metrics", key=None)).text)

    def open_of(cls: str) -> float | None:
        priority = breaks.PRIORITY[cls]
        return value(found, "haven_breaks_open", **{"class": cls, "priority": priority})

    def oldest_s(cls: str) -> float:
        age_s = value(found, "haven_break_oldest_age_seconds", **{"class": cls})
        assert age_s is not None
        return age_s

    assert open_of(breaks.AMOUNT_MISMATCH) == 2
    assert open_of(breaks.SUPPLY_DRIFT) == 1
    assert open_of(breaks.STALE_INTENT) == 0  # resolved
    three_days_s = timedelta(days=3).total_seconds()
    assert three_days_s <= oldest_s(breaks.AMOUNT_MISMATCH) < three_days_s + 600
    assert oldest_s(breaks.SUPPLY_DRIFT) < 600
    assert oldest_s(breaks.STALE_INTENT) == 0


async def test_webhook_answers_and_requests_are_counted_by_stable_labels(client):
    before = samples((await client.get("/metrics", key=None)).text)
    await client.post("/webhooks/aurora", json={"type": "x"}, key=None)
    await client.post("/webhooks/nobody-9f3a", json={}, key=None)

    after = samples((await client.get("/metrics", key=None)).text)

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (
            value(before, name, **labels) or 0
        )

    missing = {"outcome": "signature_headers_missing", "status_code": "401"}
    assert grew("haven_webhook_requests_total", partner="aurora", **missing) == 1
    unknown = {"outcome": "unknown_partner", "status_code": "404"}
    assert grew("haven_webhook_requests_total", partner="other", **unknown) == 1
    route = {"route": "/webhooks/{partner}", "method": "POST", "status_code": "401"}
    assert grew("haven_http_requests_total", **route) == 1
    assert not any("nobody-9f3a" in str(key) for key in after)


async def test_tail_lag_and_signer_balances_are_read_from_the_chain(
    start_service, anvil
):
    await anvil.mine(7)
    async with start_service(HAVEN_RPC_URL=anvil.url) as service:
        await seed_signer(service.pool, "0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
        found = samples((await service.client.get("/metrics", key=None)).text)

    assert value(found, "haven_chain_head_block") == 7
    assert value(found, "haven_tail_lag_blocks") == 7  # no checkpoint yet
    balance = value(
        found,
        "haven_signer_balance_wei",
        signer="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    )
    assert balance == 10_000 * 10**18  # anvil's funded dev account


async def test_the_daemon_serves_metrics_health_and_its_breakers_on_its_own_host(
    database_url, redis_prefix, anvil
):
    port = free_port()
    loaded = settings.load(
        environ(database_url, redis_prefix, anvil.url)
        # Another loopback address than the listener's, to tell the two apart.
        | {"HAVEN_DAEMON_HOST": "127.0.0.2", "HAVEN_DAEMON_PORT": str(port)}
    )
    breaker = CircuitBreaker("rpc", failure_threshold=1, attempts=1)
    await _trip(breaker)
    pool = await db.create_pool(database_url, min_size=0, max_size=3)
    stopping = asyncio.Event()
    async with ChainClient(loaded.rpc_url, chain_id=loaded.chain_id) as chain:
        component = http.Http(loaded, pool, chain, breakers=[breaker])
        running = asyncio.create_task(component.run(stopping))
        try:
            base = f"http://127.0.0.2:{port}"
            health = await _get_when_up(f"{base}/healthz")
            ready = orjson.loads(await _get_when_up(f"{base}/readyz"))
            text = await _get_when_up(f"{base}/metrics")
        finally:
            stopping.set()
            await asyncio.wait_for(running, 10)
    await pool.close()

    assert '"alive"' in health
    assert ready["status"] == "ready"
    # The daemon does not use Redis: its readiness does not depend on it.
    assert set(ready["checks"]) == {"postgres", "chain", "tail"}
    found = samples(text)
    assert value(found, "haven_breaker_state", breaker="rpc") == 2  # open
    assert value(found, "haven_intents", status="ready") == 0
    assert value(found, "haven_scrape_source_up", source="chain") == 1


async def test_a_database_outage_leaves_the_chain_up_with_its_head(
    database_url, redis_prefix, anvil
):
    loaded = settings.load(environ(database_url, redis_prefix, anvil.url))
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/haven"
    dead = await asyncpg.create_pool(nowhere, min_size=0, timeout=2)
    try:
        async with ChainClient(loaded.rpc_url, chain_id=loaded.chain_id) as chain:
            head = await chain.block_number()
            families = await readings.read_all(readings.Sources(loaded, dead, chain))
    finally:
        await dead.close()
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }

    assert value(found, "haven_scrape_source_up", source="postgres") == 0
    assert value(found, "haven_scrape_source_up", source="chain") == 1
    assert value(found, "haven_chain_head_block") == head
    # What needs both sources is left out, not reported as zero.
    assert value(found, "haven_tail_lag_blocks") is None
    assert value(found, "haven_intents", status="ready") is None


async def _trip(breaker: CircuitBreaker) -> None:
    async def down() -> None:
        raise RpcUnavailableError("test: the node is down")

    with contextlib.suppress(RpcUnavailableError):
        await breaker.call(down)
    assert breaker.state == "open"


async def _get_when_up(url: str, timeout_s: float = 10.0) -> str:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    return await response.text()
            except aiohttp.ClientConnectionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
            # The component binds its port in its own task; nothing to await on.
            await asyncio.sleep(0.05)
