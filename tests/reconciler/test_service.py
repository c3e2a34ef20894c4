"""The reconciler as a daemon component: scheduled runs, faults, the daily report."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

from harness.anvil import free_port
from haven.chain import ChainClient
from haven.reconciler import alerts, channels, runs
from haven.reconciler.config import ReconcilerConfig
from haven.reconciler.service import Reconciler
from haven.types import ONE_HNV

WAIT_S = 20


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait for ``condition`` to hold; the scheduler runs in this loop."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.05)


async def test_the_reconciler_runs_at_start_and_stops_cleanly(
    book, chain, haven_settings, config, mailbox
):
    _, smtp = mailbox
    await book.settle(10 * ONE_HNV)
    await book.index()
    component = Reconciler(
        haven_settings,
        book.pool,
        chain,
        config=replace(config, reconcile_interval_s=3600),
        alert_channels=[channels.EmailChannel(smtp)],
    )
    stopping = asyncio.Event()

    task = asyncio.create_task(component.run(stopping))
    await until(lambda: _has_run(book.pool))
    stopping.set()
    await asyncio.wait_for(task, WAIT_S)

    latest = await runs.latest(book.pool)
    assert component.name == "reconciler"
    assert latest is not None and latest.verdict == runs.RECONCILED
    assert task.result() is None


async def _has_run(pool) -> bool:
    return await runs.latest(pool) is not None


async def test_an_unreachable_chain_is_reported_not_raised(
    book, haven_settings, config, mailbox
):
    box, smtp = mailbox
    async with ChainClient(
        [f"http://127.0.0.1:{free_port()}"], chain_id=31337, timeout_s=2
    ) as dead:
        component = Reconciler(
            haven_settings,
            book.pool,
            dead,
            config=replace(config, reconcile_interval_s=3600),
            alert_channels=[channels.EmailChannel(smtp)],
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(component.run(stopping))

        async def mailed() -> bool:
            return any(runs.INCOMPLETE_RULE in s for s in box.subjects)

        await until(mailed)
        stopping.set()
        await asyncio.wait_for(task, WAIT_S)

    async with book.pool.acquire() as connection:
        [alert] = await alerts.find(connection, rule=runs.INCOMPLETE_RULE)
    assert alert.notified_at is not None
    assert (await runs.latest(book.pool)).verdict == runs.INCOMPLETE


async def test_the_daily_report_is_mailed_with_its_html_page(
    book, chain, haven_settings, config, mailbox
):
    box, smtp = mailbox
    await book.settle(10 * ONE_HNV)
    await book.index()
    component = Reconciler(
        haven_settings,
        book.pool,
        chain,
        config=config,
        alert_channels=[channels.EmailChannel(smtp)],
    )

    await component.daily_report()

    [message] = box.messages
    assert message["Subject"] == f"[haven] daily report: {runs.RECONCILED}"
    [page] = list(message.iter_attachments())
    assert page.get_content_type() == "text/html"
    assert "<svg" in page.get_content()
    assert message.get_body(("plain",)).get_content().startswith("verdict: ")


def test_the_config_takes_chain_settings_and_overrides(haven_settings):
    config = ReconcilerConfig.from_settings(haven_settings, stale_intent_grace_s=5)

    assert config.token_address == haven_settings.token_address
    assert config.confirmations == haven_settings.confirmations
    assert config.start_block == haven_settings.start_block
    assert config.stale_intent_grace_s == 5
    assert config.smtp is None and config.webhook is None
