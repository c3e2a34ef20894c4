"""The daemon's window for operators: ``/metrics``, ``/healthz`` and ``/readyz``.

A daemon component named ``http``. It serves on ``HAVEN_DAEMON_HOST`` at
``HAVEN_DAEMON_PORT`` (0 turns the server off) and reports the daemon's
circuit breakers to PostgreSQL, where the admin API reads and resets them
(:mod:`haven.breaker_states`). ``/metrics`` carries the event counters of
this process, the state read from the books at scrape time and the state
of its breakers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiohttp import web
from loguru import logger
from prometheus_client.core import Metric

from haven import breaker_states, db, metrics, readings
from haven.chain import ChainClient
from haven.daemon.breaker import CircuitBreaker
from haven.errors import ConfigError
from haven.listeners import health
from haven.settings import Settings

SHUTDOWN_TIMEOUT_S = 5.0


class Http:
    """Serve metrics and health, and report breakers, until the daemon stops."""

    name = "http"

    def __init__(
        self,
        settings: Settings,
        pool: db.Pool,
        chain: ChainClient,
        *,
        breakers: Iterable[CircuitBreaker] = (),
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.chain = chain
        self.sources = readings.Sources(settings, pool, chain)
        self.reporter = breaker_states.Reporter(pool, breakers)

    def watch(self, breaker: CircuitBreaker) -> None:
        """Show ``breaker`` to operators (metrics, admin API, reset) from now on.

        Call it where the breaker is made, e.g. in the factory of a leased
        component; a breaker of the same name made later replaces it.
        """
        self.reporter.watch(breaker)

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve and report until ``stopping`` is set, then close the port."""
        reporting = asyncio.create_task(
            self.reporter.run(stopping), name="breaker-reports"
        )
        try:
            if self.settings.daemon_port == 0:
                await stopping.wait()
            else:
                await self._serve(stopping)
            await reporting
        finally:
            reporting.cancel()
            await asyncio.gather(reporting, return_exceptions=True)

    async def _serve(self, stopping: asyncio.Event) -> None:
        host, port = self.settings.daemon_host, self.settings.daemon_port
        runner = web.AppRunner(
            self.app(), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    [
                        f"HAVEN_DAEMON_PORT: cannot listen on {host}:{port} "
                        f"({exc.strerror}); expected a free port, or 0 to turn "
                        "the daemon's metrics server off"
                    ]
                ) from exc
            logger.bind(host=host, port=port).info("daemon metrics serving")
            await stopping.wait()
        finally:
            await runner.cleanup()

    def app(self) -> web.Application:
        """Return the aiohttp app of this component (tests host it directly)."""
        app = web.Application()
        readiness = health.Readiness.of(self.settings, self.pool, self.chain, None)
        health.setup(app, readiness)
        app.router.add_get("/metrics", self.serve_metrics)
        return app

    async def serve_metrics(self, request: web.Request) -> web.Response:
        """Answer a Prometheus scrape."""
        state = await readings.read_all(self.sources)
        state.append(self._breaker_family())
        response = web.Response(body=metrics.exposition(state))
        response.headers["Content-Type"] = metrics.CONTENT_TYPE
        return response

    def _breaker_family(self) -> Metric:
        values = [
            ((snap.name,), float(metrics.BREAKER_STATES[snap.state]))
            for snap in (b.snapshot() for b in self.reporter.breakers.values())
        ]
        return metrics.BREAKER_STATE.family(values)
