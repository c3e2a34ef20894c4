"""The listener process: its aiohttp application and its lifetime.

:func:`create_app` builds the application from already-open resources, so
tests and other processes can host it; route modules register themselves
on it (``webhooks.register``) and later ones (admin, metrics, health) are
added the same way. :func:`serve` is what ``haven listen`` runs: it opens
the pool and Redis, serves until SIGTERM or SIGINT, lets in-flight requests
finish and closes everything it opened.
"""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from loguru import logger

from haven import db, migrations
from haven.listeners import correlation, jobs, operators, rules, webhooks
from haven.listeners.backfill import Backfill, PartnerApi
from haven.listeners.ratelimits import Limiter, RateLimits
from haven.listeners.rules import RuleBook
from haven.listeners.signatures import Verifier
from haven.settings import PARTNERS, Settings

SETTINGS = web.AppKey("haven.settings", Settings)
POOL = web.AppKey("haven.pool", asyncpg.Pool)
REDIS = web.AppKey("haven.redis", aioredis.Redis)
RULES = web.AppKey("haven.rules", RuleBook)

SHUTDOWN_TIMEOUT_S = 30.0
POOL_CLOSE_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 2.0
BACKFILL_INTERVAL_S = 300.0


def create_app(
    settings: Settings,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    *,
    rule_book: RuleBook | None = None,
    rate_limits: RateLimits | None = None,
    partner_apis: tuple[PartnerApi, ...] = (),
    backfill_interval_s: float = BACKFILL_INTERVAL_S,
) -> web.Application:
    """Build the listener app on an open pool and Redis client, which it does not close.

    ``rule_book`` defaults to the rules file of ``settings``; ``partner_apis``
    turns on the backfill job. Raise ConfigError for a bad rules file.
    """
    rule_book = rule_book or rules.load(settings.reward_rules)
    app = web.Application(middlewares=[correlation.middleware])
    app[SETTINGS] = settings
    app[POOL] = pool
    app[REDIS] = redis
    app[RULES] = rule_book

    # TODO: read the limits from settings (HAVEN_WEBHOOK_RATE_LIMIT_PARTNER /
    # _IP) — until then `haven listen` runs with the RateLimits defaults.
    limiter = Limiter(
        redis, prefix=settings.redis_prefix, limits=rate_limits or RateLimits()
    )
    receiver = webhooks.Receiver(pool, rule_book, _verifiers(settings), limiter)
    webhooks.register(app, receiver)

    backfill = Backfill(pool, rule_book, partner_apis) if partner_apis else None
    jobs.install(
        app,
        jobs.Jobs(pool, backfill=backfill, backfill_interval_s=backfill_interval_s),
    )
    operators.setup(app, settings, pool, redis)
    return app


def _verifiers(settings: Settings) -> dict[str, Verifier]:
    # TODO: per-partner tolerance settings — both partners share
    # webhook_tolerance_s although each Verifier takes its own.
    return {
        partner: Verifier(
            settings.webhook_secrets(partner),
            tolerance_s=settings.webhook_tolerance_s,
        )
        for partner in PARTNERS
    }


def partner_apis(settings: Settings) -> tuple[PartnerApi, ...]:
    """Return the partner APIs configured in ``settings``."""
    # TODO: declare HAVEN_PARTNER_API_{AURORA,TRIBE}, their tokens and
    # HAVEN_PARTNER_POLL_INTERVAL_S in haven.settings — until then no API is
    # configured and `haven listen` runs no backfill.
    found = []
    for partner in PARTNERS:
        url = getattr(settings, f"partner_api_{partner}", None)
        if isinstance(url, str) and url:
            found.append(PartnerApi(partner, url))
    return tuple(found)


async def serve(settings: Settings) -> None:
    """Serve webhooks until SIGTERM or SIGINT, then drain and close everything.

    This is the body of `haven listen`.

    Raise DatabaseUnavailableError if PostgreSQL cannot be reached at start,
    SchemaOutdatedError if `haven migrate` has not run.
    """
    pool = await db.create_pool(settings.database_url.reveal())
    try:
        await migrations.ensure_current(pool)
        redis = aioredis.from_url(
            settings.redis_url.reveal(),
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        try:
            app = create_app(settings, pool, redis, partner_apis=partner_apis(settings))
            await _run_until_stopped(app, settings.listen_host, settings.listen_port)
        finally:
            await redis.aclose()
    finally:
        await _close_pool(pool)


async def _run_until_stopped(app: web.Application, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.bind(host=host, port=port).info("listener started")
        await stop.wait()
        logger.info("listener stopping: no new connections, finishing requests")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        # Stops the listening socket, waits up to the shutdown timeout for
        # requests in flight, then runs the app's cleanup (the jobs).
        await runner.cleanup()
    logger.info("listener stopped")


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT_S)
    except TimeoutError:
        logger.warning("pool did not close in time: connections terminated")
        pool.terminate()
