"""Readings: the state gauges of :mod:`haven.metrics`, read at scrape time.

Each reading asks PostgreSQL or the chain once, under its own deadline, and
returns finished metric families. A source that does not answer costs its
own gauges only: the scrape still succeeds, ``haven_scrape_source_up`` says
which source failed and ``haven_scrape_errors_total`` counts it, so an
outage shows on the dashboard instead of blanking it.

This module only reads, through the owners of the tables.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
from loguru import logger
from prometheus_client.core import Metric

from haven import db, intents, metrics
from haven.chain import ChainClient
from haven.daemon import attempts, signers
from haven.errors import ChainError, DatabaseUnavailableError
from haven.reconciler import breaks, snapshot
from haven.settings import Settings

T = TypeVar("T")

READING_TIMEOUT_S = 5.0
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class Sources:
    """What the readings read: the settings, the pool and a chain client."""

    settings: Settings
    pool: asyncpg.Pool
    chain: ChainClient


@dataclass(frozen=True)
class TailPosition:
    """The chain head and the tailer's lowest checkpoint, in block numbers."""

    head_block: int
    checkpoint_block: int | None

    @property
    def lag_blocks(self) -> int:
        """Blocks the tailer is behind; counted from zero before its first batch."""
        return max(self.head_block - (self.checkpoint_block or 0), 0)


async def tail_position(pool: asyncpg.Pool, chain: ChainClient) -> TailPosition:
    """Read the head and the lowest tail checkpoint.

    Raise ChainError or DatabaseUnavailableError when either side is down.
    """
    head_block = await chain.block_number()
    # The lowest checkpoint when several tailers run: the conservative lag.
    checkpoint = await snapshot.checkpoint_block(pool, None)
    return TailPosition(head_block, checkpoint)


async def read_all(sources: Sources) -> list[Metric]:
    """Return every state family; never raises for a source that is down.

    Each source is up or down on its own: the chain's gauges that need the
    database too (the tailer's lag, the signers' balances) are left out
    when only the database is down, and the chain still counts as up.
    """
    database, head = await asyncio.gather(
        _guarded("postgres", _read_database(sources)),
        _guarded("chain", sources.chain.block_number()),
    )
    families = list(database.families) if database is not None else []
    chain_up = head is not None
    if head is not None:
        families.append(metrics.CHAIN_HEAD.family([((), float(head))]))
    if head is not None and database is not None:
        lag = TailPosition(head, database.checkpoint_block).lag_blocks
        families.append(metrics.TAIL_LAG.family([((), float(lag))]))
        balances = await _guarded(
            "chain", _signer_balances(sources.chain, database.signers)
        )
        chain_up = balances is not None
        if balances is not None:
            families.append(
                metrics.SIGNER_BALANCE.family(
                    ((address,), float(wei)) for address, wei in balances.items()
                )
            )
    up = [(("postgres",), float(database is not None)), (("chain",), float(chain_up))]
    return [*families, metrics.SOURCE_UP.family(up)]


async def _guarded(source: str, reading: Awaitable[T]) -> T | None:
    try:
        return await asyncio.wait_for(reading, READING_TIMEOUT_S)
    except (TimeoutError, ChainError, DatabaseUnavailableError, OSError) as exc:
        metrics.SCRAPE_ERRORS.labels(source).inc()
        logger.bind(source=source, error=type(exc).__name__).warning(
            "metrics reading failed; its gauges are left out of this scrape"
        )
        return None


@dataclass(frozen=True)
class _DatabaseReading:
    families: list[Metric]
    checkpoint_block: int | None
    signers: list[str]


async def _read_database(sources: Sources) -> _DatabaseReading:
    async with db.translate_errors(), sources.pool.acquire() as connection:
        by_status = await intents.count_by_status(connection)
        live = await attempts.live(connection)
        working = await signers.listing(connection, signers.WORKING)
        open_breaks = await breaks.open_breaks(connection)
    # The lowest checkpoint when several tailers run: the conservative lag.
    checkpoint = await snapshot.checkpoint_block(sources.pool, None)
    addresses = [row.address for row in working]
    in_flight, queued = signer_loads(live, addresses)
    ready = by_status.get(intents.READY, (0, 0))[0]
    families = [
        _intents_family(by_status),
        metrics.SIGNER_IN_FLIGHT.family(
            ((signer,), float(count)) for signer, count in in_flight.items()
        ),
        metrics.SIGNER_QUEUED.family(
            [
                *(((signer,), float(count)) for signer, count in queued.items()),
                ((UNASSIGNED,), float(ready)),
            ]
        ),
        *_breaks_families(open_breaks, datetime.now(UTC)),
    ]
    return _DatabaseReading(families, checkpoint, addresses)


def _intents_family(by_status: Mapping[str, tuple[int, int]]) -> Metric:
    values = [
        ((status,), float(by_status.get(status, (0, 0))[0]))
        for status in intents.STATUSES
    ]
    return metrics.INTENTS.family(values)


def signer_loads(
    live: list[attempts.Attempt], working: list[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Count each signer's unsettled nonces as (in flight, queued).

    A nonce is in flight once a node accepted one of its attempts, and
    queued while every attempt at it is signed and committed but no node
    has taken one yet (a send refused, or not yet made). Replacements share
    a nonce, so nonces are counted, not attempts. Every working signer is
    listed, at zero when idle, so a dashboard shows it rather than a gap.
    """
    accepted: dict[tuple[str, int], bool] = {}
    for attempt in live:
        key = (attempt.signer, attempt.nonce)
        accepted[key] = accepted.get(key, False) or attempt.status == attempts.BROADCAST
    in_flight = dict.fromkeys(working, 0)
    queued = dict.fromkeys(working, 0)
    for (signer, _), is_accepted in accepted.items():
        counts = in_flight if is_accepted else queued
        in_flight.setdefault(signer, 0)
        queued.setdefault(signer, 0)
        counts[signer] += 1
    return dict(sorted(in_flight.items())), dict(sorted(queued.items()))


def _breaks_families(
    open_breaks: list[breaks.StoredBreak], now: datetime
) -> list[Metric]:
    counts: Counter[tuple[str, str]] = Counter()
    oldest_s: dict[str, float] = {cls: 0.0 for cls in breaks.CLASSES}
    for brk in open_breaks:
        counts[(brk.cls, brk.priority)] += 1
        age_s = max((now - brk.first_seen_at).total_seconds(), 0.0)
        oldest_s[brk.cls] = max(oldest_s.get(brk.cls, 0.0), age_s)
    open_values = [
        ((cls, breaks.PRIORITY[cls]), float(counts[(cls, breaks.PRIORITY[cls])]))
        for cls in breaks.CLASSES
    ]
    return [
        metrics.BREAKS_OPEN.family(open_values),
        metrics.OLDEST_BREAK_AGE.family(
            ((cls,), age_s) for cls, age_s in sorted(oldest_s.items())
        ),
    ]


async def _signer_balances(chain: ChainClient, addresses: list[str]) -> dict[str, int]:
    found = await asyncio.gather(*(chain.get_balance(a) for a in addresses))
    return dict(zip(addresses, found, strict=True))
