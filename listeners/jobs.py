"""Scheduled jobs of the listener process: backfill pulls and retention pruning.

One AsyncIOScheduler per app, started and stopped with it. Each run is a
task this module owns: stopping cancels the runs in progress and waits for
them. A failed run logs what failed and waits for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from loguru import logger

from haven.errors import HavenError
from haven.listeners import attempts, deliveries
from haven.listeners.backfill import Backfill

PRUNE_INTERVAL_S = 3600


class Jobs:
    """The listener's scheduler and the tasks of its running jobs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        backfill: Backfill | None = None,
        backfill_interval_s: float = 300.0,
        retention_s: int = deliveries.RETENTION_S,
    ) -> None:
        self.pool = pool
        self.backfill = backfill
        self.backfill_interval_s = backfill_interval_s
        self.retention_s = retention_s
        # The scheduler only decides when; it hands each run to _spawn on the
        # loop's thread, so every run is a task of ours to cancel and await,
        # never a future the scheduler abandons at shutdown.
        self._scheduler = AsyncIOScheduler(
            timezone=UTC, executors={"default": DebugExecutor()}
        )
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        """Schedule the jobs, the first runs at once; call on a running loop."""
        now = datetime.now(UTC)
        if self.backfill is not None:
            self._add(self._pull, self.backfill_interval_s, now, "backfill")
        self._add(self._prune, PRUNE_INTERVAL_S, now, "prune")
        self._scheduler.start()

    async def stop(self) -> None:
        """Stop scheduling, cancel the runs in progress and wait for them."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _add(
        self,
        job: Callable[[], Awaitable[None]],
        interval_s: float,
        first_run: datetime,
        name: str,
    ) -> None:
        self._scheduler.add_job(
            self._spawn,
            "interval",
            args=(job, name),
            seconds=interval_s,
            next_run_time=first_run,
            id=name,
            coalesce=True,
        )

    def _spawn(self, job: Callable[[], Awaitable[None]], name: str) -> None:
        previous = self._running.get(name)
        if previous is not None and not previous.done():
            # One run at a time: a slow run makes the next one skip.
            return
        task = asyncio.get_running_loop().create_task(
            _guarded(job, name), name=f"listener.{name}"
        )
        self._running[name] = task

    async def _pull(self) -> None:
        assert self.backfill is not None
        try:
            await self.backfill.run_once()
        except HavenError as exc:
            logger.warning("backfill run failed: {}; retried at the next run", exc)

    async def _prune(self) -> None:
        try:
            pruned = await deliveries.prune(self.pool, older_than_s=self.retention_s)
            await attempts.prune(self.pool, older_than_s=self.retention_s)
        except HavenError as exc:
            logger.warning("pruning failed: {}; retried at the next run", exc)
            return
        if pruned:
            logger.bind(deliveries=pruned).debug("old deliveries pruned")


async def _guarded(job: Callable[[], Awaitable[None]], name: str) -> None:
    """Run one job; the top of the job loop, so it logs any traceback."""
    try:
        await job()
    except Exception:
        logger.exception("{} job failed unexpectedly: check the traceback", name)


def install(app: web.Application, jobs: Jobs) -> None:
    """Start ``jobs`` with ``app`` and stop them when it stops."""

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        jobs.start()
        yield
        await jobs.stop()

    app.cleanup_ctx.append(lifetime)
