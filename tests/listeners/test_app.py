"""The listener process: serving, draining on SIGTERM, and PostgreSQL going away."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from loguru import logger
from yarl import URL

from harness.anvil import free_port
from harness.databases import with_port
from haven import db, intents, logs, settings
from haven.errors import SchemaOutdatedError
from haven.listeners.app import create_app, make_runner, serve


class Proxy:
    """A TCP relay to PostgreSQL that the test can cut, as a network failure would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self.writers += [writer, upstream_writer]
        await asyncio.gather(
            _pipe(reader, upstream_writer),
            _pipe(upstream_reader, writer),
            return_exceptions=True,
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.transport.abort()


async def test_postgresql_going_away_is_503_with_retry_after_until_it_returns(
    start_listener, database_url, conn
):
    proxy = Proxy(urlsplit(database_url).port or 5432)
    await proxy.start()
    try:
        async with start_listener(dsn=with_port(database_url, proxy.port)) as running:
            partner = running.partner
            before = partner.envelope("booking.completed", partner.booking("AUR-DB1"))
            during = partner.envelope("booking.completed", partner.booking("AUR-DB2"))
            first = await partner.send("aurora", before, delivery_id="msg_db1")

            await proxy.stop()
            down = await partner.send("aurora", during, delivery_id="msg_db2")
            replay_down = await partner.send("aurora", before, delivery_id="msg_db1")
            await proxy.start()
            back = await partner.send("aurora", during, delivery_id="msg_db2")
    finally:
        await proxy.stop()

    assert first.status == 202
    assert (down.status, down.error_code) == (503, "database_unavailable")
    assert int(down.headers["Retry-After"]) > 0
    assert replay_down.status == 503
    assert (back.status, back.body["outcome"]) == (202, "intent_created")
    assert await conn.fetchval("SELECT count(*) FROM intents") == 2


async def test_a_listener_whose_database_never_answers_says_503(
    start_listener, database_url
):
    closed = with_port(database_url, free_port())
    async with start_listener(dsn=closed) as listener:
        partner = listener.partner
        body = partner.envelope("booking.confirmed", partner.booking("AUR-DB3"))

        reply = await partner.send("aurora", body)

    assert (reply.status, reply.error_code) == (503, "database_unavailable")
    assert "Retry-After" in reply.headers


async def _wait_until(predicate, what: str) -> None:
    for _ in range(500):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


async def _accepts_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _is_up(serving: asyncio.Task[None], port: int) -> bool:
    if serving.done():
        serving.result()
        raise AssertionError("serve returned before it was stopped")
    return await _accepts_connections(port)


async def _refuses_connections(port: int) -> bool:
    return not await _accepts_connections(port)


async def test_serve_drains_requests_in_flight_on_sigterm_and_returns(
    listener_environ, make_partner, conn
):
    port = free_port()
    env = listener_environ | {"HAVEN_LISTEN_PORT": str(port)}
    serving = asyncio.create_task(serve(settings.load(env)))
    session = aiohttp.ClientSession()
    try:
        await _wait_until(lambda: _is_up(serving, port), "the listener is up")
        partner = make_partner(f"http://127.0.0.1:{port}", session)
        booking = partner.booking("AUR-TERM")
        created = await partner.send(
            "aurora", partner.envelope("booking.completed", booking)
        )

        # Hold the intent's row so the next request stays in flight.
        holding = conn.transaction()
        await holding.start()
        await conn.execute(
            "SELECT 1 FROM intents WHERE id = $1 FOR UPDATE",
            intents.derive_id("aurora", "booking", "AUR-TERM"),
        )
        in_flight = asyncio.create_task(
            partner.send("aurora", partner.envelope("booking.cancelled", booking))
        )
        await _wait_until(lambda: _has_lock_wait(conn), "the request waits")
        os.kill(os.getpid(), signal.SIGTERM)
        await _wait_until(lambda: _refuses_connections(port), "the socket closes")
        await holding.commit()

        finished = await in_flight
        await asyncio.wait_for(serving, 30)
    finally:
        await session.close()
        serving.cancel()

    assert created.status == 202
    assert (finished.status, finished.body["intent_status"]) == (202, "voided")
    assert serving.result() is None


async def _has_lock_wait(conn) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(waiting)


async def test_serve_refuses_a_database_older_than_the_code(
    empty_database_url, listener_environ
):
    env = listener_environ | {"HAVEN_DATABASE_URL": empty_database_url}

    with pytest.raises(SchemaOutdatedError):
        await serve(settings.load(env))


async def test_routes_added_by_other_modules_share_the_request_id_and_errors(
    listener_settings, redis_client
):
    pool = await db.create_pool(listener_settings.database_url.reveal(), min_size=0)
    app = create_app(listener_settings, pool, redis_client)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/broken", broken)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/healthz")) as ok:
                ok_id = ok.headers["X-Request-Id"]
            async with session.get(server.make_url("/broken")) as failed:
                failed_body = await failed.json()
    finally:
        await server.close()
        await pool.close()

    assert ok.status == 200 and ok_id
    assert failed.status == 500
    assert failed_body["error"]["code"] == "internal_error"


async def test_every_answered_request_gets_one_structured_access_line(
    listener_settings, redis_client
):
    lines: list[dict] = []
    sink = logger.add(
        lambda message: lines.append(orjson.loads(str(message))["record"]),
        serialize=True,
        level="INFO",
    )
    pool = await db.create_pool(listener_settings.database_url.reveal(), min_size=0)
    runner = make_runner(create_app(listener_settings, pool, redis_client))
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/webhooks/aurora?x=1",
                data=b"{}",
                headers={"X-Request-Id": "req-access-0001", "User-Agent": "aurora/2"},
            ) as refused,
        ):
            await refused.read()
    finally:
        await runner.cleanup()
        await pool.close()
        logger.remove(sink)

    access = [r for r in lines if r["extra"].get("library") == "aiohttp.access"]
    assert len(access) == 1
    (line,) = access
    assert line["message"] == f"POST /webhooks/aurora {refused.status}"
    assert refused.status == 415
    assert {
        "method": "POST",
        "path": "/webhooks/aurora",
        "status_code": 415,
        "remote_addr": "127.0.0.1",
        "user_agent": "aurora/2",
        "request_id": "req-access-0001",
    }.items() <= line["extra"].items()
    assert line["extra"]["body_bytes"] > 0
    assert line["extra"]["duration_ms"] >= 0


@asynccontextmanager
async def served_with_text_logs(
    listener_settings: settings.Settings, redis_client: Any
) -> AsyncIterator[tuple[str, io.StringIO]]:
    """Serve the listener as `haven listen` does, logging text into a buffer."""
    captured = io.StringIO()
    logs.configure(None, process="listener", sink=captured)
    pool = await db.create_pool(listener_settings.database_url.reveal(), min_size=0)
    runner = make_runner(create_app(listener_settings, pool, redis_client))
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}", captured
    finally:
        await runner.cleanup()
        await pool.close()
        logger.configure(patcher=None)
        logger.remove()
        logger.add(sys.stderr)


async def test_a_request_path_cannot_forge_a_text_log_line(
    listener_settings, redis_client
):
    forged = "17:40:00.000 CRITICAL haven.daemon.submitter FORGED double mint"
    target = "/nope%0A" + forged.replace(" ", "%20") + "%00"
    async with served_with_text_logs(listener_settings, redis_client) as (
        base,
        captured,
    ):
        url = URL(base + target, encoded=True)
        async with aiohttp.ClientSession() as session, session.get(url) as reply:
            await reply.read()
    lines = captured.getvalue().splitlines()

    assert reply.status == 404
    [access] = [line for line in lines if "FORGED" in line]
    assert "GET /nope\\n17:40:00.000 CRITICAL" in access
    assert not any(line.startswith(forged) for line in lines)
    assert "\x00" not in captured.getvalue()


async def test_a_request_that_is_not_valid_http_is_one_warning_not_an_error(
    listener_settings, redis_client
):
    async with (
        served_with_text_logs(listener_settings, redis_client) as (base, captured),
        aiohttp.ClientSession() as session,
        session.get(f"{base}/healthz", headers={"X-Long": "A" * 9000}) as reply,
    ):
        await reply.read()
    lines = captured.getvalue().splitlines()

    assert reply.status == 400
    [refused] = [line for line in lines if "not valid HTTP" in line]
    assert "WARNING" in refused and "127.0.0.1" in refused
    assert "Got more than 8190 bytes" in refused
    assert not any("ERROR" in line or "Traceback" in line for line in lines)
