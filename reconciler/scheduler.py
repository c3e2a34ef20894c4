"""The reconciler's clock: apscheduler jobs for runs, alerts and the daily report.

The scheduler only decides *when*; each job is a coroutine of its owner
(:class:`haven.reconciler.service.Reconciler`), which catches and logs its
own faults. Jobs never overlap themselves (one instance each) and missed
runs are coalesced into one, so a slow run delays the next instead of
stacking up behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

RECONCILE_JOB = "reconcile"
DISPATCH_JOB = "dispatch-alerts"
DAILY_REPORT_JOB = "daily-report"
# Alerts from other writers (submitter, tailer) wait at most this long.
DISPATCH_INTERVAL_S = 15

Job = Callable[[], Awaitable[None]]


def build(
    *,
    reconcile: Job,
    dispatch: Job,
    daily_report: Job,
    interval_s: int,
    daily_report_hour_utc: int,
) -> AsyncIOScheduler:
    """Return a scheduler (not started) bound to the running loop.

    The first reconciliation is due at once; the next every ``interval_s``.
    """
    scheduler = AsyncIOScheduler(
        event_loop=asyncio.get_running_loop(),
        timezone=UTC,
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": max(interval_s, DISPATCH_INTERVAL_S),
        },
    )
    scheduler.add_job(
        reconcile,
        IntervalTrigger(seconds=interval_s, timezone=UTC),
        id=RECONCILE_JOB,
        next_run_time=datetime.now(UTC),
    )
    scheduler.add_job(
        dispatch,
        IntervalTrigger(seconds=min(interval_s, DISPATCH_INTERVAL_S), timezone=UTC),
        id=DISPATCH_JOB,
    )
    scheduler.add_job(
        daily_report,
        CronTrigger(hour=daily_report_hour_utc, minute=0, timezone=UTC),
        id=DAILY_REPORT_JOB,
    )
    return scheduler
