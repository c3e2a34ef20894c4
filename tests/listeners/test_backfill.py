"""Backfill against a stand-in partner API served on a real local port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from ops import processes
from ops.processes import HAVEN

from harness.anvil import free_port
from haven import db, intents
from haven.listeners import rules
from haven.listeners.backfill import Backfill, PartnerApi, PartnerApiError

WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def booking_event(delivery_id: str, booking_id: str, event_type: str) -> dict:
    return {
        "id": delivery_id,
        "type": event_type,
        "timestamp": "2026-12-01T10:00:00Z",
        "data": {
            "booking_id": booking_id,
            "guest_id": "G-1",
            "wallet": WALLET,
            "total_paid_cents": 45000,
            "currency": "CAD",
            "nights": 3,
        },
    }


class StandInPartner:
    """Serves ``GET /events`` in pages, as a partner's API would."""

    def __init__(self, pages: list[list[Any]], *, status: int = 200) -> None:
        self.pages = pages
        self.status = status
        self.requests: list[dict[str, str]] = []
        self.served = asyncio.Condition()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        async with self.served:
            self.requests.append(dict(request.query) | dict(request.headers))
            self.served.notify_all()
        if self.status != 200:
            return web.Response(status=self.status)
        index = int(request.query.get("cursor", "0"))
        following = str(index + 1) if index + 1 < len(self.pages) else None
        return web.json_response(
            {"events": self.pages[index], "next_cursor": following}
        )

    async def wait_for_requests(self, count: int) -> None:
        async with self.served:
            await self.served.wait_for(lambda: len(self.requests) >= count)


@pytest.fixture
async def serve_partner() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(stand_in: StandInPartner) -> StandInPartner:
        app = web.Application()
        app.router.add_get("/events", stand_in.handle)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        stand_in.url = str(server.make_url("/events"))
        return stand_in

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def pool(database_url):
    opened = await db.create_pool(database_url, min_size=0)
    yield opened
    await opened.close()


async def test_a_pull_applies_missed_events_once_across_pages(
    serve_partner, pool, conn
):
    stand_in = await serve_partner(
        StandInPartner(
            [
                [
                    booking_event("msg_b1", "AUR-B1", "booking.completed"),
                    booking_event("msg_b2", "AUR-B2", "booking.confirmed"),
                ],
                [
                    booking_event("msg_b3", "AUR-B2", "booking.cancelled"),
                    {"id": "msg_b4", "type": "booking.completed", "data": {}},
                    "not an event",
                ],
            ]
        )
    )
    backfill = Backfill(
        pool, rules.load(), (PartnerApi("aurora", stand_in.url, token="tok-1"),)
    )

    [first] = await backfill.run_once()
    [second] = await backfill.run_once()

    assert (first.fetched, first.applied, first.refused) == (5, 3, 2)
    assert (second.applied, second.already_known, second.refused) == (0, 3, 2)
    statuses = await conn.fetch("SELECT source_key, status FROM intents ORDER BY 1")
    assert [(r["source_key"], r["status"]) for r in statuses] == [
        ("AUR-B1", "ready"),
        ("AUR-B2", "voided"),
    ]
    assert stand_in.requests[0]["Authorization"] == "Bearer tok-1"
    assert stand_in.requests[0]["since"].endswith("Z")
    sources = await conn.fetch("SELECT DISTINCT source FROM webhook_deliveries")
    assert [r["source"] for r in sources] == ["backfill"]


async def test_a_webhook_for_an_event_already_pulled_is_a_replay_not_a_conflict(
    serve_partner, pool, partner, conn
):
    pulled = booking_event("msg_b5", "AUR-B5", "booking.completed")
    stand_in = await serve_partner(StandInPartner([[pulled]]))
    await Backfill(pool, rules.load(), (PartnerApi("aurora", stand_in.url),)).run_once()
    webhook_body = {key: value for key, value in pulled.items() if key != "id"}

    reply = await partner.send("aurora", webhook_body, delivery_id="msg_b5")

    assert reply.status == 202
    assert reply.body["outcome"] == "intent_created"
    assert await conn.fetchval("SELECT count(*) FROM security_alerts") == 0
    assert await conn.fetchval("SELECT count(*) FROM intents") == 1


async def test_an_event_already_delivered_by_webhook_is_not_applied_again(
    serve_partner, pool, partner, conn
):
    pulled = booking_event("msg_b6", "AUR-B6", "booking.confirmed")
    webhook_body = {key: value for key, value in pulled.items() if key != "id"}
    await partner.send("aurora", webhook_body, delivery_id="msg_b6")
    stand_in = await serve_partner(StandInPartner([[pulled]]))

    [report] = await Backfill(
        pool, rules.load(), (PartnerApi("aurora", stand_in.url),)
    ).run_once()

    assert (report.already_known, report.applied) == (1, 0)
    assert await conn.fetchval("SELECT count(*) FROM partner_events") == 1


async def test_a_failing_partner_api_raises_partner_api_error(serve_partner, pool):
    stand_in = await serve_partner(StandInPartner([[]], status=502))
    backfill = Backfill(pool, rules.load(), (PartnerApi("tribe", stand_in.url),))

    with pytest.raises(PartnerApiError, match="502"):
        await backfill.run_once()


async def test_an_unreachable_partner_api_raises_partner_api_error(pool):
    url = f"http://127.0.0.1:{free_port()}/events"
    backfill = Backfill(pool, rules.load(), (PartnerApi("tribe", url),))

    with pytest.raises(PartnerApiError):
        await backfill.run_once()


async def test_the_listener_runs_the_backfill_on_its_schedule(
    serve_partner, start_listener, conn
):
    stand_in = await serve_partner(
        StandInPartner(
            [
                [
                    {
                        "id": "msg_t1",
                        "type": "coaching.completed",
                        "timestamp": "2026-12-01T10:00:00Z",
                        "data": {
                            "member_id": "M-1",
                            "wallet": WALLET,
                            "session_id": "S-1",
                        },
                    }
                ]
            ]
        )
    )
    apis = (PartnerApi("tribe", stand_in.url),)

    async with start_listener(partner_apis=apis, backfill_interval_s=0.05):
        # The second request starts only after the first run has finished.
        await asyncio.wait_for(stand_in.wait_for_requests(2), 10)

    assert await conn.fetchval("SELECT source_key FROM intents") == "S-1"


async def test_a_failing_scheduled_backfill_keeps_the_listener_serving(
    serve_partner, start_listener
):
    stand_in = await serve_partner(StandInPartner([[]], status=500))
    apis = (PartnerApi("aurora", stand_in.url),)

    async with start_listener(partner_apis=apis, backfill_interval_s=0.05) as running:
        await asyncio.wait_for(stand_in.wait_for_requests(2), 10)
        async with (
            aiohttp.ClientSession() as session,
            session.get(running.url + "/webhooks/aurora") as reply,
        ):
            status = reply.status

    assert status == 405


async def test_haven_listen_pulls_a_missed_event_from_the_partner_api_it_is_given(
    serve_partner, listener_environ, conn, tmp_path
):
    missed = booking_event("msg_missed", "AUR-MISSED", "booking.completed")
    stand_in = await serve_partner(StandInPartner([[missed]]))
    environ = listener_environ | {
        "HAVEN_LISTEN_PORT": str(free_port()),
        "HAVEN_DAEMON_PORT": "0",
        "HAVEN_PARTNER_API_AURORA": stand_in.url,
        "HAVEN_PARTNER_API_TOKEN_AURORA": "aurora-events-token",
        "HAVEN_PARTNER_POLL_LOOKBACK_S": "3600",
    }
    listener = await processes.start("listener", [*HAVEN, "listen"], environ, tmp_path)
    intent_id = intents.derive_id("aurora", "booking", "AUR-MISSED")

    async def created() -> bool:
        if listener.process.returncode is not None:
            raise AssertionError(f"the listener exited\n{listener.log_tail()}")
        found = await conn.fetchval("SELECT 1 FROM intents WHERE id = $1", intent_id)
        return found is not None

    try:
        await processes.wait_until(created, 30, "the missed event's intent")
    finally:
        await listener.stop()

    [first, *_] = stand_in.requests
    since = datetime.fromisoformat(first["since"].replace("Z", "+00:00"))
    lookback_s = (datetime.now(UTC) - since).total_seconds()
    assert first["Authorization"] == "Bearer aurora-events-token"
    assert 3600 <= lookback_s < 3600 + 60
    assert (
        await conn.fetchval("SELECT status FROM intents WHERE id = $1", intent_id)
        == intents.READY
    )
