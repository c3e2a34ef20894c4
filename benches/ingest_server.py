"""The server side of the ingest benchmark: ``python -m benches.ingest_server``.

Serves either the real listener (``create_app`` on a real pool and Redis)
or a bare aiohttp handler that answers 202 to every webhook, with the same
runner and socket settings, until SIGTERM. Prints ``ready`` on stdout once
the port accepts connections. The spec on stdin names the mode, the port
and, for the real listener, its HAVEN_* environment.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from benches import services
from haven import db, logs, settings
from haven.listeners.app import REDIS_TIMEOUT_S, create_app, make_runner
from haven.listeners.ratelimits import RateLimits

BARE = "bare"
REAL = "real"
# Every request still passes both Redis limits; they are set out of reach
# so the benchmark measures acceptance, not refusal.
UNREACHABLE_LIMITS = RateLimits(per_partner="10000000/minute", per_ip="10000000/minute")
ACCEPTED_BODY = b'{"status":"accepted"}'


async def _accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=ACCEPTED_BODY, content_type="application/json")


@asynccontextmanager
async def _bare_app(spec: Mapping[str, Any]) -> AsyncIterator[web.Application]:
    app = web.Application()
    app.router.add_post("/webhooks/{partner}", _accept)
    yield app


@asynccontextmanager
async def _real_app(spec: Mapping[str, Any]) -> AsyncIterator[web.Application]:
    loaded = settings.load(spec["environ"])
    logs.configure(loaded, process="listener")
    pool = await db.create_pool(loaded.database_url.reveal())
    redis = aioredis.from_url(
        loaded.redis_url.reveal(),
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )
    try:
        yield create_app(loaded, pool, redis, rate_limits=UNREACHABLE_LIMITS)
    finally:
        await redis.aclose()
        await pool.close()


async def serve(spec: Mapping[str, Any]) -> None:
    """Serve the app of ``spec["mode"]`` on its port until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    build = _real_app if spec["mode"] == REAL else _bare_app
    async with build(spec) as app:
        # The listener is served by the runner of `haven listen`, with its
        # access log; the bare handler by aiohttp's plain runner, which
        # writes no log line here.
        if spec["mode"] == REAL:
            runner = make_runner(app)
        else:
            runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, spec["host"], spec["port"]).start()
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            await stop.wait()
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    # The loop of ``haven listen``, for both servers.
    uvloop.run(serve(services.read_spec()))
