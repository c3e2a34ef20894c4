"""The daemon process: submitter, tailer, reconciler and metrics under one owner.

``run`` opens PostgreSQL and the chain client, refuses to start on an
outdated schema or the wrong chain, then runs every component as a task it
owns. The daemon never talks to Redis: PostgreSQL holds every counter and
lease it relies on, so a Redis outage cannot stop or confuse it. Several
daemons may run against one database: each leased component is active in the
one daemon holding its PostgreSQL lease (:mod:`haven.daemon.leases`); the
others stand by and take over when that daemon dies. SIGTERM or SIGINT sets
one stop event; components finish or safely abandon their current step and
return; anything still running after the grace period is cancelled. Nothing
half-written survives either path: every write that must finish once a
transaction is broadcast is shielded by the component that makes it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from loguru import logger

from haven import db, migrations
from haven.chain import ChainClient
from haven.settings import Settings


class Component(Protocol):
    """A long-running part of the daemon."""

    name: str

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until ``stopping`` is set; never raise for a passing fault."""


ComponentFactory = Callable[
    [Settings, db.Pool, ChainClient], Awaitable[list[Component]]
]


# One lease per component that must not run twice at once, plus one per
# working signer (``signer:<address>``). Peers share them fairly: with two
# daemons and two signers, each signs for one.
LEASED_COMPONENTS = ("tailer", "reconciler")


async def default_components(
    settings: Settings, pool: db.Pool, chain: ChainClient
) -> list[Component]:
    from haven.daemon import signers, submitter
    from haven.daemon.http import Http
    from haven.daemon.leases import Leases
    from haven.daemon.tailer import Tailer
    from haven.reconciler.config import ReconcilerConfig
    from haven.reconciler.service import Reconciler

    async def wanted() -> tuple[str, ...]:
        async with db.translate_errors(), pool.acquire() as conn:
            working = await signers.listing(conn, signers.WORKING)
        leased = (submitter.lease_of(row.address) for row in working)
        return (*LEASED_COMPONENTS, *leased)

    leases = Leases.from_settings(settings, wanted)
    # Read now, so a bad setting stops start-up rather than the first lease win.
    reconciling = ReconcilerConfig.from_settings(settings)
    # Not leased: every daemon runs a submitter, which works only the signers
    # whose lease this daemon holds, and serves its own /metrics.
    minting = submitter.Submitter(settings, pool, chain, leases=leases)
    operators = Http(settings, pool, chain)
    operators.watch(minting.breaker)
    return [
        leases,
        minting,
        leases.exclusive("tailer", lambda: Tailer(settings, pool, chain)),
        leases.exclusive(
            "reconciler",
            lambda: Reconciler(settings, pool, chain, config=reconciling),
        ),
        operators,
    ]


async def run(
    settings: Settings,
    *,
    grace_s: float = 20.0,
    components: ComponentFactory = default_components,
    stopping: asyncio.Event | None = None,
) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``stopping``) and a clean shutdown."""
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    pool = await db.create_pool(settings.database_url.reveal(), max_size=8)
    chain = ChainClient(
        settings.rpc_url, chain_id=settings.chain_id, timeout_s=settings.rpc_timeout_s
    )
    try:
        await migrations.ensure_current(pool)
        await chain.verify_chain_id()
        parts = await components(settings, pool, chain)
        logger.info("daemon started", components=[p.name for p in parts])
        await _supervise(parts, stopping, grace_s)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await chain.close()
        await pool.close()
    logger.info("daemon stopped")


async def _supervise(
    parts: list[Component], stopping: asyncio.Event, grace_s: float
) -> None:
    tasks = [asyncio.create_task(part.run(stopping), name=part.name) for part in parts]
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait(
            [*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task is not stop_wait and task.exception() is not None:
                # A component that dies takes the process down: the service
                # manager restarts it, and start-up re-reconciles with the chain.
                stopping.set()
                raise task.exception()  # type: ignore[misc]
        stopping.set()
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            logger.warning(
                "component did not stop in time, cancelling", component=task.get_name()
            )
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        stop_wait.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, stop_wait, return_exceptions=True)
