"""The operators' surface of the listener, added to its app in one call.

:func:`setup` adds ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``,
the admin API under ``/api/v1/admin`` and the reports page, plus a
middleware that counts and times every request by route template. It opens
one chain client (lazily: nothing is dialled until a request needs it) and
closes it with the app.
"""

from __future__ import annotations

import time

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler

from haven import metrics, readings
from haven.chain import ChainClient
from haven.listeners import admin, health, openapi, reports_page
from haven.listeners.admin_requests import AdminContext
from haven.listeners.auth import AdminKeys
from haven.listeners.ratelimits import Limiter
from haven.settings import Settings

CHAIN_TIMEOUT_S = 5.0
METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))

SOURCES = web.AppKey("haven.operators.sources", readings.Sources)


def setup(
    app: web.Application,
    settings: Settings,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    limiter: Limiter | None = None,
) -> None:
    """Add every operator route and the request metrics to the listener ``app``.

    ``limiter`` counts refused admin keys per client (None: not limited).
    """
    chain = ChainClient(
        settings.rpc_url, chain_id=settings.chain_id, timeout_s=CHAIN_TIMEOUT_S
    )

    async def close_chain(_: web.Application) -> None:
        await chain.close()

    app.on_cleanup.append(close_chain)
    app.middlewares.append(count_requests)
    app[SOURCES] = readings.Sources(settings, pool, chain)

    readiness = health.Readiness.of(
        settings, pool, chain, redis, needs=health.LISTENER_NEEDS
    )
    health.setup(app, readiness)
    app.router.add_get(METRICS_PATH, serve_metrics)
    openapi.setup(app)
    reports_page.setup(app)
    keys = AdminKeys.from_settings(settings)
    admin.setup(app, AdminContext(settings, pool, chain, keys, limiter))


async def serve_metrics(request: web.Request) -> web.Response:
    """Answer a Prometheus scrape: event counters plus state read now."""
    state = await readings.read_all(request.app[SOURCES])
    return metrics_response(metrics.exposition(state))


def metrics_response(body: bytes) -> web.Response:
    response = web.Response(body=body)
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time each request under its route template, never its raw path."""
    started = time.perf_counter()
    status_code = 500
    try:
        response = await handler(request)
        status_code = response.status
        return response
    except web.HTTPException as exc:
        status_code = exc.status_code
        raise
    finally:
        route = route_template(request)
        # Methods come from clients: bound the label values.
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        metrics.HTTP_REQUESTS.labels(route, method, str(status_code)).inc()
        metrics.HTTP_DURATION.labels(route).observe(time.perf_counter() - started)


def route_template(request: web.Request) -> str:
    """Return the template of the matched route, or ``unmatched``."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    return resource.canonical
