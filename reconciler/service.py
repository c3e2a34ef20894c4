"""The reconciler as a daemon component: scheduled runs, alert delivery, daily report.

:class:`Reconciler` owns its scheduler, its alert channels and every job
task the scheduler starts: on stop it pauses the scheduler, lets the job in
progress finish (a run commits atomically; a delivery is at-least-once),
shuts the scheduler down and closes the channels. A passing fault (database
or chain down, a channel refusing) is logged and retried at the next tick;
``run`` itself never raises for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from loguru import logger

from haven import db
from haven.chain import ChainClient
from haven.reconciler import alerts, channels, reports, runs, scheduler
from haven.reconciler.config import ReconcilerConfig
from haven.settings import Settings

# How long a stop waits for the job in progress before cancelling it.
STOP_GRACE_S = 10.0


def default_channels(config: ReconcilerConfig) -> list[channels.Channel]:
    """Return the channels the config enables (email, webhook, both or none)."""
    found: list[channels.Channel] = []
    if config.smtp is not None:
        found.append(channels.EmailChannel(config.smtp))
    if config.webhook is not None:
        found.append(channels.WebhookChannel(config.webhook))
    return found


class Reconciler:
    """Reconcile every interval, deliver alerts, mail a daily report."""

    name = "reconciler"

    def __init__(
        self,
        settings: Settings,
        pool: db.Pool,
        chain: ChainClient,
        *,
        config: ReconcilerConfig | None = None,
        alert_channels: Sequence[channels.Channel] | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._chain = chain
        self._config = config or ReconcilerConfig.from_settings(settings)
        found = (
            list(alert_channels)
            if alert_channels is not None
            else default_channels(self._config)
        )
        self._channels = tuple(found)
        self._dispatcher = alerts.Dispatcher(
            self._channels,
            attempts=self._config.delivery_attempts,
            backoff_s=self._config.delivery_backoff_s,
        )
        self._jobs: set[asyncio.Task[object]] = set()
        if not self._channels:
            logger.warning(
                "no alert channel configured; alerts are stored but not sent "
                "(set the SMTP or alert webhook settings)"
            )

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until ``stopping`` is set, then stop; a passing fault never raises."""
        jobs = scheduler.build(
            reconcile=self._guarded("reconcile", self.reconcile_once),
            dispatch=self._guarded("dispatch", self.dispatch_once),
            daily_report=self._guarded("daily report", self.daily_report),
            interval_s=self._config.reconcile_interval_s,
            daily_report_hour_utc=self._config.daily_report_hour_utc,
        )
        jobs.start()
        logger.info("reconciler started", interval_s=self._config.reconcile_interval_s)
        try:
            await stopping.wait()
        finally:
            jobs.pause()
            await self._finish_jobs()
            jobs.shutdown(wait=False)
            for channel in self._channels:
                await channel.close()
            logger.info("reconciler stopped")

    async def reconcile_once(self) -> None:
        """Reconcile now, then send the alerts it raised."""
        await runs.execute(self._pool, self._chain, self._config)
        await self.dispatch_once()

    async def dispatch_once(self) -> None:
        """Send every alert that is due."""
        await self._dispatcher.dispatch(self._pool)

    async def daily_report(self) -> None:
        """Build yesterday's report (UTC) and mail it to the alert recipients."""
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        report = await reports.build(
            self._pool,
            self._chain,
            self._settings,
            from_=today - timedelta(days=1),
            to=today,
            config=self._config,
        )
        logger.info("daily report built", verdict=report.verdict, run_id=report.run_id)
        for channel in self._channels:
            if isinstance(channel, channels.EmailChannel):
                await channel.send_report(
                    subject=f"[haven] daily report: {report.verdict}",
                    text=reports.render(report, "table"),
                    html=reports.render(report, "html"),
                )

    def _guarded(
        self, what: str, work: Callable[[], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._jobs.add(task)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The top of a periodic task: log with the traceback, retry
                # at the next tick.
                logger.exception(f"{what} failed; retrying at the next tick")
            finally:
                self._jobs.discard(task)

        return job

    async def _finish_jobs(self) -> None:
        if not self._jobs:
            return
        _, pending = await asyncio.wait(set(self._jobs), timeout=STOP_GRACE_S)
        for task in pending:
            logger.warning("reconciler job did not finish in time, cancelling")
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
