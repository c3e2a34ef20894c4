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
from aiohttp.typedefs import Handler
from loguru import logger

from haven import db, migrations
from haven.listeners import access, correlation, jobs, operators, rules, webhooks
from haven.listeners.backfill import Backfill, PartnerApi
from haven.listeners.batcher import Batcher
from haven.listeners.ratelimits import Limiter, RateLimits
from haven.listeners.rules import RuleBook
from haven.listeners.signatures import Verifier
from haven.settings import PARTNERS, Settings

SETTINGS = web.AppKey("haven.settings", Settings)
POOL = web.AppKey("haven.pool", asyncpg.Pool)
REDIS = web.AppKey("haven.redis", aioredis.Redis)
RULES = web.AppKey("haven.rules", RuleBook)

# SIGTERM to exit: requests in flight get SHUTDOWN_TIMEOUT_S in all, of
# which the last CUT_OFF_S is for cancelling the ones that overran.
SHUTDOWN_TIMEOUT_S = 30.0
CUT_OFF_S = 2.0
POOL_CLOSE_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 2.0


class InFlight:
    """Count the requests being handled, so that a shutdown can wait for them.

    A request counts from the moment its handler chain starts, that is once
    its headers are parsed, and while its body may still be arriving.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Count ``request`` as in flight until its handler returns or raises."""
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if ``timeout_s`` ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


IN_FLIGHT = web.AppKey("haven.in_flight", InFlight)


def create_app(
    settings: Settings,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    *,
    rule_book: RuleBook | None = None,
    rate_limits: RateLimits | None = None,
    partner_apis: tuple[PartnerApi, ...] | None = None,
    backfill_interval_s: float | None = None,
) -> web.Application:
    """Build the listener app on an open pool and Redis client, which it does not close.

    Everything comes from ``settings``; a keyword given overrides it (tests):
    ``rule_book`` the rules file, ``rate_limits`` the webhook limits and
    the budget of refused admin keys, ``partner_apis`` the partner APIs
    pulled by the backfill job (none: no backfill) and
    ``backfill_interval_s`` how often they are pulled. Raise ConfigError for
    a bad rules file.
    """
    rule_book = rule_book or rules.load(settings.reward_rules)
    in_flight = InFlight()
    app = web.Application(middlewares=[in_flight.middleware, correlation.middleware])
    app[SETTINGS] = settings
    app[POOL] = pool
    app[REDIS] = redis
    app[RULES] = rule_book
    app[IN_FLIGHT] = in_flight

    limits = rate_limits or RateLimits.from_settings(settings)
    limiter = Limiter(redis, prefix=settings.redis_prefix, limits=limits)
    receiver = webhooks.Receiver(
        pool, rule_book, _verifiers(settings), limiter, Batcher(pool)
    )
    webhooks.register(app, receiver)

    jobs.install(
        app, _jobs(settings, pool, rule_book, partner_apis, backfill_interval_s)
    )
    operators.setup(app, settings, pool, redis, limiter)
    return app


def _verifiers(settings: Settings) -> dict[str, Verifier]:
    return {
        partner: Verifier(
            settings.webhook_secrets(partner),
            tolerance_s=settings.webhook_tolerance(partner),
        )
        for partner in PARTNERS
    }


def _jobs(
    settings: Settings,
    pool: asyncpg.Pool,
    rule_book: RuleBook,
    apis: tuple[PartnerApi, ...] | None,
    interval_s: float | None,
) -> jobs.Jobs:
    apis = configured_partner_apis(settings) if apis is None else apis
    backfill = (
        Backfill(pool, rule_book, apis, lookback_s=settings.partner_poll_lookback_s)
        if apis
        else None
    )
    return jobs.Jobs(
        pool,
        backfill=backfill,
        backfill_interval_s=(
            settings.partner_poll_interval_s if interval_s is None else interval_s
        ),
    )


def configured_partner_apis(settings: Settings) -> tuple[PartnerApi, ...]:
    """Return the partner events APIs configured in ``settings``, with their tokens."""
    configured = {
        "aurora": (settings.partner_api_aurora, settings.partner_api_token_aurora),
        "tribe": (settings.partner_api_tribe, settings.partner_api_token_tribe),
    }
    return tuple(
        PartnerApi(partner, url, token.reveal() if token is not None else None)
        for partner, (url, token) in configured.items()
        if url
    )


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
            app = create_app(settings, pool, redis)
            await _run_until_stopped(app, settings.listen_host, settings.listen_port)
        finally:
            await redis.aclose()
    finally:
        await _close_pool(pool)


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner of ``app`` as `haven listen` serves it, with its access log."""
    access.quiet_client_mistakes()
    return web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=CUT_OFF_S,
        access_log_class=access.AccessLog,
    )


async def _run_until_stopped(app: web.Application, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # The runner's own shutdown only cuts off what the drain below left:
    # it stops reading request bodies the moment it begins.
    runner = make_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.bind(host=host, port=port).info("listener started")
        await stop.wait()
        logger.info("listener stopping: no new connections, finishing requests")
        await site.stop()
        await _drain(app[IN_FLIGHT])
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        # Closes idle connections, cancels requests that overran, then runs
        # the app's cleanup (the jobs, the chain client).
        await runner.cleanup()
    logger.info("listener stopped")


async def _drain(in_flight: InFlight) -> None:
    """Let the requests in flight finish, bodies still arriving included."""
    if await in_flight.wait_idle(SHUTDOWN_TIMEOUT_S - CUT_OFF_S):
        return
    logger.bind(requests=in_flight.count).warning(
        "requests still in flight at the shutdown timeout; cutting them off — "
        "their partners retry under the same delivery id"
    )


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT_S)
    except TimeoutError:
        logger.warning("pool did not close in time: connections terminated")
        pool.terminate()
